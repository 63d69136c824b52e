#pragma once
// Offsets of an element in strided (broadcast or permuted) tensors, for the CPU references.
#include <cstdint>
#include <utility>

#include "core/tensor.h"

namespace natsl::kernels::cpu {

// The offsets under strides `sa` and `sb` of the element with row-major index `i` over the first `nd` dims
// of `shape` (nd <= 0: both 0).
inline std::pair<int64_t, int64_t> strided_offsets(int64_t i, int nd, const Shape& shape, const Shape& sa,
                                                   const Shape& sb) {
  int64_t oa = 0, ob = 0;
  for (int k = nd - 1; k >= 0; --k) {
    const int64_t idx = i % shape[k];
    i /= shape[k];
    oa += idx * sa[k];
    ob += idx * sb[k];
  }
  return {oa, ob};
}

}  // namespace natsl::kernels::cpu
