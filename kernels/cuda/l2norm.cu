// CUDA l2norm over the last dim (eps inside the root, as FLA):
//   rnorm = 1 / sqrt(sum x^2 + eps),  y = x * rnorm,  dx = rnorm * (dy - y * sum(dy * y)).
#include "kernels/cuda/common.cuh"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

template <class T, int VEC>
__global__ void __launch_bounds__(1024) l2norm_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, float* __restrict__ rnorm,
                                  int64_t rows, int64_t D, float eps) {
  extern __shared__ float scratch[];
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    float ss = 0.f;
    if (active)
      for (int64_t j = int64_t(threadIdx.x) * VEC; j < D; j += int64_t(blockDim.x) * VEC) {
        float v[VEC];
        load_vec<T, VEC>(x + off + j, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) ss += v[k] * v[k];
      }
    ss = row_sum(ss, scratch);
    if (!active) continue;
    const float rn = 1.f / sqrtf(ss + eps);
    if (threadIdx.x == 0) rnorm[r] = rn;
    for (int64_t j = int64_t(threadIdx.x) * VEC; j < D; j += int64_t(blockDim.x) * VEC) {
      float v[VEC];
      load_vec<T, VEC>(x + off + j, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] *= rn;
      store_vec<T, VEC>(y + off + j, v);
    }
  }
}

template <class T, int VEC>
__global__ void __launch_bounds__(1024) l2norm_bwd_kernel(const T* __restrict__ y, const float* __restrict__ rnorm,
                                  const T* __restrict__ dy, T* __restrict__ dx, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    float dot = 0.f;
    if (active)
      for (int64_t j = int64_t(threadIdx.x) * VEC; j < D; j += int64_t(blockDim.x) * VEC) {
        float g[VEC], yv[VEC];
        load_vec<T, VEC>(dy + off + j, g);
        load_vec<T, VEC>(y + off + j, yv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) dot += g[k] * yv[k];
      }
    dot = row_sum(dot, scratch);
    if (!active) continue;
    const float rn = rnorm[r];
    for (int64_t j = int64_t(threadIdx.x) * VEC; j < D; j += int64_t(blockDim.x) * VEC) {
      float g[VEC], yv[VEC];
      load_vec<T, VEC>(dy + off + j, g);
      load_vec<T, VEC>(y + off + j, yv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) g[k] = rn * (g[k] - yv[k] * dot);
      store_vec<T, VEC>(dx + off + j, g);
    }
  }
}

}  // namespace

void l2norm_fwd(const Tensor& x, double eps, const Tensor& y, const Tensor& rnorm) {
  const int64_t D = x.size(-1);
  const int64_t rows = D > 0 ? x.numel() / D : 0;
  if (rows == 0) return;
  const int dev = x.device().index;
  cudaStream_t s = activate(dev);
  NATSL_CHECK(rnorm.dtype() == DType::f32 && rnorm.numel() == rows, "l2norm_fwd: rnorm must be f32 with one value per row");
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "l2norm_fwd", T, [&] {
    NATSL_CHECK(y.dtype() == x.dtype(), "l2norm_fwd: dtypes differ");
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* yp = static_cast<T*>(y.data_ptr());
    float* rp = rnorm.data<float>();
    constexpr int V = kVec<T>;
    if (D % V == 0 && aligned16(xp) && aligned16(yp)) {
      RowGrid g = row_grid(dev, rows, D, V);
      l2norm_fwd_kernel<T, V><<<g.grid, g.block, g.smem, s>>>(xp, yp, rp, rows, D, float(eps));
    } else {
      RowGrid g = row_grid(dev, rows, D, 1);
      l2norm_fwd_kernel<T, 1><<<g.grid, g.block, g.smem, s>>>(xp, yp, rp, rows, D, float(eps));
    }
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void l2norm_bwd(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx) {
  const int64_t D = y.size(-1);
  const int64_t rows = D > 0 ? y.numel() / D : 0;
  if (rows == 0) return;
  const int dev = y.device().index;
  cudaStream_t s = activate(dev);
  NATSL_CHECK(rnorm.dtype() == DType::f32 && rnorm.numel() == rows, "l2norm_bwd: rnorm must be f32 with one value per row");
  NATSL_CUDA_DISPATCH_FLOAT(y.dtype(), "l2norm_bwd", T, [&] {
    NATSL_CHECK(dy.dtype() == y.dtype() && dx.dtype() == y.dtype(), "l2norm_bwd: dtypes differ");
    const T* yp = static_cast<const T*>(y.data_ptr());
    const T* gp = static_cast<const T*>(dy.data_ptr());
    T* dp = static_cast<T*>(dx.data_ptr());
    const float* rp = rnorm.data<float>();
    constexpr int V = kVec<T>;
    if (D % V == 0 && aligned16(yp) && aligned16(gp) && aligned16(dp)) {
      RowGrid g = row_grid(dev, rows, D, V);
      l2norm_bwd_kernel<T, V><<<g.grid, g.block, g.smem, s>>>(yp, rp, gp, dp, rows, D);
    } else {
      RowGrid g = row_grid(dev, rows, D, 1);
      l2norm_bwd_kernel<T, 1><<<g.grid, g.block, g.smem, s>>>(yp, rp, gp, dp, rows, D);
    }
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
