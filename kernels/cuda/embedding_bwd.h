#pragma once
// The two phases of the CUDA embedding backward, exposed so that the benchmark can time them apart:
//   1. segments: the token positions grouped by id, in ascending position order within an id (a stable
//      sort by id); small, latency-bound work on the ids only;
//   2. accumulate: dweight[v] += the dout rows of id v, added in that order (the bandwidth-bound part).
// kernels::embedding_bwd (kernels/nn.h) runs both with the default plan. Both segment kernels give the same
// keys and starts, so the same bits.
#include <cstdint>

#include "core/tensor.h"

namespace natsl::kernels::cuda {

enum class EmbeddingBwdSegmentsKernel {
  cooperative,  // one cooperative kernel (count, scan, scatter, sort each segment); the default
  radix_sort,   // a CUB radix sort of the keys: the fallback with 64-bit keys or without cooperative launch
};
struct EmbeddingBwdPlan {
  EmbeddingBwdSegmentsKernel segments = EmbeddingBwdSegmentsKernel::cooperative;
};

struct EmbeddingBwdSegments {
  int64_t n = 0, V = 0;
  // Keys id << pos_bits | position sorted by id (positions ascending within an id): 32-bit when they fit
  // (key_bits 32), else 64-bit (pos_bits 32).
  Tensor keys;
  // Segment starts (i32, V + 1): id v owns sorted entries [starts[v], starts[v + 1]).
  Tensor aux;
  int pos_bits = 32, key_bits = 64;
  bool pdl_accumulate = false;  // the accumulation overlaps the segments kernel's end (programmatic launch)
};

// ids: i32 or i64 on the GPU, every id in [0, V) (else a device trap naming the id). Queued on the compute
// stream, no host synchronisation.
EmbeddingBwdSegments embedding_bwd_segments(const Tensor& ids, int64_t V, const EmbeddingBwdPlan& plan = {});
// dout [n, D] and dweight [V, D] (same float dtype, contiguous, on the GPU of the segments).
void embedding_bwd_accumulate(const EmbeddingBwdSegments& seg, const Tensor& dout, const Tensor& dweight);

}  // namespace natsl::kernels::cuda
