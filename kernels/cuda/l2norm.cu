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
  rows_with_sums<VEC, 1>(
      rows, D, scratch, [&](int64_t off, int64_t j, auto& ss) { add_squares<T, VEC>(x + off + j, ss[0]); },
      [&](int64_t r, int64_t off, const auto& ss) {
        const float rn = 1.f / sqrtf(ss[0] + eps);
        if (threadIdx.x == 0) rnorm[r] = rn;
        NATSL_FOR_ROW_VEC(j, D, VEC) {
          float v[VEC];
          load_vec<T, VEC>(x + off + j, v);
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[k] *= rn;
          store_vec<T, VEC>(y + off + j, v);
        }
      });
}

template <class T, int VEC>
__global__ void __launch_bounds__(1024) l2norm_bwd_kernel(const T* __restrict__ y, const float* __restrict__ rnorm,
                                  const T* __restrict__ dy, T* __restrict__ dx, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  // g = dy and yv = y at vector j of the row at off.
  auto load = [&](int64_t off, int64_t j, float (&g)[VEC], float (&yv)[VEC]) {
    load_vec<T, VEC>(dy + off + j, g);
    load_vec<T, VEC>(y + off + j, yv);
  };
  rows_with_sums<VEC, 1>(
      rows, D, scratch,
      [&](int64_t off, int64_t j, auto& dot) {
        float g[VEC], yv[VEC];
        load(off, j, g, yv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) dot[0] += g[k] * yv[k];
      },
      [&](int64_t r, int64_t off, const auto& dot) {
        const float rn = rnorm[r];
        NATSL_FOR_ROW_VEC(j, D, VEC) {
          float g[VEC], yv[VEC];
          load(off, j, g, yv);
#pragma unroll
          for (int k = 0; k < VEC; ++k) g[k] = rn * (g[k] - yv[k] * dot[0]);
          store_vec<T, VEC>(dx + off + j, g);
        }
      });
}

// Short rows (at most 128 vectors, e.g. head dim 128): a group of TPR lanes of one warp owns a row, each
// lane NV vectors of it, held in registers between the reduction and the output (one read, one write), and
// each group works on RPG rows at once so that RPG * NV 16-byte loads per thread are in flight. Reductions
// are xor-shuffles inside the group (fixed order: deterministic). Grid-stride over groups of RPG rows; a warp
// runs a pass while any of its groups has a row left (a warp vote, so the same passes for all its lanes): every
// lane reaches every group sum, which may then name the whole warp; a group past the end loads zeros and
// stores nothing.
//
template <class T, int VEC, int TPR, int NV, int RPG, bool BWD>
__global__ void __launch_bounds__(256) l2norm_short_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                                           const float* __restrict__ rnorm_in, T* __restrict__ out,
                                                           float* __restrict__ rnorm_out, int64_t rows, int64_t D,
                                                           float eps) {
  // fwd: a = x, out = y, rnorm_out written.  bwd: a = y, b = dy, rnorm_in read, out = dx.
  const int lane = threadIdx.x % TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * (blockDim.x / TPR);
  const int64_t group = int64_t(blockIdx.x) * (blockDim.x / TPR) + threadIdx.x / TPR;
  const int64_t nvec = D / VEC;
  for (int64_t r0 = group * RPG; __any_sync(0xffffffffu, r0 < rows); r0 += groups_per_grid * RPG) {
    float va[RPG][NV][VEC], vb[RPG][NV][VEC];
    load_short_rows<T, VEC, TPR, NV, RPG, BWD>(a, b, r0, rows, D, lane, va, vb);
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      float acc = 0.f;
#pragma unroll
      for (int n = 0; n < NV; ++n)
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc += BWD ? vb[q][n][k] * va[q][n][k] : va[q][n][k] * va[q][n][k];
      acc = warp_group_sum<TPR>(acc);
      const int64_t r = r0 + q;
      if (r >= rows) continue;
      float rn;
      if constexpr (BWD) {
        rn = rnorm_in[r];
      } else {
        rn = 1.f / sqrtf(acc + eps);
        if (lane == 0) rnorm_out[r] = rn;
      }
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float o[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = BWD ? rn * (vb[q][n][k] - va[q][n][k] * acc) : va[q][n][k] * rn;
        store_vec<T, VEC>(out + r * D + vi * VEC, o);
      }
    }
  }
}

// Launches the short-row kernel when the row has at most 128 vectors of VEC; false otherwise.
template <class T, int VEC, bool BWD>
bool l2norm_short(int dev, cudaStream_t s, const T* a, const T* b, const float* rn_in, T* out, float* rn_out,
                  int64_t rows, int64_t D, float eps) {
  const int64_t nvec = D / VEC;
  return dispatch_short_rows(nvec, [&](auto tpr, auto nv) {
    constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = 4 / NV;
    const int64_t groups = (rows + RPG - 1) / RPG;
    const int grid = grid_for(dev, groups, 256 / TPR, 8);
    l2norm_short_kernel<T, VEC, TPR, NV, RPG, BWD><<<grid, 256, 0, s>>>(a, b, rn_in, out, rn_out, rows, D, eps);
    NATSL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void l2norm_fwd(const Tensor& x, double eps, const Tensor& y, const Tensor& rnorm) {
  const auto [D, rows, dev, s] = row_op(x, x.size(-1));
  if (rows == 0) return;
  NATSL_CHECK(rnorm.dtype() == DType::f32 && rnorm.numel() == rows, "l2norm_fwd: rnorm must be f32 with one value per row");
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "l2norm_fwd", T, [&] {
    NATSL_CHECK(y.dtype() == x.dtype(), "l2norm_fwd: dtypes differ");
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* yp = static_cast<T*>(y.data_ptr());
    float* rp = rnorm.data<float>();
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(xp) && aligned16(yp);
    if (vec && l2norm_short<T, V, false>(dev, s, xp, nullptr, nullptr, yp, rp, rows, D, float(eps))) return;
    launch_rows<V>(vec, dev, rows, D, [&](auto w, const RowGrid& g) {
      l2norm_fwd_kernel<T, decltype(w)::value><<<g.grid, g.block, g.smem, s>>>(xp, yp, rp, rows, D, float(eps));
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void l2norm_bwd(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx) {
  const auto [D, rows, dev, s] = row_op(y, y.size(-1));
  if (rows == 0) return;
  NATSL_CHECK(rnorm.dtype() == DType::f32 && rnorm.numel() == rows, "l2norm_bwd: rnorm must be f32 with one value per row");
  NATSL_CUDA_DISPATCH_FLOAT(y.dtype(), "l2norm_bwd", T, [&] {
    NATSL_CHECK(dy.dtype() == y.dtype() && dx.dtype() == y.dtype(), "l2norm_bwd: dtypes differ");
    const T* yp = static_cast<const T*>(y.data_ptr());
    const T* gp = static_cast<const T*>(dy.data_ptr());
    T* dp = static_cast<T*>(dx.data_ptr());
    const float* rp = rnorm.data<float>();
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(yp) && aligned16(gp) && aligned16(dp);
    if (vec && l2norm_short<T, V, true>(dev, s, yp, gp, rp, dp, nullptr, rows, D, 0.f)) return;
    launch_rows<V>(vec, dev, rows, D, [&](auto w, const RowGrid& g) {
      l2norm_bwd_kernel<T, decltype(w)::value><<<g.grid, g.block, g.smem, s>>>(yp, rp, gp, dp, rows, D);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
