#pragma once
// The two phases of the CUDA embedding backward, exposed so that the benchmark can time them apart:
//   1. segments: the token positions grouped by id, in ascending position order within an id (a stable
//      sort by id); small, latency-bound work on the ids only;
//   2. accumulate: dweight[v] += the dout rows of id v, added in that order (the bandwidth-bound part).
// kernels::embedding_bwd (kernels/nn.h) runs both with the variant chosen by
// NATSL_KERNEL_VARIANT_EMBEDDING_BWD (kernels/cuda/variant.h); every variant adds the same rows in the same
// order, so all give the same bits.
#include <cstdint>

#include "core/tensor.h"

namespace natsl::kernels::cuda {

struct EmbeddingBwdSegments {
  int variant = 0;
  int64_t n = 0, V = 0;
  // v0: sorted ids (i32) | v1: sorted 64-bit keys id << 32 | position |
  // v2 to v8: sorted keys id << pos_bits | position, 32-bit when they fit (key_bits 32), else 64-bit
  // (v3, v4 build them without CUB's device radix sort, v5 with a smaller CUB onesweep tile, v8 by one
  // cooperative kernel; the same keys).
  // v6, v7 with 32-bit keys: grouped by id but in arbitrary order within an id (a counting scatter); the
  // accumulation sorts segments of at most 32 entries itself and reads longer ones from sorted_large.
  Tensor keys;
  // v0: the positions in sorted order (i32) | v1 to v8: segment starts (i32, V + 1): id v owns sorted
  // entries [starts[v], starts[v + 1]).
  Tensor aux;
  // v6, v7 with 32-bit keys only (else undefined): at the same indices as keys, the segments of more than 32
  // entries sorted (ascending position); its other entries are never written.
  Tensor sorted_large;
  int pos_bits = 32, key_bits = 64;
};

// ids: i32 or i64 on the GPU, every id in [0, V) (else a device trap naming the id). Queued on the compute
// stream, no host synchronisation.
EmbeddingBwdSegments embedding_bwd_segments(const Tensor& ids, int64_t V, int variant);
// dout [n, D] and dweight [V, D] (same float dtype, contiguous, on the GPU of the segments).
void embedding_bwd_accumulate(const EmbeddingBwdSegments& seg, const Tensor& dout, const Tensor& dweight);

}  // namespace natsl::kernels::cuda
