#pragma once
// Run-time choice between kernel variants of one op, for A/B timing on the GPU machine without a rebuild:
// the environment variable NATSL_KERNEL_VARIANT_<OP> (an integer; unset, empty or unparsable = 0, the
// default kernel). The variable is read at each launch (a getenv, far below a launch's cost) and not cached,
// so a test or benchmark can switch variants inside one process with setenv.
#include <cstdlib>

namespace natsl::kernels::cuda {

inline int kernel_variant(const char* env_name) {
  const char* v = std::getenv(env_name);
  return (v && *v) ? std::atoi(v) : 0;
}

inline constexpr const char* kVariantRmsnormBwd = "NATSL_KERNEL_VARIANT_RMSNORM_BWD";
inline constexpr const char* kVariantEmbeddingBwd = "NATSL_KERNEL_VARIANT_EMBEDDING_BWD";
inline constexpr const char* kVariantCrossEntropy = "NATSL_KERNEL_VARIANT_CROSS_ENTROPY";

}  // namespace natsl::kernels::cuda
