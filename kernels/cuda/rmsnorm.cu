// CUDA RMSNorm over the last dim:
//   rstd = 1 / sqrt(mean(x^2) + eps),  y = x * rstd * w
//   dx_j = rstd * w_j * dy_j - x_j * rstd^3 / D * sum_k(dy_k w_k x_k),   dw_j = sum_rows dy_j x_j rstd
// The weight gradient is deterministic: each block (or block row slot) adds its rows into its own f32 partial
// row, then the partial rows are added in a fixed order (column_sum.cuh), into dw (x's dtype or f32) or, with
// accumulate_dw, added into what dw holds (a parameter's f32 .grad: autograd's weight-gradient sink).
// Kernels (RmsnormPlan, rmsnorm_plan.h): rmsnorm_short_kernel for head-sized rows (a few lanes of a warp per
// row, the row in registers), rmsnorm_bwd_regs_kernel for wider rows (one block per row, 2 vectors per thread
// per tensor in registers), and the general kernels for the rest (rows not vector-aligned or too wide; the
// backward reads x and dy twice per row). Every backward kernel can add its dx into the values already in dx
// (`accumulate`: the sum formed in f32 and rounded once), so the autograd op writes straight into its input's
// pending gradient (the residual stream's) instead of a new tensor and a separate add.
#include <algorithm>

#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/store_rn.cuh"
#include "kernels/cuda/rmsnorm_plan.h"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

// o += the VEC values of T at p: the gradient already in dx, added in f32 before the one rounding of the store.
template <class T, int VEC>
__device__ __forceinline__ void add_prior(const T* p, float (&o)[VEC]) {
  float prior[VEC];
  load_vec<T, VEC>(p, prior);
#pragma unroll
  for (int k = 0; k < VEC; ++k) o[k] += prior[k];
}

template <class T, int VEC>
__global__ void __launch_bounds__(1024) rmsnorm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                   float* __restrict__ rstd, int64_t rows, int64_t D, float eps) {
  extern __shared__ float scratch[];
  rows_with_sums<VEC, 1>(
      rows, D, scratch, [&](int64_t off, int64_t j, auto& ss) { add_squares<T, VEC>(x + off + j, ss[0]); },
      [&](int64_t r, int64_t off, const auto& ss) {
        const float rs = 1.f / sqrtf(ss[0] / float(D) + eps);
        if (threadIdx.x == 0) rstd[r] = rs;
        NATSL_FOR_ROW_VEC(j, D, VEC) {
          float v[VEC], wv[VEC];
          load_vec<T, VEC>(x + off + j, v);
          if (w) load_vec<T, VEC>(w + j, wv);
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[k] = v[k] * rs * (w ? wv[k] : 1.f);
          store_vec<T, VEC>(y + off + j, v);
        }
      });
}

// Short rows (at most 128 vectors: the q/k norms' heads, GDN's output norm): TPR lanes of one warp own a row,
// each lane NV vectors of it held in registers from the row sum to the output (one read and one write per
// tensor), and each lane group works on RPG rows at once so that RPG * NV 16-byte loads per tensor are in
// flight. Row sums are xor-shuffles inside the group (fixed order). Each lane's columns are the same on every
// row, so w is read once per thread and, in the backward, the lane keeps its dw columns in registers over all
// its rows; at the end the block's lane groups add theirs through shared memory (dynamic, [256 / TPR, D] f32)
// in a fixed order into the block's partial row dw_partial[blockIdx.x] (may be null). Grid-stride over groups
// of RPG rows; 256 threads a block.
//   fwd: x -> out = y, rstd_out.   bwd: x, dy, rstd_in -> out = dx, dw_partial.
template <class T, int VEC, int TPR, int NV, int RPG, bool BWD>
__global__ void __launch_bounds__(256)
    rmsnorm_short_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ dy,
                         const float* __restrict__ rstd_in, T* __restrict__ out, float* __restrict__ rstd_out,
                         float* __restrict__ dw_partial, int64_t rows, int64_t D, float eps, bool accumulate) {
  extern __shared__ float sm_dw[];
  const int lane = threadIdx.x % TPR, slot = threadIdx.x / TPR, slots = blockDim.x / TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * slots;
  const int64_t group = int64_t(blockIdx.x) * slots + slot;
  const int64_t nvec = D / VEC;
  float wv[NV][VEC], dw_acc[NV][VEC];
#pragma unroll
  for (int n = 0; n < NV; ++n) {
    const int64_t vi = int64_t(n) * TPR + lane;
#pragma unroll
    for (int k = 0; k < VEC; ++k) wv[n][k] = 1.f, dw_acc[n][k] = 0.f;
    if (w && vi < nvec) load_vec<T, VEC>(w + vi * VEC, wv[n]);
  }
  for (int64_t r0 = group * RPG; r0 < rows; r0 += groups_per_grid * RPG) {
    float xv[RPG][NV][VEC], gv[RPG][NV][VEC];
    load_short_rows<T, VEC, TPR, NV, RPG, BWD>(x, dy, r0, rows, D, lane, xv, gv);
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      float acc = 0.f;  // fwd: sum_k x_k^2;  bwd: sum_k dy_k w_k x_k (zero-filled vectors add nothing)
#pragma unroll
      for (int n = 0; n < NV; ++n)
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc += BWD ? gv[q][n][k] * wv[n][k] * xv[q][n][k] : xv[q][n][k] * xv[q][n][k];
      acc = group_sum<TPR>(acc);
      const int64_t r = r0 + q;
      if (r >= rows) continue;
      float rs, c = 0.f;
      if constexpr (BWD) {
        rs = rstd_in[r];
        c = rs * rs * rs * acc / float(D);
      } else {
        rs = 1.f / sqrtf(acc / float(D) + eps);
        if (lane == 0) rstd_out[r] = rs;
      }
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float o[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          if constexpr (BWD) {
            o[k] = rs * wv[n][k] * gv[q][n][k] - xv[q][n][k] * c;
            dw_acc[n][k] += gv[q][n][k] * xv[q][n][k] * rs;
          } else {
            o[k] = xv[q][n][k] * rs * wv[n][k];
          }
        }
        if (BWD && accumulate) add_prior<T, VEC>(out + r * D + vi * VEC, o);
        store_vec_rn<T, VEC>(out + r * D + vi * VEC, o);
      }
    }
  }
  if constexpr (BWD) {
    if (!dw_partial) return;  // the same for the whole block: no thread waits at the barrier below
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t vi = int64_t(n) * TPR + lane;
      if (vi >= nvec) continue;
#pragma unroll
      for (int k = 0; k < VEC; ++k) sm_dw[int64_t(slot) * D + vi * VEC + k] = dw_acc[n][k];
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      float sum = 0.f;
      for (int g = 0; g < slots; ++g) sum += sm_dw[int64_t(g) * D + j];
      dw_partial[int64_t(blockIdx.x) * D + j] = sum;
    }
  }
}

// Launches rmsnorm_short_kernel when the row is vector-aligned data of at most 128 vectors; false otherwise.
// The backward with want_dw sums the blocks' partial rows into dw (added into it with acc_dw); with accumulate it
// adds dx into outp.
template <class T, bool BWD>
bool launch_rmsnorm_short(const T* xp, const T* wp, const T* gp, const float* rin, T* outp, float* rout, bool want_dw,
                          const Tensor& dw, int64_t rows, int64_t D, float eps, Device d, cudaStream_t s,
                          bool accumulate = false, bool acc_dw = false) {
  constexpr int VEC = kVec<T>;
  const int dev = d.index;
  return dispatch_short_rows(D / VEC, [&](auto tpr, auto nv) {
    constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = 4 / NV;
    const int64_t groups = (rows + RPG - 1) / RPG;
    const int grid = grid_for(dev, groups, 256 / TPR, 8);
    Tensor partial;
    float* pp = nullptr;
    size_t smem = 0;
    if (BWD && want_dw) {
      partial = scratch_f32(int64_t(grid) * D, d);
      pp = partial.data<float>();
      smem = size_t(256 / TPR) * size_t(D) * sizeof(float);  // <= 32 KB: D <= 128 vectors of 16 bytes
    }
    rmsnorm_short_kernel<T, VEC, TPR, NV, RPG, BWD>
        <<<grid, 256, smem, s>>>(xp, wp, gp, rin, outp, rout, pp, rows, D, eps, accumulate);
    NATSL_CUDA_CHECK_LAUNCH();
    if (BWD && want_dw) column_sum<32>(pp, grid, D, dw, s, acc_dw);
  });
}

// dw_partial (may be null): [gridDim.x * blockDim.y, D] f32; every entry is written. SMEM_DW: each
// (block, row slot) accumulates its dw row in shared memory (entry k * D/VEC + j/VEC of the slot holds
// column j + k, so a warp's accesses fall in distinct banks; each entry has one owning thread, so no
// barrier) and writes it once at the end; otherwise it adds into its (zeroed) partial row in global memory.
template <class T, int VEC, bool SMEM_DW>
__global__ void __launch_bounds__(1024) rmsnorm_bwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ rstd,
                                   const T* __restrict__ dy, T* __restrict__ dx, float* __restrict__ dw_partial,
                                   int64_t rows, int64_t D, bool accumulate) {
  extern __shared__ float scratch[];
  const int64_t nvec = D / VEC;
  float* my_dw = dw_partial ? dw_partial + (int64_t(blockIdx.x) * blockDim.y + threadIdx.y) * D : nullptr;
  float* sm_dw = scratch + 32 * blockDim.y + int64_t(threadIdx.y) * D;
  if (SMEM_DW && my_dw)
    for (int64_t j = int64_t(threadIdx.x) * VEC; j < D; j += int64_t(blockDim.x) * VEC)
#pragma unroll
      for (int k = 0; k < VEC; ++k) sm_dw[k * nvec + j / VEC] = 0.f;
  // v = x, g = dy and wv = w (when given) at vector j of the row at off.
  auto load = [&](int64_t off, int64_t j, float (&v)[VEC], float (&g)[VEC], float (&wv)[VEC]) {
    load_vec<T, VEC>(x + off + j, v);
    load_vec<T, VEC>(dy + off + j, g);
    if (w) load_vec<T, VEC>(w + j, wv);
  };
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    float dot = 0.f;  // sum_k dy_k w_k x_k
    if (active)
      NATSL_FOR_ROW_VEC(j, D, VEC) {
        float v[VEC], g[VEC], wv[VEC];
        load(off, j, v, g, wv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) dot += g[k] * (w ? wv[k] : 1.f) * v[k];
      }
    dot = row_sum(dot, scratch);
    if (!active) continue;
    const float rs = rstd[r];
    const float c = rs * rs * rs * dot / float(D);
    NATSL_FOR_ROW_VEC(j, D, VEC) {
      float v[VEC], g[VEC], wv[VEC], o[VEC];
      load(off, j, v, g, wv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) o[k] = rs * (w ? wv[k] : 1.f) * g[k] - v[k] * c;
      if (accumulate) add_prior<T, VEC>(dx + off + j, o);
      store_vec<T, VEC>(dx + off + j, o);
      if (my_dw) {
        if constexpr (SMEM_DW) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) sm_dw[k * nvec + j / VEC] += g[k] * v[k] * rs;
        } else {
#pragma unroll
          for (int k = 0; k < VEC; ++k) my_dw[j + k] += g[k] * v[k] * rs;
        }
      }
    }
  }
  if (SMEM_DW && my_dw)
    for (int64_t j = int64_t(threadIdx.x) * VEC; j < D; j += int64_t(blockDim.x) * VEC) {
      float o[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) o[k] = sm_dw[k * nvec + j / VEC];
      store_vec<float, VEC == 1 ? 1 : 4>(my_dw + j, reinterpret_cast<const float(&)[VEC == 1 ? 1 : 4]>(o));
      if constexpr (VEC == 8) store_vec<float, 4>(my_dw + j + 4, reinterpret_cast<const float(&)[4]>(o[4]));
    }
}

// One block per row (grid-stride over rows), blockDim.x = a multiple of 32 with blockDim.x * NV * VEC >= D:
// each thread loads its NV vectors of x and dy once (all 2 NV 16-byte loads in flight together) and keeps
// them raw in registers from the row dot product to the dx write, so each row crosses DRAM once per tensor.
// The block's dw sums stay in registers (thread-owned columns) over all its rows and are written once to
// its partial row dw_partial[blockIdx.x] (may be null); w is re-read per row (L1-resident). One barrier per
// row: the warp sums alternate between two scratch rows.
template <class T, int NV>
__global__ void __launch_bounds__(512)
    rmsnorm_bwd_regs_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ rstd,
                            const T* __restrict__ dy, T* __restrict__ dx, float* __restrict__ dw_partial,
                            int64_t rows, int64_t D, bool accumulate) {
  constexpr int VEC = kVec<T>;
  __shared__ float warp_dot[2][32];
  const int64_t nvec = D / VEC;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  float dw_acc[NV][VEC];
#pragma unroll
  for (int n = 0; n < NV; ++n)
#pragma unroll
    for (int k = 0; k < VEC; ++k) dw_acc[n][k] = 0.f;
  int parity = 0;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x, parity ^= 1) {
    const int64_t off = r * D;
    uint4 xr[NV], gr[NV];
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t v = int64_t(n) * blockDim.x + threadIdx.x;
      const bool in = v < nvec;
      xr[n] = in ? *reinterpret_cast<const uint4*>(x + off + v * VEC) : make_uint4(0, 0, 0, 0);
      gr[n] = in ? *reinterpret_cast<const uint4*>(dy + off + v * VEC) : make_uint4(0, 0, 0, 0);
    }
    const float rs = rstd[r];
    float dot = 0.f;  // sum_k dy_k w_k x_k (zero-filled vectors add nothing)
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t v = int64_t(n) * blockDim.x + threadIdx.x;
      float xv[VEC], gv[VEC], wv[VEC];
      unpack_vec<T, VEC>(xr[n], xv);
      unpack_vec<T, VEC>(gr[n], gv);
      if (w && v < nvec) load_vec<T, VEC>(w + v * VEC, wv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) dot += gv[k] * (w && v < nvec ? wv[k] : 1.f) * xv[k];
    }
    dot = warp_sum(dot);
    if (lane == 0) warp_dot[parity][warp] = dot;
    __syncthreads();
    dot = warp_sum(lane < nwarps ? warp_dot[parity][lane] : 0.f);
    const float c = rs * rs * rs * dot / float(D);
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t v = int64_t(n) * blockDim.x + threadIdx.x;
      if (v >= nvec) continue;
      float xv[VEC], gv[VEC], wv[VEC], o[VEC];
      unpack_vec<T, VEC>(xr[n], xv);
      unpack_vec<T, VEC>(gr[n], gv);
      if (w) load_vec<T, VEC>(w + v * VEC, wv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        o[k] = rs * (w ? wv[k] : 1.f) * gv[k] - xv[k] * c;
        dw_acc[n][k] += gv[k] * xv[k] * rs;
      }
      if (accumulate) add_prior<T, VEC>(dx + off + v * VEC, o);
      store_vec_rn<T, VEC>(dx + off + v * VEC, o);
    }
  }
  if (!dw_partial) return;
  float* my_dw = dw_partial + int64_t(blockIdx.x) * D;
#pragma unroll
  for (int n = 0; n < NV; ++n) {
    const int64_t v = int64_t(n) * blockDim.x + threadIdx.x;
    if (v >= nvec) continue;
#pragma unroll
    for (int k = 0; k < VEC; k += 4)
      *reinterpret_cast<float4*>(my_dw + v * VEC + k) =
          make_float4(dw_acc[n][k], dw_acc[n][k + 1], dw_acc[n][k + 2], dw_acc[n][k + 3]);
  }
}

// Launches rmsnorm_bwd_regs_kernel with NV vectors per thread when the row fits 512 threads (vectorised
// data only); false when it does not (the caller falls back to the default kernel).
template <class T, int NV>
bool launch_rmsnorm_bwd_regs(const T* xp, const T* wp, const float* rp, const T* gp, T* dp, bool want_dw,
                             const Tensor& dw, int64_t rows, int64_t D, Device d, cudaStream_t s, bool accumulate,
                             bool acc_dw) {
  constexpr int VEC = kVec<T>;
  const int64_t nvec = D / VEC;
  const int64_t threads = ((nvec + NV - 1) / NV + 31) / 32 * 32;
  if (threads > 512) return false;
  auto kern = rmsnorm_bwd_regs_kernel<T, NV>;
  int per_sm = 0;
  NATSL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, int(threads), 0));
  const int64_t grid = std::min<int64_t>(rows, int64_t(sm_count(d.index)) * std::max(per_sm, 1));
  Tensor partial;
  float* pp = nullptr;
  if (want_dw) {
    partial = scratch_f32(grid * D, d);
    pp = partial.data<float>();
  }
  kern<<<unsigned(grid), unsigned(threads), 0, s>>>(xp, wp, rp, gp, dp, pp, rows, D, accumulate);
  NATSL_CUDA_CHECK_LAUNCH();
  // Hundreds of partial rows: 32 slices keep each thread's dependent load chain short.
  if (want_dw) column_sum<32>(pp, grid, D, dw, s, acc_dw);
  return true;
}

}  // namespace

namespace {
// Whether `plan` sends rows of D elements of T to the short-row kernels (which take at most 128 vectors) in the
// forward or the backward.
template <class T>
bool wants_short_rows(const RmsnormPlan& plan, int64_t D, bool backward) {
  const int64_t nvec = D / kVec<T>;
  if (plan.kernel == RmsnormPlan::Kernel::short_rows) return nvec <= 128;
  return plan.kernel == RmsnormPlan::Kernel::automatic &&
         nvec <= (backward ? kRmsnormShortRowVecsBwd : kRmsnormShortRowVecsFwd);
}
}  // namespace

void rmsnorm_fwd(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd) {
  rmsnorm_fwd(x, w, eps, y, rstd, RmsnormPlan{});
}

void rmsnorm_fwd(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd,
                 const RmsnormPlan& plan) {
  const auto [D, rows, dev, s] = row_op(x, x.size(-1));
  if (rows == 0) return;
  NATSL_CHECK(rstd.dtype() == DType::f32 && rstd.numel() == rows, "rmsnorm_fwd: rstd must be f32 with one value per row");
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "rmsnorm_fwd", T, [&] {
    NATSL_CHECK(y.dtype() == x.dtype() && (!w.defined() || w.dtype() == x.dtype()), "rmsnorm_fwd: dtypes differ");
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* wp = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    T* yp = static_cast<T*>(y.data_ptr());
    float* rp = rstd.data<float>();
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(xp) && aligned16(w) && aligned16(yp);
    if (vec && wants_short_rows<T>(plan, D, /*backward=*/false) &&
        launch_rmsnorm_short<T, false>(xp, wp, nullptr, nullptr, yp, rp, false, Tensor(), rows, D, float(eps),
                                       x.device(), s))
      return;
    launch_rows<V>(vec, dev, rows, D, [&](auto vw, const RowGrid& g) {
      rmsnorm_fwd_kernel<T, decltype(vw)::value><<<g.grid, g.block, g.smem, s>>>(xp, wp, yp, rp, rows, D, float(eps));
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                 const Tensor& dw, bool accumulate_dx, bool accumulate_dw) {
  rmsnorm_bwd(x, w, rstd, dy, dx, dw, RmsnormPlan{}, accumulate_dx, accumulate_dw);
}

void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                 const Tensor& dw, const RmsnormPlan& plan, bool accumulate_dx, bool accumulate_dw) {
  const bool acc = accumulate_dx, acc_dw = accumulate_dw;
  const auto [D, rows, dev, s] = row_op(x, x.size(-1));
  if (rows == 0) {
    if (dw.defined() && !acc_dw) dw.zero_();
    return;
  }
  NATSL_CHECK(rstd.dtype() == DType::f32 && rstd.numel() == rows, "rmsnorm_bwd: rstd must be f32 with one value per row");
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "rmsnorm_bwd", T, [&] {
    for (const Tensor* t : {&w, &dy, &dx})
      NATSL_CHECK(!t->defined() || t->dtype() == x.dtype(), "rmsnorm_bwd: dtypes differ");
    NATSL_CHECK(!dw.defined() || weight_grad_writes(x.dtype(), dw.dtype()), "rmsnorm_bwd: dw ", dw.str(),
                " for data ", x.str());
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* wp = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    const T* gp = static_cast<const T*>(dy.data_ptr());
    T* dp = static_cast<T*>(dx.data_ptr());
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(xp) && aligned16(w) && aligned16(gp) && aligned16(dp);
    if (vec) {
      const float* rp = rstd.data<float>();
      if (wants_short_rows<T>(plan, D, /*backward=*/true)) {
        if (launch_rmsnorm_short<T, true>(xp, wp, gp, rp, dp, nullptr, dw.defined(), dw, rows, D, 0.f, x.device(), s,
                                          acc, acc_dw))
          return;
      } else if ((plan.kernel == RmsnormPlan::Kernel::automatic ||
                  plan.kernel == RmsnormPlan::Kernel::row_in_registers) &&
                 launch_rmsnorm_bwd_regs<T, 2>(xp, wp, rp, gp, dp, dw.defined(), dw, rows, D, x.device(), s, acc,
                                               acc_dw)) {
        return;
      }
    }
    // One vector per thread per row: wide blocks, so few (block, row slot) partial rows.
    RowGrid g = row_grid(dev, rows, D, vec ? V : 1, 1);
    const int64_t groups = int64_t(g.grid.x) * g.block.y;
    // dw rows of the block in shared memory when they fit the default 48 KB (with the row_sum scratch).
    const size_t dw_smem = size_t(g.block.y) * size_t(D) * sizeof(float);
    const bool smem_dw = dw.defined() && g.smem + dw_smem <= 48 * 1024;
    Tensor partial;
    float* pp = nullptr;
    if (dw.defined()) {
      partial = scratch_f32(groups * D, x.device());
      pp = partial.data<float>();
      if (!smem_dw) NATSL_CUDA_CHECK(cudaMemsetAsync(pp, 0, size_t(groups * D) * sizeof(float), s));
    }
    const float* rp = rstd.data<float>();
    if (smem_dw) {
      const size_t sm = g.smem + dw_smem;
      if (vec) rmsnorm_bwd_kernel<T, V, true><<<g.grid, g.block, sm, s>>>(xp, wp, rp, gp, dp, pp, rows, D, acc);
      else rmsnorm_bwd_kernel<T, 1, true><<<g.grid, g.block, sm, s>>>(xp, wp, rp, gp, dp, pp, rows, D, acc);
    } else {
      if (vec) rmsnorm_bwd_kernel<T, V, false><<<g.grid, g.block, g.smem, s>>>(xp, wp, rp, gp, dp, pp, rows, D, acc);
      else rmsnorm_bwd_kernel<T, 1, false><<<g.grid, g.block, g.smem, s>>>(xp, wp, rp, gp, dp, pp, rows, D, acc);
    }
    NATSL_CUDA_CHECK_LAUNCH();
    if (dw.defined()) column_sum(pp, groups, D, dw, s, acc_dw);
  });
}

}  // namespace natsl::kernels::cuda
