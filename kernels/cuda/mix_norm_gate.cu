// CUDA output mixing of NAtS-L and GDN's gated output norm (kernels/mix_norm_gate.h), row kernels over rows of Dv
// channels (one row = one token and head slot), statistics in f32. The mixing:
//   forward:  rstd_g, rstd_a from two row sums of squares; y = (w0 g_hat + w1 a_hat) * silu(z)
//   backward: two row sums, dw0 = <du, g_hat>, dw1 = <du, a_hat> (du = dy silu(z)); the RMSNorm backward
//             needs nothing more, because sum(w0 du gamma_g n_g) = w0 dw0:
//               dog = rstd_g (w0 du gamma_g - n_g w0 dw0 / Dv)   (n_g = og rstd_g; likewise doa)
//             dgamma: f32 partial rows added in order afterwards (column_sum; deterministic, as the RMSNorm weight
//             gradient), into dgamma (the data's dtype or f32) or, with accumulate_dgamma, added into what it holds
//             (a parameter's .grad: autograd's weight-gradient sink).
// Kernels, each way (MixNormGatePlan, mix_norm_gate_plan.h):
//   short rows  16-byte aligned rows of at most kMixNormGateShortRowVecsFwd / Bwd vectors (natsl-340m: 128 and 256
//               bf16 channels): TPR lanes of a warp a row, the row in registers from the row sums to the outputs,
//               several rows a lane group in flight (mix::kShortThreads, kernels/cuda/mix_norm_gate.cuh); dgamma
//               summed per lane in registers, then per block through shared memory into one partial row per block.
//   row kernels the rest (wider or unaligned rows): a row per (block, row slot), whole warps a row; the backward in
//               one pass where a row is at most one vector a thread of a block of at most mix::kOnePassThreads
//               (mix::bwd_onepass_kernel), the dgamma sums per (block, row slot) in registers where the row fits
//               the block, else in memory.
// Every output of the two but dgamma has the same bits (the same per-element functions, row sums in the same
// order: mix::onepass_row_sum); dgamma adds in another fixed order.
#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/mix_norm_gate.cuh"
#include "kernels/cuda/mix_norm_gate_plan.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

using mix::sigmoid_f;
using mix::softmax2;

// Whether a row kernel launched with grid g (W columns a vector) has at most one vector per thread of every row in
// a block of at most mix::kOnePassThreads threads: the one-pass kernels' case.
bool one_pass_rows(const RowGrid& g, int64_t D, int W) {
  return partial_rows_in_registers(g, D, W) && g.block.x * g.block.y <= unsigned(mix::kOnePassThreads);
}

template <class T, int VEC>
__global__ void __launch_bounds__(1024)
    mix_fwd_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                   const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga, T* __restrict__ y,
                   float* __restrict__ rstd_g, float* __restrict__ rstd_a, int64_t rows, int64_t D, float eps) {
  extern __shared__ float scratch[];
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    float sg = 0.f, sa = 0.f;
    if (active)
      NATSL_FOR_ROW_VEC(j, D, VEC) {
        float a[VEC], b[VEC];
        load_vec<T, VEC>(og + off + j, a);
        load_vec<T, VEC>(oa + off + j, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          sg += a[k] * a[k];
          sa += b[k] * b[k];
        }
      }
    sg = row_sum(sg, scratch);
    sa = row_sum(sa, scratch);
    if (!active) continue;
    const float rg = mix::rstd_of(sg, D, eps), ra = mix::rstd_of(sa, D, eps);
    if (threadIdx.x == 0) {
      rstd_g[r] = rg;
      rstd_a[r] = ra;
    }
    float w0, w1;
    softmax2(to_f32(wl[2 * r]), to_f32(wl[2 * r + 1]), w0, w1);
    NATSL_FOR_ROW_VEC(j, D, VEC) {
      float a[VEC], b[VEC], zz[VEC], wg[VEC], wa[VEC], o[VEC];
      load_vec<T, VEC>(og + off + j, a);
      load_vec<T, VEC>(oa + off + j, b);
      load_vec<T, VEC>(z + off + j, zz);
      load_vec<T, VEC>(gg + j, wg);
      load_vec<T, VEC>(ga + j, wa);
      mix::mixed_output(a, b, zz, wg, wa, rg, ra, w0, w1, o);
      store_vec<T, VEC>(y + off + j, o);
    }
  }
}

// pg, pa (may be null): [gridDim.x * blockDim.y, D] f32 partial rows of dgamma_g / dgamma_a (PartialRow: REG keeps
// the sums in registers, else they go into the zeroed rows in memory).
template <class T, int VEC, bool REG>
__global__ void __launch_bounds__(1024)
    mix_bwd_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                   const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                   const float* __restrict__ rstd_g, const float* __restrict__ rstd_a, const T* __restrict__ dy,
                   T* __restrict__ dog, T* __restrict__ doa, T* __restrict__ dwl, T* __restrict__ dz,
                   float* __restrict__ pg, float* __restrict__ pa, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  const int64_t slot = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  PartialRow<VEC, REG> part_g(pg ? pg + slot * D : nullptr), part_a(pa ? pa + slot * D : nullptr);
  // The six inputs at vector j of the row at off (og, oa, z, dy; gamma_g, gamma_a).
  auto load = [&](int64_t off, int64_t j, float (&a)[VEC], float (&b)[VEC], float (&zz)[VEC], float (&g)[VEC],
                  float (&wg)[VEC], float (&wa)[VEC]) {
    load_vec<T, VEC>(og + off + j, a);
    load_vec<T, VEC>(oa + off + j, b);
    load_vec<T, VEC>(z + off + j, zz);
    load_vec<T, VEC>(dy + off + j, g);
    load_vec<T, VEC>(gg + j, wg);
    load_vec<T, VEC>(ga + j, wa);
  };
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    const float rg = active ? rstd_g[r] : 0.f, ra = active ? rstd_a[r] : 0.f;
    float dw0 = 0.f, dw1 = 0.f;  // <du, g_hat>, <du, a_hat>
    if (active)
      NATSL_FOR_ROW_VEC(j, D, VEC) {
        float a[VEC], b[VEC], zz[VEC], g[VEC], wg[VEC], wa[VEC];
        load(off, j, a, b, zz, g, wg, wa);
        mix::add_row_dots(a, b, zz, g, wg, wa, rg, ra, dw0, dw1);
      }
    dw0 = row_sum(dw0, scratch);
    dw1 = row_sum(dw1, scratch);
    if (!active) continue;
    float w0, w1, cg, ca;
    mix::router_grad(to_f32(wl[2 * r]), to_f32(wl[2 * r + 1]), dwl, r, dw0, dw1, D, threadIdx.x == 0, w0, w1, cg, ca);
    NATSL_FOR_ROW_VEC(j, D, VEC) {
      float a[VEC], b[VEC], zz[VEC], g[VEC], wg[VEC], wa[VEC], o_g[VEC], o_a[VEC], o_z[VEC];
      load(off, j, a, b, zz, g, wg, wa);
      mix::outputs(a, b, zz, g, wg, wa, rg, ra, w0, w1, cg, ca, o_g, o_a, o_z, j, part_g, part_a);
      store_vec<T, VEC>(dog + off + j, o_g);
      store_vec<T, VEC>(doa + off + j, o_a);
      store_vec<T, VEC>(dz + off + j, o_z);
    }
  }
  part_g.finish(D);
  part_a.finish(D);
}

// Gated DeltaNet's output norm (norm_gate, kernels/mix_norm_gate.h): the one-input case of the kernels above.
// Its per-element arithmetic, shared by the two-pass kernels and the one-pass ones (rows of at most one vector per
// thread in blocks of at most mix::kOnePassThreads threads: the row's loads stay in registers between the row sum
// and the outputs, so o, z and dy cross memory once): the same expressions, so the same bits. One vector:
// a = o, zz = z, g = dy, wg = gamma, rs = the row's rstd.
namespace ng {

template <int VEC>
__device__ __forceinline__ void out(const float (&a)[VEC], const float (&zz)[VEC], const float (&wg)[VEC], float rs,
                                    float (&y)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) y[k] = a[k] * rs * wg[k] * (zz[k] * sigmoid_f(zz[k]));
}

// The backward's row dot: c += <du gamma, n> over the vector (du = dy silu(z), n = o rstd).
template <int VEC>
__device__ __forceinline__ void add_dot(const float (&a)[VEC], const float (&zz)[VEC], const float (&g)[VEC],
                                        const float (&wg)[VEC], float rs, float& c) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) c = __fmaf_rn(g[k] * (zz[k] * sigmoid_f(zz[k])) * wg[k], a[k] * rs, c);
}

// After the row dot (c = <du gamma, n> / D): the vector's do, dz and its dgamma terms (column j; Part: PartialRow
// or mix::LaneSums).
template <int VEC, class Part>
__device__ __forceinline__ void grads(const float (&a)[VEC], const float (&zz)[VEC], const float (&g)[VEC],
                                      const float (&wg)[VEC], float rs, float c, float (&o_o)[VEC],
                                      float (&o_z)[VEC], int64_t j, Part& part) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float s = sigmoid_f(zz[k]);
    const float n = a[k] * rs;
    const float du = g[k] * (zz[k] * s);
    o_z[k] = g[k] * n * wg[k] * s * __fmaf_rn(zz[k], 1.f - s, 1.f);
    o_o[k] = rs * __fmaf_rn(-n, c, du * wg[k]);  // rounded as written (mix_norm_gate.cuh, before rstd_of)
    part.add(j, k, du * n);
  }
}

}  // namespace ng

template <class T, int VEC>
__global__ void __launch_bounds__(1024)
    ng_fwd_kernel(const T* __restrict__ o, const T* __restrict__ z, const T* __restrict__ gg, T* __restrict__ y,
                  float* __restrict__ rstd, int64_t rows, int64_t D, float eps) {
  extern __shared__ float scratch[];
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    float ss = 0.f;
    if (active) NATSL_FOR_ROW_VEC(j, D, VEC) add_squares<T, VEC>(o + off + j, ss);
    ss = row_sum(ss, scratch);
    if (!active) continue;
    const float rs = mix::rstd_of(ss, D, eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    NATSL_FOR_ROW_VEC(j, D, VEC) {
      float a[VEC], zz[VEC], wg[VEC], out[VEC];
      load_vec<T, VEC>(o + off + j, a);
      load_vec<T, VEC>(z + off + j, zz);
      load_vec<T, VEC>(gg + j, wg);
      ng::out(a, zz, wg, rs, out);
      store_vec<T, VEC>(y + off + j, out);
    }
  }
}

// The forward in one pass (rows of at most one vector per thread, blocks of at most mix::kOnePassThreads).
template <class T, int VEC>
__global__ void __launch_bounds__(mix::kOnePassThreads)
    ng_fwd_onepass_kernel(const T* __restrict__ o, const T* __restrict__ z, const T* __restrict__ gg,
                          T* __restrict__ y, float* __restrict__ rstd, int64_t rows, int64_t D, float eps) {
  extern __shared__ float scratch[];
  const int64_t j = int64_t(threadIdx.x) * VEC;  // this thread's one vector of every row
  const bool mine = j < D;
  float wg[VEC];
  if (mine) load_vec<T, VEC>(gg + j, wg);
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    float a[VEC], zz[VEC];
    float ss = 0.f;
    if (active && mine) {
      load_vec<T, VEC>(o + off + j, a);
      load_vec<T, VEC>(z + off + j, zz);
#pragma unroll
      for (int k = 0; k < VEC; ++k) ss += a[k] * a[k];  // add_squares' order
    }
    ss = row_sum(ss, scratch);
    if (!active) continue;
    const float rs = mix::rstd_of(ss, D, eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    if (!mine) continue;
    float out[VEC];
    ng::out(a, zz, wg, rs, out);
    store_vec<T, VEC>(y + off + j, out);
  }
}

// pg (may be null): [gridDim.x * blockDim.y, D] f32 partial rows of dgamma (PartialRow, as mix_bwd_kernel's).
template <class T, int VEC, bool REG>
__global__ void __launch_bounds__(1024)
    ng_bwd_kernel(const T* __restrict__ o, const T* __restrict__ z, const T* __restrict__ gg,
                  const float* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dO, T* __restrict__ dz,
                  float* __restrict__ pg, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  const int64_t slot = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  PartialRow<VEC, REG> part(pg ? pg + slot * D : nullptr);
  auto load = [&](int64_t off, int64_t j, float (&a)[VEC], float (&zz)[VEC], float (&g)[VEC], float (&wg)[VEC]) {
    load_vec<T, VEC>(o + off + j, a);
    load_vec<T, VEC>(z + off + j, zz);
    load_vec<T, VEC>(dy + off + j, g);
    load_vec<T, VEC>(gg + j, wg);
  };
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    const float rs = active ? rstd[r] : 0.f;
    float c = 0.f;  // <du gamma, n>
    if (active)
      NATSL_FOR_ROW_VEC(j, D, VEC) {
        float a[VEC], zz[VEC], g[VEC], wg[VEC];
        load(off, j, a, zz, g, wg);
        ng::add_dot(a, zz, g, wg, rs, c);
      }
    c = row_sum(c, scratch);
    if (!active) continue;
    c /= float(D);
    NATSL_FOR_ROW_VEC(j, D, VEC) {
      float a[VEC], zz[VEC], g[VEC], wg[VEC], o_o[VEC], o_z[VEC];
      load(off, j, a, zz, g, wg);
      ng::grads(a, zz, g, wg, rs, c, o_o, o_z, j, part);
      store_vec<T, VEC>(dO + off + j, o_o);
      store_vec<T, VEC>(dz + off + j, o_z);
    }
  }
  part.finish(D);
}

// The backward in one pass (rows of at most one vector per thread, blocks of at most mix::kOnePassThreads; the
// dgamma sums in registers).
template <class T, int VEC>
__global__ void __launch_bounds__(mix::kOnePassThreads)
    ng_bwd_onepass_kernel(const T* __restrict__ o, const T* __restrict__ z, const T* __restrict__ gg,
                          const float* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dO,
                          T* __restrict__ dz, float* __restrict__ pg, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  const int64_t slot = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  PartialRow<VEC, true> part(pg ? pg + slot * D : nullptr);
  const int64_t j = int64_t(threadIdx.x) * VEC;  // this thread's one vector of every row
  const bool mine = j < D;
  float wg[VEC];
  if (mine) load_vec<T, VEC>(gg + j, wg);
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    const float rs = active ? rstd[r] : 0.f;
    float a[VEC], zz[VEC], g[VEC];
    float c = 0.f;  // <du gamma, n>
    if (active && mine) {
      load_vec<T, VEC>(o + off + j, a);
      load_vec<T, VEC>(z + off + j, zz);
      load_vec<T, VEC>(dy + off + j, g);
      ng::add_dot(a, zz, g, wg, rs, c);
    }
    c = row_sum(c, scratch);
    if (!active || !mine) continue;
    c /= float(D);
    float o_o[VEC], o_z[VEC];
    ng::grads(a, zz, g, wg, rs, c, o_o, o_z, j, part);
    store_vec<T, VEC>(dO + off + j, o_o);
    store_vec<T, VEC>(dz + off + j, o_z);
  }
  part.finish(D);
}

// ---- short rows (mix::kShortThreads, the layout in kernels/cuda/mix_norm_gate.cuh) ----
// Each kernel grid-strides over groups of RPG rows; a warp runs a pass while any of its lane groups has a row left (a
// warp vote: the same passes for all its lanes, so every lane reaches every warp_group_sum, which names the whole
// warp); a group past the end loads zeros and stores nothing. Each lane's columns are the same on every row, so the
// gammas are read once per thread. The per-element arithmetic is the row kernels' (mix::, ng::), the row sums add in
// their order (mix::onepass_row_sum's comment), so every output but dgamma has their bits.

// The mixing forward in one pass: og, oa and z loaded once.
template <class T, int TPR, int NV, int RPG>
__global__ void __launch_bounds__(mix::kShortThreads, 2)
    mix_fwd_short_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                         const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                         T* __restrict__ y, float* __restrict__ rstd_g, float* __restrict__ rstd_a, int64_t rows,
                         int64_t D, float eps) {
  constexpr int VEC = kVec<T>;
  const int lane = threadIdx.x % TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * (blockDim.x / TPR);
  const int64_t group = int64_t(blockIdx.x) * (blockDim.x / TPR) + threadIdx.x / TPR;
  const int64_t nvec = D / VEC;
  uint4 rw_g[1][NV], rw_a[1][NV];  // this lane's columns of gamma_g, gamma_a
  mix::load_short_raw<T, TPR, NV, 1>(gg, 0, 1, D, lane, rw_g);
  mix::load_short_raw<T, TPR, NV, 1>(ga, 0, 1, D, lane, rw_a);
  for (int64_t r0 = group * RPG; __any_sync(0xffffffffu, r0 < rows); r0 += groups_per_grid * RPG) {
    uint4 ra_g[RPG][NV], ra_a[RPG][NV], ra_z[RPG][NV];
    mix::load_short_raw<T, TPR, NV, RPG>(og, r0, rows, D, lane, ra_g);
    mix::load_short_raw<T, TPR, NV, RPG>(oa, r0, rows, D, lane, ra_a);
    mix::load_short_raw<T, TPR, NV, RPG>(z, r0, rows, D, lane, ra_z);
    float l0[RPG], l1[RPG];  // the rows' mixing logits, loaded with the rows
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      const bool in = r0 + q < rows;
      l0[q] = in ? to_f32(wl[2 * (r0 + q)]) : 0.f;
      l1[q] = in ? to_f32(wl[2 * (r0 + q) + 1]) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      float sg = 0.f, sa = 0.f;  // mix_fwd_kernel's per-thread order: vectors in order, k in order
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        float a[VEC], b[VEC];
        unpack_vec<T, VEC>(ra_g[q][n], a);
        unpack_vec<T, VEC>(ra_a[q][n], b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          sg += a[k] * a[k];
          sa += b[k] * b[k];
        }
      }
      sg = warp_group_sum<TPR>(sg);
      sa = warp_group_sum<TPR>(sa);
      const int64_t r = r0 + q;
      if (r >= rows) continue;
      const float rg = mix::rstd_of(sg, D, eps), ra = mix::rstd_of(sa, D, eps);
      if (lane == 0) {
        rstd_g[r] = rg;
        rstd_a[r] = ra;
      }
      float w0, w1;
      softmax2(l0[q], l1[q], w0, w1);
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float a[VEC], b[VEC], zz[VEC], wg[VEC], wa[VEC], o[VEC];
        unpack_vec<T, VEC>(ra_g[q][n], a);
        unpack_vec<T, VEC>(ra_a[q][n], b);
        unpack_vec<T, VEC>(ra_z[q][n], zz);
        unpack_vec<T, VEC>(rw_g[0][n], wg);
        unpack_vec<T, VEC>(rw_a[0][n], wa);
        mix::mixed_output(a, b, zz, wg, wa, rg, ra, w0, w1, o);
        store_vec<T, VEC>(y + r * D + vi * VEC, o);
      }
    }
  }
}

// The mixing backward in one pass: og, oa, z and dy loaded once. dgamma_g / dgamma_a: each lane sums its columns'
// terms over its rows in registers (mix::LaneSums), then mix::block_partial_row adds the block's lane groups in slot
// order into the block's partial rows pg[blockIdx.x], pa[blockIdx.x] ([gridDim.x, D] f32 each; null: not wanted),
// through the dynamic shared memory ([mix::kShortThreads / TPR, D] f32, reused for the two).
template <class T, int TPR, int NV, int RPG>
__global__ void __launch_bounds__(mix::kShortThreads, 2)
    mix_bwd_short_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                         const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                         const float* __restrict__ rstd_g, const float* __restrict__ rstd_a, const T* __restrict__ dy,
                         T* __restrict__ dog, T* __restrict__ doa, T* __restrict__ dwl, T* __restrict__ dz,
                         float* __restrict__ pg, float* __restrict__ pa, int64_t rows, int64_t D) {
  constexpr int VEC = kVec<T>;
  extern __shared__ float sm_dgamma[];
  const int lane = threadIdx.x % TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * (blockDim.x / TPR);
  const int64_t group = int64_t(blockIdx.x) * (blockDim.x / TPR) + threadIdx.x / TPR;
  const int64_t nvec = D / VEC;
  uint4 rw_g[1][NV], rw_a[1][NV];  // this lane's columns of gamma_g, gamma_a
  mix::load_short_raw<T, TPR, NV, 1>(gg, 0, 1, D, lane, rw_g);
  mix::load_short_raw<T, TPR, NV, 1>(ga, 0, 1, D, lane, rw_a);
  mix::LaneSums<VEC> sum_g[NV], sum_a[NV];  // vector n's dgamma_g, dgamma_a terms over this lane's rows
#pragma unroll
  for (int n = 0; n < NV; ++n) {
    sum_g[n].zero();
    sum_a[n].zero();
  }
  for (int64_t r0 = group * RPG; __any_sync(0xffffffffu, r0 < rows); r0 += groups_per_grid * RPG) {
    uint4 ra_g[RPG][NV], ra_a[RPG][NV], ra_z[RPG][NV], ra_d[RPG][NV];
    mix::load_short_raw<T, TPR, NV, RPG>(og, r0, rows, D, lane, ra_g);
    mix::load_short_raw<T, TPR, NV, RPG>(oa, r0, rows, D, lane, ra_a);
    mix::load_short_raw<T, TPR, NV, RPG>(z, r0, rows, D, lane, ra_z);
    mix::load_short_raw<T, TPR, NV, RPG>(dy, r0, rows, D, lane, ra_d);
    // Row q's vector n of og, oa, z, dy and this lane's gamma_g, gamma_a, as f32.
    auto unpack = [&](int q, int n, float (&a)[VEC], float (&b)[VEC], float (&zz)[VEC], float (&g)[VEC],
                      float (&wg)[VEC], float (&wa)[VEC]) {
      unpack_vec<T, VEC>(ra_g[q][n], a);
      unpack_vec<T, VEC>(ra_a[q][n], b);
      unpack_vec<T, VEC>(ra_z[q][n], zz);
      unpack_vec<T, VEC>(ra_d[q][n], g);
      unpack_vec<T, VEC>(rw_g[0][n], wg);
      unpack_vec<T, VEC>(rw_a[0][n], wa);
    };
    float rgs[RPG], ras[RPG], l0[RPG], l1[RPG];  // the rows' rstd and logits, loaded with the rows
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      const bool in = r0 + q < rows;
      rgs[q] = in ? rstd_g[r0 + q] : 0.f;
      ras[q] = in ? rstd_a[r0 + q] : 0.f;
      l0[q] = in ? to_f32(wl[2 * (r0 + q)]) : 0.f;
      l1[q] = in ? to_f32(wl[2 * (r0 + q) + 1]) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      const float rg = rgs[q], ra = ras[q];
      float dw0v[NV], dw1v[NV];  // <du, g_hat>, <du, a_hat> over this lane's vector n
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        float a[VEC], b[VEC], zz[VEC], g[VEC], wg[VEC], wa[VEC];
        unpack(q, n, a, b, zz, g, wg, wa);
        dw0v[n] = dw1v[n] = 0.f;
        mix::add_row_dots(a, b, zz, g, wg, wa, rg, ra, dw0v[n], dw1v[n]);
      }
      const float dw0 = mix::onepass_row_sum<TPR, NV>(dw0v), dw1 = mix::onepass_row_sum<TPR, NV>(dw1v);
      const int64_t r = r0 + q;
      if (r >= rows) continue;
      float w0, w1, cg, ca;
      mix::router_grad(l0[q], l1[q], dwl, r, dw0, dw1, D, lane == 0, w0, w1, cg, ca);
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float a[VEC], b[VEC], zz[VEC], g[VEC], wg[VEC], wa[VEC], o_g[VEC], o_a[VEC], o_z[VEC];
        unpack(q, n, a, b, zz, g, wg, wa);
        mix::outputs(a, b, zz, g, wg, wa, rg, ra, w0, w1, cg, ca, o_g, o_a, o_z, vi * VEC, sum_g[n], sum_a[n]);
        const int64_t off = r * D + vi * VEC;
        store_vec<T, VEC>(dog + off, o_g);
        store_vec<T, VEC>(doa + off, o_a);
        store_vec<T, VEC>(dz + off, o_z);
      }
    }
  }
  mix::block_partial_row<VEC, TPR, NV>(sum_g, sm_dgamma, pg, D);
  mix::block_partial_row<VEC, TPR, NV>(sum_a, sm_dgamma, pa, D);
}

// The gated output norm forward in one pass: o and z loaded once.
template <class T, int TPR, int NV, int RPG>
__global__ void __launch_bounds__(mix::kShortThreads, 2)
    ng_fwd_short_kernel(const T* __restrict__ o, const T* __restrict__ z, const T* __restrict__ gg, T* __restrict__ y,
                        float* __restrict__ rstd, int64_t rows, int64_t D, float eps) {
  constexpr int VEC = kVec<T>;
  const int lane = threadIdx.x % TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * (blockDim.x / TPR);
  const int64_t group = int64_t(blockIdx.x) * (blockDim.x / TPR) + threadIdx.x / TPR;
  const int64_t nvec = D / VEC;
  uint4 rw[1][NV];  // this lane's columns of gamma
  mix::load_short_raw<T, TPR, NV, 1>(gg, 0, 1, D, lane, rw);
  for (int64_t r0 = group * RPG; __any_sync(0xffffffffu, r0 < rows); r0 += groups_per_grid * RPG) {
    uint4 ra_o[RPG][NV], ra_z[RPG][NV];
    mix::load_short_raw<T, TPR, NV, RPG>(o, r0, rows, D, lane, ra_o);
    mix::load_short_raw<T, TPR, NV, RPG>(z, r0, rows, D, lane, ra_z);
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      float ss = 0.f;  // add_squares' order: vectors in order, k in order
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        float a[VEC];
        unpack_vec<T, VEC>(ra_o[q][n], a);
#pragma unroll
        for (int k = 0; k < VEC; ++k) ss += a[k] * a[k];
      }
      ss = warp_group_sum<TPR>(ss);
      const int64_t r = r0 + q;
      if (r >= rows) continue;
      const float rs = mix::rstd_of(ss, D, eps);
      if (lane == 0) rstd[r] = rs;
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float a[VEC], zz[VEC], wg[VEC], out[VEC];
        unpack_vec<T, VEC>(ra_o[q][n], a);
        unpack_vec<T, VEC>(ra_z[q][n], zz);
        unpack_vec<T, VEC>(rw[0][n], wg);
        ng::out(a, zz, wg, rs, out);
        store_vec<T, VEC>(y + r * D + vi * VEC, out);
      }
    }
  }
}

// The gated output norm backward in one pass: o, z and dy loaded once; dgamma as mix_bwd_short_kernel's (pg: the
// blocks' partial rows, [gridDim.x, D] f32, or null).
template <class T, int TPR, int NV, int RPG>
__global__ void __launch_bounds__(mix::kShortThreads, 2)
    ng_bwd_short_kernel(const T* __restrict__ o, const T* __restrict__ z, const T* __restrict__ gg,
                        const float* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dO,
                        T* __restrict__ dz, float* __restrict__ pg, int64_t rows, int64_t D) {
  constexpr int VEC = kVec<T>;
  extern __shared__ float sm_dgamma[];
  const int lane = threadIdx.x % TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * (blockDim.x / TPR);
  const int64_t group = int64_t(blockIdx.x) * (blockDim.x / TPR) + threadIdx.x / TPR;
  const int64_t nvec = D / VEC;
  uint4 rw[1][NV];  // this lane's columns of gamma
  mix::load_short_raw<T, TPR, NV, 1>(gg, 0, 1, D, lane, rw);
  mix::LaneSums<VEC> sums[NV];  // vector n's dgamma terms over this lane's rows
#pragma unroll
  for (int n = 0; n < NV; ++n) sums[n].zero();
  for (int64_t r0 = group * RPG; __any_sync(0xffffffffu, r0 < rows); r0 += groups_per_grid * RPG) {
    uint4 ra_o[RPG][NV], ra_z[RPG][NV], ra_d[RPG][NV];
    mix::load_short_raw<T, TPR, NV, RPG>(o, r0, rows, D, lane, ra_o);
    mix::load_short_raw<T, TPR, NV, RPG>(z, r0, rows, D, lane, ra_z);
    mix::load_short_raw<T, TPR, NV, RPG>(dy, r0, rows, D, lane, ra_d);
    // Row q's vector n of o, z, dy and this lane's gamma, as f32.
    auto unpack = [&](int q, int n, float (&a)[VEC], float (&zz)[VEC], float (&g)[VEC], float (&wg)[VEC]) {
      unpack_vec<T, VEC>(ra_o[q][n], a);
      unpack_vec<T, VEC>(ra_z[q][n], zz);
      unpack_vec<T, VEC>(ra_d[q][n], g);
      unpack_vec<T, VEC>(rw[0][n], wg);
    };
    float rss[RPG];  // the rows' rstd, loaded with the rows
#pragma unroll
    for (int q = 0; q < RPG; ++q) rss[q] = r0 + q < rows ? rstd[r0 + q] : 0.f;
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      const float rs = rss[q];
      float cv[NV];  // <du gamma, n> over this lane's vector n
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        float a[VEC], zz[VEC], g[VEC], wg[VEC];
        unpack(q, n, a, zz, g, wg);
        cv[n] = 0.f;
        ng::add_dot(a, zz, g, wg, rs, cv[n]);
      }
      float c = mix::onepass_row_sum<TPR, NV>(cv);
      const int64_t r = r0 + q;
      if (r >= rows) continue;
      c /= float(D);
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float a[VEC], zz[VEC], g[VEC], wg[VEC], o_o[VEC], o_z[VEC];
        unpack(q, n, a, zz, g, wg);
        ng::grads(a, zz, g, wg, rs, c, o_o, o_z, vi * VEC, sums[n]);
        store_vec<T, VEC>(dO + r * D + vi * VEC, o_o);
        store_vec<T, VEC>(dz + r * D + vi * VEC, o_z);
      }
    }
  }
  mix::block_partial_row<VEC, TPR, NV>(sums, sm_dgamma, pg, D);
}

// Rows per lane group in flight: the forward two rows of one vector a lane (RPG 4 and 2 were measured in the kernel
// lab at natsl-340m's mixing shape: 2 was faster), one for wider rows; the backward keeps four tensors' vectors and
// the dgamma sums: two rows of one vector, one of more.
template <int NV> constexpr int kShortFwdRpg = NV >= 2 ? 1 : 2;
template <int NV> constexpr int kShortBwdRpg = NV >= 2 ? 1 : 2;

// Runs go(Width<TPR>, Width<NV>) with the short-row layout for 16-byte aligned (`vec`) rows of D elements of T that
// the plan sends to the short-row kernels (at most MAX_VECS vectors: kMixNormGateShortRowVecsFwd / Bwd); false (go
// not called) for the others, which take the row kernels.
template <class T, int64_t MAX_VECS, class Go>
bool short_rows(const MixNormGatePlan& plan, bool vec, int64_t D, Go&& go) {
  static_assert(MAX_VECS == 8 || MAX_VECS == 16 || MAX_VECS == 32 || MAX_VECS == 64 || MAX_VECS == 128,
                "a width of dispatch_short_rows");
  const int64_t nvec = D / kVec<T>;
  if (!plan.short_rows || !vec || nvec > MAX_VECS) return false;
  return dispatch_short_rows(nvec, [&](auto tpr, auto nv) {
    constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value;
    if constexpr (NV * TPR <= MAX_VECS) go(tpr, nv);  // no kernel instantiated for wider rows
  });
}

}  // namespace

void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,
                       const Tensor& rstd_g, const Tensor& rstd_a) {
  mix_norm_gate_fwd(og, oa, wlogits, z, gamma_g, gamma_a, eps, y, rstd_g, rstd_a, MixNormGatePlan{});
}

void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,
                       const Tensor& rstd_g, const Tensor& rstd_a, const MixNormGatePlan& plan) {
  const auto [D, rows, dev, s] = row_op(og, og.size(-1));
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(og.dtype(), "mix_norm_gate_fwd", T, [&] {
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(og) && aligned16(oa) && aligned16(z) && aligned16(gamma_g) &&
                     aligned16(gamma_a) && aligned16(y);
    auto args = [&](auto kernel, dim3 grid, dim3 block, size_t smem) {
      kernel<<<grid, block, smem, s>>>(cptr<T>(og), cptr<T>(oa), cptr<T>(wlogits), cptr<T>(z), cptr<T>(gamma_g),
                                       cptr<T>(gamma_a), mptr<T>(y), rstd_g.data<float>(), rstd_a.data<float>(), rows,
                                       D, float(eps));
    };
    const bool short_taken = short_rows<T, kMixNormGateShortRowVecsFwd>(plan, vec, D, [&](auto tpr, auto nv) {
      constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = kShortFwdRpg<NV>;
      auto kernel = mix_fwd_short_kernel<T, TPR, NV, RPG>;
      args(kernel, dim3(unsigned(mix::short_rows_grid(kernel, dev, rows, RPG, TPR, 0))), dim3(mix::kShortThreads), 0);
    });
    if (!short_taken)
      launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
        args(mix_fwd_kernel<T, decltype(width)::value>, g.grid, g.block, g.smem);
      });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a,
                       const Tensor& dy, const Tensor& dog, const Tensor& doa, const Tensor& dwlogits,
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a, bool accumulate_dgamma) {
  mix_norm_gate_bwd(og, oa, wlogits, z, gamma_g, gamma_a, rstd_g, rstd_a, dy, dog, doa, dwlogits, dz, dgamma_g,
                    dgamma_a, MixNormGatePlan{}, accumulate_dgamma);
}

void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a,
                       const Tensor& dy, const Tensor& dog, const Tensor& doa, const Tensor& dwlogits,
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a, const MixNormGatePlan& plan,
                       bool accumulate_dgamma) {
  const bool acc = accumulate_dgamma;
  for (const Tensor* t : {&dgamma_g, &dgamma_a}) check_weight_grad(og, *t, "mix_norm_gate_bwd");
  const auto [D, rows, dev, s] = row_op(og, og.size(-1));
  if (rows == 0) {  // no rows: a zero gradient, which adds nothing to an accumulated one
    if (dgamma_g.defined() && !acc) dgamma_g.zero_();
    if (dgamma_a.defined() && !acc) dgamma_a.zero_();
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(og.dtype(), "mix_norm_gate_bwd", T, [&] {
    constexpr int V = kVec<T>;
    bool vec = D % V == 0;
    for (const Tensor* t : {&og, &oa, &z, &gamma_g, &gamma_a, &dy, &dog, &doa, &dz}) vec = vec && aligned16(*t);
    // The wanted dgammas' partial rows ([groups, D] f32 each, one tensor), pg / pa into it (else null).
    Tensor partial;
    float *pg = nullptr, *pa = nullptr;
    auto partials = [&](int64_t groups, bool zeroed) {
      const int64_t parts = int64_t(dgamma_g.defined()) + int64_t(dgamma_a.defined());
      if (parts == 0) return;
      partial = scratch_f32(parts * groups * D, og.device());
      if (zeroed) NATSL_CUDA_CHECK(cudaMemsetAsync(partial.data_ptr(), 0, partial.nbytes(), s));
      float* p = partial.data<float>();
      if (dgamma_g.defined()) {
        pg = p;
        p += groups * D;
      }
      if (dgamma_a.defined()) pa = p;
    };
    auto launch = [&](auto kernel, dim3 grid, dim3 block, size_t smem) {
      kernel<<<grid, block, smem, s>>>(cptr<T>(og), cptr<T>(oa), cptr<T>(wlogits), cptr<T>(z), cptr<T>(gamma_g),
                                       cptr<T>(gamma_a), rstd_g.data<float>(), rstd_a.data<float>(), cptr<T>(dy),
                                       mptr<T>(dog), mptr<T>(doa), mptr<T>(dwlogits), mptr<T>(dz), pg, pa, rows, D);
      NATSL_CUDA_CHECK_LAUNCH();
    };
    const bool short_taken = short_rows<T, kMixNormGateShortRowVecsBwd>(plan, vec, D, [&](auto tpr, auto nv) {
      constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = kShortBwdRpg<NV>;
      auto kernel = mix_bwd_short_kernel<T, TPR, NV, RPG>;
      const size_t smem = size_t(mix::kShortThreads / TPR) * size_t(D) * sizeof(float);  // 8 KB at most
      const int grid = mix::short_rows_grid(kernel, dev, rows, RPG, TPR, smem);
      partials(grid, false);  // every entry written by the kernel
      launch(kernel, dim3(unsigned(grid)), dim3(mix::kShortThreads), smem);
      // Hundreds of partial rows: 32 slices (as the RMSNorm backward).
      if (pg) column_sum<32>(pg, grid, D, dgamma_g, s, acc);
      if (pa) column_sum<32>(pa, grid, D, dgamma_a, s, acc);
    });
    if (short_taken) return;
    // One vector per thread per row: wide blocks, so few partial rows; rows that fit 256 threads take the one-pass
    // kernel, wider ones that fit a block the two-pass kernel with the sums in registers, the rest the general one.
    launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
      constexpr int W = decltype(width)::value;
      const int64_t groups = int64_t(g.grid.x) * g.block.y;
      const bool reg = partial_rows_in_registers(g, D, W);
      partials(groups, !reg);  // registers: every entry written by the kernel
      if (one_pass_rows(g, D, W)) launch(mix::bwd_onepass_kernel<T, W, true>, g.grid, g.block, g.smem);
      else if (reg) launch(mix_bwd_kernel<T, W, true>, g.grid, g.block, g.smem);
      else launch(mix_bwd_kernel<T, W, false>, g.grid, g.block, g.smem);
      if (pg) column_sum(pg, groups, D, dgamma_g, s, acc);
      if (pa) column_sum(pa, groups, D, dgamma_a, s, acc);
    }, 1);
  });
}

void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                   const Tensor& rstd) {
  norm_gate_fwd(o, z, gamma, eps, y, rstd, MixNormGatePlan{});
}

void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                   const Tensor& rstd, const MixNormGatePlan& plan) {
  const auto [D, rows, dev, s] = row_op(o, o.size(-1));
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(o.dtype(), "norm_gate_fwd", T, [&] {
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(o) && aligned16(z) && aligned16(gamma) && aligned16(y);
    auto launch = [&](auto kernel, dim3 grid, dim3 block, size_t smem) {
      kernel<<<grid, block, smem, s>>>(cptr<T>(o), cptr<T>(z), cptr<T>(gamma), mptr<T>(y), rstd.data<float>(), rows,
                                       D, float(eps));
    };
    const bool short_taken = short_rows<T, kMixNormGateShortRowVecsFwd>(plan, vec, D, [&](auto tpr, auto nv) {
      constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = kShortFwdRpg<NV>;
      auto kernel = ng_fwd_short_kernel<T, TPR, NV, RPG>;
      launch(kernel, dim3(unsigned(mix::short_rows_grid(kernel, dev, rows, RPG, TPR, 0))), dim3(mix::kShortThreads), 0);
    });
    if (short_taken) return;
    launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
      constexpr int W = decltype(width)::value;
      // Rows of one vector per thread (the grid's own layout, so the row sums add in the two-pass order) in
      // blocks the one-pass bound allows take the one-pass kernel.
      if (one_pass_rows(g, D, W)) launch(ng_fwd_onepass_kernel<T, W>, g.grid, g.block, g.smem);
      else launch(ng_fwd_kernel<T, W>, g.grid, g.block, g.smem);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                   const Tensor& do_, const Tensor& dz, const Tensor& dgamma, bool accumulate_dgamma) {
  norm_gate_bwd(o, z, gamma, rstd, dy, do_, dz, dgamma, MixNormGatePlan{}, accumulate_dgamma);
}

void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                   const Tensor& do_, const Tensor& dz, const Tensor& dgamma, const MixNormGatePlan& plan,
                   bool accumulate_dgamma) {
  const bool acc = accumulate_dgamma;
  check_weight_grad(o, dgamma, "norm_gate_bwd");
  const auto [D, rows, dev, s] = row_op(o, o.size(-1));
  if (rows == 0) {  // no rows: a zero gradient, which adds nothing to an accumulated one
    if (dgamma.defined() && !acc) dgamma.zero_();
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(o.dtype(), "norm_gate_bwd", T, [&] {
    constexpr int V = kVec<T>;
    bool vec = D % V == 0;
    for (const Tensor* t : {&o, &z, &gamma, &dy, &do_, &dz}) vec = vec && aligned16(*t);
    Tensor partial;
    float* pg = nullptr;
    auto launch = [&](auto kernel, dim3 grid, dim3 block, size_t smem) {
      kernel<<<grid, block, smem, s>>>(cptr<T>(o), cptr<T>(z), cptr<T>(gamma), rstd.data<float>(), cptr<T>(dy),
                                       mptr<T>(do_), mptr<T>(dz), pg, rows, D);
      NATSL_CUDA_CHECK_LAUNCH();
    };
    const bool short_taken = short_rows<T, kMixNormGateShortRowVecsBwd>(plan, vec, D, [&](auto tpr, auto nv) {
      constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = kShortBwdRpg<NV>;
      auto kernel = ng_bwd_short_kernel<T, TPR, NV, RPG>;
      const size_t smem = size_t(mix::kShortThreads / TPR) * size_t(D) * sizeof(float);  // 8 KB at most
      const int grid = mix::short_rows_grid(kernel, dev, rows, RPG, TPR, smem);
      if (dgamma.defined()) {
        partial = scratch_f32(int64_t(grid) * D, o.device());  // every entry written by the kernel
        pg = partial.data<float>();
      }
      launch(kernel, dim3(unsigned(grid)), dim3(mix::kShortThreads), smem);
      if (pg) column_sum<32>(pg, grid, D, dgamma, s, acc);
    });
    if (short_taken) return;
    // One vector per thread per row where the row fits a block (the dgamma sums then stay in registers).
    launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
      constexpr int W = decltype(width)::value;
      const int64_t groups = int64_t(g.grid.x) * g.block.y;
      const bool reg = partial_rows_in_registers(g, D, W);
      if (dgamma.defined()) {
        partial = partial_rows(1, g, D, reg, o.device(), s);
        pg = partial.data<float>();
      }
      if (one_pass_rows(g, D, W)) launch(ng_bwd_onepass_kernel<T, W>, g.grid, g.block, g.smem);
      else if (reg) launch(ng_bwd_kernel<T, W, true>, g.grid, g.block, g.smem);
      else launch(ng_bwd_kernel<T, W, false>, g.grid, g.block, g.smem);
      if (pg) column_sum(pg, groups, D, dgamma, s, acc);
    }, 1);
  });
}

}  // namespace natsl::kernels::cuda
