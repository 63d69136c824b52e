#pragma once
// Streaming log-sum-exp (Milakov & Gimelshein, "Online normalizer calculation for softmax"): one pass
// keeps a running max m and s = sum exp(x - m), rescaling s whenever m grows.
#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {

struct MaxSum {
  float m = -INFINITY, s = 0.f;
  // Adds VEC values with one rescale.
  template <class T, int VEC>
  __device__ __forceinline__ void add(const float (&v)[VEC]) {
    float vm = v[0];
#pragma unroll
    for (int k = 1; k < VEC; ++k) vm = fmaxf(vm, v[k]);
    const float nm = fmaxf(m, vm);
    if (nm == -INFINITY) return;  // everything so far is -inf: nothing to add
    float acc = m == -INFINITY ? 0.f : s * exp_for<T>(m - nm);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc += exp_for<T>(v[k] - nm);
    m = nm;
    s = acc;
  }
};

// Combines the per-thread (m, s) of a row: returns the row's log-sum-exp to every thread of the row.
template <class T>
__device__ __forceinline__ float row_logsumexp(MaxSum ms, float* scratch) {
  const float M = row_max(ms.m, scratch);
  const float part = ms.m == -INFINITY ? 0.f : ms.s * exp_for<T>(ms.m - M);
  const float S = row_sum(part, scratch);
  return M + logf(S);
}

}  // namespace natsl::kernels::cuda
