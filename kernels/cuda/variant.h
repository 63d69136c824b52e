#pragma once
// Run-time choice between kernel variants of one op, for A/B timing on the GPU machine without a rebuild:
// the environment variable NATSL_KERNEL_VARIANT_<OP> (an integer; unset or empty = the op's default, the
// variant measured fastest on the H200: BENCHMARKS.md). The variable is read at each launch (a getenv, far below a launch's cost) and not cached,
// so a test or benchmark can switch variants inside one process with setenv.
#include <cstdlib>

namespace natsl::kernels::cuda {

inline int kernel_variant(const char* env_name, int default_variant) {
  const char* v = std::getenv(env_name);
  return (v && *v) ? std::atoi(v) : default_variant;
}

inline constexpr const char* kVariantRmsnormBwd = "NATSL_KERNEL_VARIANT_RMSNORM_BWD";
inline constexpr const char* kVariantEmbeddingBwd = "NATSL_KERNEL_VARIANT_EMBEDDING_BWD";
inline constexpr const char* kVariantCrossEntropy = "NATSL_KERNEL_VARIANT_CROSS_ENTROPY";

// Defaults, from one H200 run (2026-11-28, commit 1bb7aeb8fefc; ratio to a copy of the same bytes):
// rmsnorm bwd v0 1.97, v1 1.12, v2 1.12; embedding bwd v0 2.11, v1 1.84; fused cross-entropy v0 1.93,
// v1 1.34 (of one read + write of the logits). Every variant stays tested (tests/cuda).
// Embedding bwd v2 (32-bit keys, starts without a binary search, one round of row loads per segment:
// kernels/cuda/embedding.cu) is selectable; it becomes the default once an H200 run shows it fastest.
inline constexpr int kDefaultRmsnormBwd = 1;
inline constexpr int kDefaultEmbeddingBwd = 1;
inline constexpr int kDefaultCrossEntropy = 1;

}  // namespace natsl::kernels::cuda
