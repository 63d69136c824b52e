#pragma once
// Flat index -> element offsets of a strided layout (core/copy.h), for the CUDA strided kernels.
#include <cstdint>

#include "core/copy.h"

namespace natsl::cuda {

// The offsets of the row-major flat index i of shape L.shape in the two operands:
//   i = sum_d idx_d * prod_{e > d} shape_e,  so = sum_d idx_d * L.src_strides[d],  d_o = sum_d idx_d * L.dst_strides[d].
__device__ __forceinline__ void strided_offsets(const StridedLayout& L, int64_t i, int64_t& so, int64_t& d_o) {
  int64_t rem = i;
  so = 0;
  d_o = 0;
  for (int d = L.ndim - 1; d >= 0; --d) {
    int64_t idx = rem % L.shape[d];
    rem /= L.shape[d];
    so += idx * L.src_strides[d];
    d_o += idx * L.dst_strides[d];
  }
}

}  // namespace natsl::cuda
