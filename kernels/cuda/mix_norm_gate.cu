// CUDA output mixing of NAtS-L and GDN's gated output norm (kernels/mix_norm_gate.h), row kernels over rows of Dv
// channels (one row = one token and head slot), statistics in f32. The mixing:
//   forward:  rstd_g, rstd_a from two row sums of squares; y = (w0 g_hat + w1 a_hat) * silu(z)
//   backward: two row sums, dw0 = <du, g_hat>, dw1 = <du, a_hat> (du = dy silu(z)); the RMSNorm backward
//             needs nothing more, because sum(w0 du gamma_g n_g) = w0 dw0:
//               dog = rstd_g (w0 du gamma_g - n_g w0 dw0 / Dv)   (n_g = og rstd_g; likewise doa)
//             dgamma: per-(block, row slot) f32 partial rows added in order afterwards (deterministic, as
//             the RMSNorm weight gradient); a slot's sums stay in registers where a row fits the block, and rows
//             of at most 256 threads' vectors are read once (mix::bwd_onepass_kernel, kernels/cuda/mix_norm_gate.cuh).
#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/mix_norm_gate.cuh"
#include "kernels/mix_norm_gate.h"

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
    const float rg = 1.f / sqrtf(sg / float(D) + eps), ra = 1.f / sqrtf(sa / float(D) + eps);
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
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float u = w0 * a[k] * rg * wg[k] + w1 * b[k] * ra * wa[k];
        o[k] = u * zz[k] * sigmoid_f(zz[k]);
      }
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
    mix::router_grad(wl, dwl, r, dw0, dw1, D, w0, w1, cg, ca);
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
  for (int k = 0; k < VEC; ++k) c += g[k] * (zz[k] * sigmoid_f(zz[k])) * wg[k] * (a[k] * rs);
}

// After the row dot (c = <du gamma, n> / D): the vector's do, dz and its dgamma terms (column j).
template <int VEC, bool REG>
__device__ __forceinline__ void grads(const float (&a)[VEC], const float (&zz)[VEC], const float (&g)[VEC],
                                      const float (&wg)[VEC], float rs, float c, float (&o_o)[VEC],
                                      float (&o_z)[VEC], int64_t j, PartialRow<VEC, REG>& part) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float s = sigmoid_f(zz[k]);
    const float n = a[k] * rs;
    const float du = g[k] * (zz[k] * s);
    o_z[k] = g[k] * n * wg[k] * s * (1.f + zz[k] * (1.f - s));
    o_o[k] = rs * (du * wg[k] - n * c);
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
    const float rs = 1.f / sqrtf(ss / float(D) + eps);
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
    const float rs = 1.f / sqrtf(ss / float(D) + eps);
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

}  // namespace

void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,
                       const Tensor& rstd_g, const Tensor& rstd_a) {
  const auto [D, rows, dev, s] = row_op(og, og.size(-1));
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(og.dtype(), "mix_norm_gate_fwd", T, [&] {
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(og) && aligned16(oa) && aligned16(z) && aligned16(gamma_g) &&
                     aligned16(gamma_a) && aligned16(y);
    launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
      mix_fwd_kernel<T, decltype(width)::value><<<g.grid, g.block, g.smem, s>>>(
          cptr<T>(og), cptr<T>(oa), cptr<T>(wlogits), cptr<T>(z), cptr<T>(gamma_g), cptr<T>(gamma_a), mptr<T>(y),
          rstd_g.data<float>(), rstd_a.data<float>(), rows, D, float(eps));
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a,
                       const Tensor& dy, const Tensor& dog, const Tensor& doa, const Tensor& dwlogits,
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a) {
  const auto [D, rows, dev, s] = row_op(og, og.size(-1));
  if (rows == 0) {
    if (dgamma_g.defined()) dgamma_g.zero_();
    if (dgamma_a.defined()) dgamma_a.zero_();
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(og.dtype(), "mix_norm_gate_bwd", T, [&] {
    constexpr int V = kVec<T>;
    bool vec = D % V == 0;
    for (const Tensor* t : {&og, &oa, &z, &gamma_g, &gamma_a, &dy, &dog, &doa, &dz}) vec = vec && aligned16(*t);
    // One vector per thread per row: wide blocks, so few partial rows; rows that fit 256 threads take the one-pass
    // kernel, wider ones that fit a block the two-pass kernel with the sums in registers, the rest the general one.
    launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
      constexpr int W = decltype(width)::value;
      const int64_t groups = int64_t(g.grid.x) * g.block.y;
      const bool reg = partial_rows_in_registers(g, D, W);
      Tensor partial;
      float *pg = nullptr, *pa = nullptr;
      const int64_t parts = int64_t(dgamma_g.defined()) + int64_t(dgamma_a.defined());
      if (parts > 0) {
        partial = partial_rows(parts, g, D, reg, og.device(), s);
        float* p = partial.data<float>();
        if (dgamma_g.defined()) {
          pg = p;
          p += groups * D;
        }
        if (dgamma_a.defined()) pa = p;
      }
      auto launch = [&](auto kernel) {
        kernel<<<g.grid, g.block, g.smem, s>>>(cptr<T>(og), cptr<T>(oa), cptr<T>(wlogits), cptr<T>(z), cptr<T>(gamma_g),
                                               cptr<T>(gamma_a), rstd_g.data<float>(), rstd_a.data<float>(), cptr<T>(dy),
                                               mptr<T>(dog), mptr<T>(doa), mptr<T>(dwlogits), mptr<T>(dz), pg, pa, rows, D);
      };
      if (one_pass_rows(g, D, W)) launch(mix::bwd_onepass_kernel<T, W, true>);
      else if (reg) launch(mix_bwd_kernel<T, W, true>);
      else launch(mix_bwd_kernel<T, W, false>);
      NATSL_CUDA_CHECK_LAUNCH();
      if (pg) column_sum<T>(pg, groups, D, mptr<T>(dgamma_g), dev, s);
      if (pa) column_sum<T>(pa, groups, D, mptr<T>(dgamma_a), dev, s);
    }, 1);
  });
}

void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                   const Tensor& rstd) {
  const auto [D, rows, dev, s] = row_op(o, o.size(-1));
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(o.dtype(), "norm_gate_fwd", T, [&] {
    constexpr int V = kVec<T>;
    const bool vec = D % V == 0 && aligned16(o) && aligned16(z) && aligned16(gamma) && aligned16(y);
    launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
      constexpr int W = decltype(width)::value;
      // Rows of one vector per thread (the grid's own layout, so the row sums add in the two-pass order) in
      // blocks the one-pass bound allows take the one-pass kernel.
      auto launch = [&](auto kernel) {
        kernel<<<g.grid, g.block, g.smem, s>>>(cptr<T>(o), cptr<T>(z), cptr<T>(gamma), mptr<T>(y),
                                               rstd.data<float>(), rows, D, float(eps));
      };
      if (one_pass_rows(g, D, W)) launch(ng_fwd_onepass_kernel<T, W>);
      else launch(ng_fwd_kernel<T, W>);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                   const Tensor& do_, const Tensor& dz, const Tensor& dgamma) {
  const auto [D, rows, dev, s] = row_op(o, o.size(-1));
  if (rows == 0) {
    if (dgamma.defined()) dgamma.zero_();
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(o.dtype(), "norm_gate_bwd", T, [&] {
    constexpr int V = kVec<T>;
    bool vec = D % V == 0;
    for (const Tensor* t : {&o, &z, &gamma, &dy, &do_, &dz}) vec = vec && aligned16(*t);
    // One vector per thread per row where the row fits a block (the dgamma sums then stay in registers).
    launch_rows<V>(vec, dev, rows, D, [&](auto width, const RowGrid& g) {
      constexpr int W = decltype(width)::value;
      const int64_t groups = int64_t(g.grid.x) * g.block.y;
      const bool reg = partial_rows_in_registers(g, D, W);
      Tensor partial;
      float* pg = nullptr;
      if (dgamma.defined()) {
        partial = partial_rows(1, g, D, reg, o.device(), s);
        pg = partial.data<float>();
      }
      auto launch = [&](auto kernel) {
        kernel<<<g.grid, g.block, g.smem, s>>>(cptr<T>(o), cptr<T>(z), cptr<T>(gamma), rstd.data<float>(), cptr<T>(dy),
                                               mptr<T>(do_), mptr<T>(dz), pg, rows, D);
      };
      if (one_pass_rows(g, D, W)) launch(ng_bwd_onepass_kernel<T, W>);
      else if (reg) launch(ng_bwd_kernel<T, W, true>);
      else launch(ng_bwd_kernel<T, W, false>);
      NATSL_CUDA_CHECK_LAUNCH();
      if (pg) column_sum<T>(pg, groups, D, mptr<T>(dgamma), dev, s);
    }, 1);
  });
}

}  // namespace natsl::kernels::cuda
