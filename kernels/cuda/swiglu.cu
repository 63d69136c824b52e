// CUDA SwiGLU: y = silu(g) * u;  dg = dy * u * s * (1 + g (1 - s)),  du = dy * silu(g),  s = sigmoid(g).
#include "kernels/cuda/common.cuh"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

template <class T, int VEC>
__global__ void swiglu_fwd_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ y, int64_t n) {
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float g[W], u[W];
    load_vec<T, W>(gate + i, g);
    load_vec<T, W>(up + i, u);
#pragma unroll
    for (int k = 0; k < W; ++k) g[k] = g[k] / (1.f + expf(-g[k])) * u[k];
    store_vec<T, W>(y + i, g);
  });
}

template <class T, int VEC>
__global__ void swiglu_bwd_kernel(const T* __restrict__ gate, const T* __restrict__ up, const T* __restrict__ dy,
                                  T* __restrict__ dgate, T* __restrict__ dup, int64_t n) {
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float g[W], u[W], d[W], dg[W], du[W];
    load_vec<T, W>(gate + i, g);
    load_vec<T, W>(up + i, u);
    load_vec<T, W>(dy + i, d);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float s = 1.f / (1.f + expf(-g[k]));
      dg[k] = d[k] * u[k] * s * (1.f + g[k] * (1.f - s));
      du[k] = d[k] * g[k] * s;
    }
    store_vec<T, W>(dgate + i, dg);
    store_vec<T, W>(dup + i, du);
  });
}

constexpr int kThreads = 256;

}  // namespace

void swiglu_fwd(const Tensor& gate, const Tensor& up, const Tensor& y) {
  const auto [n, dev, s] = flat_op(y);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(y.dtype(), "swiglu_fwd", T, [&] {
    NATSL_CHECK(gate.dtype() == y.dtype() && up.dtype() == y.dtype(), "swiglu_fwd: dtypes differ");
    launch_flat<T>(aligned16(gate) && aligned16(up) && aligned16(y), dev, n, kThreads, [&](auto w, int grid) {
      swiglu_fwd_kernel<T, decltype(w)::value><<<grid, kThreads, 0, s>>>(cptr<T>(gate), cptr<T>(up), mptr<T>(y), n);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void swiglu_bwd(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup) {
  const auto [n, dev, s] = flat_op(dy);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(dy.dtype(), "swiglu_bwd", T, [&] {
    for (const Tensor* t : {&gate, &up, &dgate, &dup})
      NATSL_CHECK(t->dtype() == dy.dtype(), "swiglu_bwd: dtypes differ");
    const bool vec = aligned16(gate) && aligned16(up) && aligned16(dy) && aligned16(dgate) && aligned16(dup);
    launch_flat<T>(vec, dev, n, kThreads, [&](auto w, int grid) {
      swiglu_bwd_kernel<T, decltype(w)::value>
          <<<grid, kThreads, 0, s>>>(cptr<T>(gate), cptr<T>(up), cptr<T>(dy), mptr<T>(dgate), mptr<T>(dup), n);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
