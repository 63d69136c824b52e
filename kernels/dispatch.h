#pragma once
// How a kernel family dispatches: kernels/<family>.cpp checks arguments, then calls cpu::<fn> or cuda::<fn>.
// cpu:: functions live in kernels/cpu/<family>.cpp (templated references), cuda:: in kernels/cuda/<family>.cu.
#include "core/error.h"
#include "core/tensor.h"

#ifdef NATSL_WITH_CUDA
#define NATSL_CUDA_ONLY(...) __VA_ARGS__
#else
#define NATSL_CUDA_ONLY(...) NATSL_FAIL("natsl was built without CUDA; this op needs a GPU build")
#endif

namespace natsl::kernels {

// Checks that all defined tensors are on one device and contiguous; returns that device.
inline Device common_device(std::initializer_list<const Tensor*> ts, const char* op) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t || !t->defined()) continue;
    if (!first) first = t;
    NATSL_CHECK(t->device() == first->device(), op, ": tensors on ", first->device().str(), " and ",
                t->device().str());
  }
  NATSL_CHECK(first != nullptr, op, ": no tensor given");
  return first->device();
}

inline void check_contiguous(std::initializer_list<const Tensor*> ts, const char* op) {
  for (const Tensor* t : ts)
    if (t && t->defined()) NATSL_CHECK(t->is_contiguous(), op, ": expects contiguous tensors, got ", t->str());
}

inline void check_same_shape(const Tensor& a, const Tensor& b, const char* op) {
  NATSL_CHECK(a.shape() == b.shape(), op, ": shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()));
}

}  // namespace natsl::kernels
