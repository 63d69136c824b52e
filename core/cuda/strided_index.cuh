#pragma once
// Flat index -> element offsets of a strided layout (core/copy.h), for the CUDA strided kernels.
#include <cstdint>

#include "core/copy.h"

namespace natsl::cuda {

// The offsets of the row-major flat index i of shape L.shape in the two operands:
//   i = sum_d idx_d * prod_{e > d} shape_e,  so = sum_d idx_d * L.src_strides[d],  d_o = sum_d idx_d * L.dst_strides[d].
// I is the type of the index arithmetic: uint32_t when the layout has fewer than 2^31 elements (then every index
// and every dim fits; a 64-bit division is several times the instructions of a 32-bit one, and a strided kernel
// does one per dim per element), else int64_t.
template <class I>
__device__ __forceinline__ void strided_offsets(const StridedLayout& L, I i, int64_t& so, int64_t& d_o) {
  I rem = i;
  so = 0;
  d_o = 0;
  for (int d = L.ndim - 1; d >= 0; --d) {
    const I size = I(L.shape[d]);
    const I idx = rem % size;
    rem /= size;
    so += int64_t(idx) * L.src_strides[d];
    d_o += int64_t(idx) * L.dst_strides[d];
  }
}

// strided_offsets for element i of a layout of n elements, in 32-bit arithmetic when n allows.
__device__ __forceinline__ void strided_offsets_of(const StridedLayout& L, int64_t i, int64_t n, int64_t& so,
                                                   int64_t& d_o) {
  if (n < (int64_t(1) << 31)) strided_offsets<uint32_t>(L, uint32_t(i), so, d_o);
  else strided_offsets<int64_t>(L, i, so, d_o);
}

}  // namespace natsl::cuda
