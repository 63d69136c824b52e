#pragma once
// Reductions.
#include <vector>

#include "core/tensor.h"

namespace natsl::kernels {

// out = sum of x over `dims` (x any strides). out is contiguous with x's shape where the summed dims have
// size 1 (keepdim layout); the caller views it as it likes. Accumulates in f32 (f64 for f64 tensors).
void sum_dims(const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out);
// Reduces a gradient of a broadcast result back to an input's shape: out has a shape that broadcasts to
// x's shape (fewer leading dims allowed); out = sum of x over the broadcast dims.
void sum_to_shape(const Tensor& x, const Tensor& out);
// out[0] (f32, or f64 for f64 input) = sum of squares of all elements of contiguous x.
void sum_squares(const Tensor& x, const Tensor& out);

namespace cpu {
void sum_dims(const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out);
void sum_squares(const Tensor& x, const Tensor& out);
}  // namespace cpu
namespace cuda {
void sum_dims(const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out);
void sum_squares(const Tensor& x, const Tensor& out);
}  // namespace cuda

}  // namespace natsl::kernels
