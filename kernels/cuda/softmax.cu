// CUDA softmax and log-softmax over the last dim, forward and backward. A block-row per row: one
// streaming pass for the statistics, a second pass (served from L1/L2) for the output.
//   softmax:      y = exp(x - lse);          dx = y * (dy - sum(dy * y))
//   log-softmax:  y = x - lse;               dx = dy - exp(y) * sum(dy)
#include "kernels/cuda/online_softmax.cuh"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

template <class T, int VEC, bool LOG>
__global__ void __launch_bounds__(1024) softmax_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const T* xr = x + (active ? r : 0) * D;
    MaxSum ms;
    if (active)
      NATSL_FOR_ROW_VEC(j, D, VEC) {
        float v[VEC];
        load_vec<T, VEC>(xr + j, v);
        ms.add<T, VEC>(v);
      }
    const float lse = row_logsumexp<T>(ms, scratch);
    if (!active) continue;
    T* yr = y + r * D;
    NATSL_FOR_ROW_VEC(j, D, VEC) {
      float v[VEC];
      load_vec<T, VEC>(xr + j, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = LOG ? v[k] - lse : exp_for<T>(v[k] - lse);
      store_vec<T, VEC>(yr + j, v);
    }
  }
}

template <class T, int VEC, bool LOG>
__global__ void __launch_bounds__(1024) softmax_bwd_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                                   int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  rows_with_sums<VEC, 1>(
      rows, D, scratch,
      [&](int64_t off, int64_t j, auto& dot) {
        float g[VEC], yv[VEC];
        load_vec<T, VEC>(dy + off + j, g);
        if (!LOG) load_vec<T, VEC>(y + off + j, yv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) dot[0] += LOG ? g[k] : g[k] * yv[k];
      },
      [&](int64_t, int64_t off, const auto& dot) {
        NATSL_FOR_ROW_VEC(j, D, VEC) {
          float g[VEC], yv[VEC];
          load_vec<T, VEC>(dy + off + j, g);
          load_vec<T, VEC>(y + off + j, yv);
#pragma unroll
          for (int k = 0; k < VEC; ++k) g[k] = LOG ? g[k] - expf(yv[k]) * dot[0] : yv[k] * (g[k] - dot[0]);
          store_vec<T, VEC>(dx + off + j, g);
        }
      });
}

template <bool LOG>
void launch_fwd(const Tensor& x, const Tensor& y, const char* op) {
  const auto [D, rows, dev, s] = row_op(x, x.dim() == 0 ? 1 : x.size(-1));
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), op, T, [&] {
    NATSL_CHECK(y.dtype() == x.dtype(), op, ": dtypes differ");
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* yp = static_cast<T*>(y.data_ptr());
    constexpr int V = kVec<T>;
    launch_rows<V>(D % V == 0 && aligned16(xp) && aligned16(yp), dev, rows, D, [&](auto w, const RowGrid& g) {
      softmax_fwd_kernel<T, decltype(w)::value, LOG><<<g.grid, g.block, g.smem, s>>>(xp, yp, rows, D);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

template <bool LOG>
void launch_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx, const char* op) {
  const auto [D, rows, dev, s] = row_op(y, y.dim() == 0 ? 1 : y.size(-1));
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(y.dtype(), op, T, [&] {
    NATSL_CHECK(dy.dtype() == y.dtype() && dx.dtype() == y.dtype(), op, ": dtypes differ");
    const T* yp = static_cast<const T*>(y.data_ptr());
    const T* gp = static_cast<const T*>(dy.data_ptr());
    T* dp = static_cast<T*>(dx.data_ptr());
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(yp) && aligned16(gp) && aligned16(dp);
    launch_rows<V>(vec, dev, rows, D, [&](auto w, const RowGrid& g) {
      softmax_bwd_kernel<T, decltype(w)::value, LOG><<<g.grid, g.block, g.smem, s>>>(yp, gp, dp, rows, D);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void softmax_fwd(const Tensor& x, const Tensor& y) { launch_fwd<false>(x, y, "softmax_fwd"); }
void log_softmax_fwd(const Tensor& x, const Tensor& y) { launch_fwd<true>(x, y, "log_softmax_fwd"); }
void softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) { launch_bwd<false>(y, dy, dx, "softmax_bwd"); }
void log_softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  launch_bwd<true>(y, dy, dx, "log_softmax_bwd");
}

}  // namespace natsl::kernels::cuda
