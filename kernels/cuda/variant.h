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
// Embedding bwd, H200 run 2026-11-28 at commit 907717a (131072 tokens x 1024 bf16, V 32000): v0 2.06, v1 1.77,
// v2 1.69 (0.162 ms), so v2 is the default; its phases: segments 0.051 ms (the CUB sort and its launches,
// about the same for every variant), accumulate 0.111 ms = 1.17 of the copy.
// Embedding bwd, H200 run 2026-11-28 at commit 07418125f079 (flush timing): v2 0.151 ms (1.60), v3 0.169 (1.80:
// its own segment builder, 0.058 ms against CUB's 0.040), v4 0.293 (a spilling accumulation); v2 stays.
// At 3d70c469: v2 0.148 ms (1.58), v3 1.77, v4 1.83 (128 registers). v5 (v2 with a smaller CUB onesweep tile)
// is not measured yet. v6 (a counting scatter, no device-wide sort; kernels/cuda/embedding.cu) and v7 (v6
// without programmatic dependent launch) were not measured then.
// H200 at 4b0366aa: v2 0.148 ms (1.57), v5 0.145, v6 0.144 (segments 0.031, accumulate 0.118:
// the in-warp sort costs ~7 us), v7 0.146. v8 (v2's segments from one cooperative kernel, then v2's
// accumulation) is not measured yet.
// H200 at 8a6415bc: v8 0.137 ms (1.46; segments 0.028, accumulation 0.111 as v2's); with the accumulation under
// programmatic dependent launch (61d2dd8f) 0.135 (1.43-1.44); with counts[] kept at zero between calls (no
// zeroing phase, 11f5babc) 0.1333-0.1335 ms in three runs, 1.42 = 70.5% of the copy bandwidth, against v2's
// 0.148 (1.57) in the same runs: v8 is the default. It falls back to v2's segments with 64-bit keys or without
// cooperative launch.
inline constexpr int kDefaultRmsnormBwd = 1;
inline constexpr int kDefaultEmbeddingBwd = 8;
inline constexpr int kDefaultCrossEntropy = 1;

}  // namespace natsl::kernels::cuda
