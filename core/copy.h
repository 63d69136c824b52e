#pragma once
// Elementwise copy with conversion between tensors of the same shape on the same device, any strides.
#include "core/tensor.h"

namespace natsl {

constexpr int kMaxDims = 8;
// Shape and strides passed by value to kernels.
struct StridedLayout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t src_strides[kMaxDims] = {};
  int64_t dst_strides[kMaxDims] = {};
};

void strided_copy(const Tensor& src, const Tensor& dst);
void fill(const Tensor& dst, double v);

#ifdef NATSL_WITH_CUDA
namespace cuda {
void strided_copy(const void* src, DType sdt, int64_t soff, void* dst, DType ddt, int64_t doff,
                  const StridedLayout& L, int64_t numel, int device);
void fill(void* dst, DType dt, int64_t off, const StridedLayout& L, int64_t numel, double v, int device);
}  // namespace cuda
#endif

}  // namespace natsl
