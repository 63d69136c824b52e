#pragma once
// The per-element arithmetic of the mix_norm_gate backward (kernels/mix_norm_gate.h, kernels/cuda/mix_norm_gate.cu),
// shared by the production kernels and the kernel lab's variants (experiments/kernel_lab/mix_norm_gate), so that a
// variant changes only how the data moves, never the arithmetic (and its bits); and the one-pass backward kernel,
// which the lab instantiates with the dgamma sums in memory. One VEC-wide vector of a row:
// a, b = og, oa; zz = z; g = dy; wg, wa = gamma_g, gamma_a; rg, ra = the row's rstd_g, rstd_a.
#include "kernels/cuda/column_sum.cuh"

namespace natsl::kernels::cuda::mix {

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

// softmax of two logits: w1 = sigmoid(l1 - l0)
__device__ __forceinline__ void softmax2(float l0, float l1, float& w0, float& w1) {
  w1 = 1.f / (1.f + expf(l0 - l1));
  w0 = 1.f - w1;
}

// The row dots' terms: dw0 += <du, g_hat>, dw1 += <du, a_hat> over the vector (du = dy silu(z)).
template <int VEC>
__device__ __forceinline__ void add_row_dots(const float (&a)[VEC], const float (&b)[VEC], const float (&zz)[VEC],
                                             const float (&g)[VEC], const float (&wg)[VEC], const float (&wa)[VEC],
                                             float rg, float ra, float& dw0, float& dw1) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float du = g[k] * zz[k] * sigmoid_f(zz[k]);
    dw0 += du * a[k] * rg * wg[k];
    dw1 += du * b[k] * ra * wa[k];
  }
}

// After the row dots of row r (dw0 = <du, g_hat>, dw1 = <du, a_hat>, summed over the row): the mixing weights w0, w1
// from the row's two router logits wl[2r], wl[2r + 1], their gradient into dwl (thread 0 of the row writes it), and
// the norms' per-row constants cg = w0 dw0 / D, ca = w1 dw1 / D.
template <class T>
__device__ __forceinline__ void router_grad(const T* __restrict__ wl, T* __restrict__ dwl, int64_t r, float dw0,
                                            float dw1, int64_t D, float& w0, float& w1, float& cg, float& ca) {
  softmax2(to_f32(wl[2 * r]), to_f32(wl[2 * r + 1]), w0, w1);
  if (threadIdx.x == 0) {
    const float mean = w0 * dw0 + w1 * dw1;
    dwl[2 * r] = from_f32<T>(w0 * (dw0 - mean));
    dwl[2 * r + 1] = from_f32<T>(w1 * (dw1 - mean));
  }
  cg = w0 * dw0 / float(D);
  ca = w1 * dw1 / float(D);
}

// After the row dots (w0, w1 the mixing weights, cg = w0 dw0 / D, ca = w1 dw1 / D): the vector's dog, doa, dz,
// and its dgamma terms into the partial rows (column j of the row).
template <int VEC, bool REG>
__device__ __forceinline__ void outputs(const float (&a)[VEC], const float (&b)[VEC], const float (&zz)[VEC],
                                        const float (&g)[VEC], const float (&wg)[VEC], const float (&wa)[VEC],
                                        float rg, float ra, float w0, float w1, float cg, float ca, float (&o_g)[VEC],
                                        float (&o_a)[VEC], float (&o_z)[VEC], int64_t j, PartialRow<VEC, REG>& part_g,
                                        PartialRow<VEC, REG>& part_a) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float s = sigmoid_f(zz[k]);
    const float ng = a[k] * rg, na = b[k] * ra;
    const float du = g[k] * zz[k] * s;
    o_z[k] = g[k] * (w0 * ng * wg[k] + w1 * na * wa[k]) * s * (1.f + zz[k] * (1.f - s));
    o_g[k] = rg * (w0 * du * wg[k] - ng * cg);
    o_a[k] = ra * (w1 * du * wa[k] - na * ca);
    part_g.add(j, k, w0 * du * ng);
    part_a.add(j, k, w1 * du * na);
  }
}

// The backward in one pass over its inputs, for rows of at most one vector per thread in blocks of at most 256
// threads (natsl-340m: 128 channels = 16 bf16 vectors): the row dots' loads stay in registers for the outputs, so
// og, oa, z and dy cross memory once, and (REG, production) the dgamma sums stay in registers too; REG = false
// (the kernel lab's variant) adds them into zeroed partial rows in memory. The per-element arithmetic is the
// two-pass mix_bwd_kernel's (the functions above), so the outputs are its bits; the 256-thread bound lets the
// compiler give each thread the registers the kept row needs (BENCHMARKS.md has the lab's timings).
constexpr int kOnePassThreads = 256;

template <class T, int VEC, bool REG>
__global__ void __launch_bounds__(kOnePassThreads)
    bwd_onepass_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                       const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                       const float* __restrict__ rstd_g, const float* __restrict__ rstd_a, const T* __restrict__ dy,
                       T* __restrict__ dog, T* __restrict__ doa, T* __restrict__ dwl, T* __restrict__ dz,
                       float* __restrict__ pg, float* __restrict__ pa, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  const int64_t slot = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  PartialRow<VEC, REG> part_g(pg ? pg + slot * D : nullptr), part_a(pa ? pa + slot * D : nullptr);
  const int64_t j = int64_t(threadIdx.x) * VEC;  // this thread's one vector of every row
  const bool mine = j < D;
  float wg[VEC], wa[VEC];
  if (mine) {
    load_vec<T, VEC>(gg + j, wg);
    load_vec<T, VEC>(ga + j, wa);
  }
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    const float rg = active ? rstd_g[r] : 0.f, ra = active ? rstd_a[r] : 0.f;
    float a[VEC], b[VEC], zz[VEC], g[VEC];
    float dw0 = 0.f, dw1 = 0.f;  // <du, g_hat>, <du, a_hat>
    if (active && mine) {
      load_vec<T, VEC>(og + off + j, a);
      load_vec<T, VEC>(oa + off + j, b);
      load_vec<T, VEC>(z + off + j, zz);
      load_vec<T, VEC>(dy + off + j, g);
      mix::add_row_dots(a, b, zz, g, wg, wa, rg, ra, dw0, dw1);
    }
    dw0 = row_sum(dw0, scratch);
    dw1 = row_sum(dw1, scratch);
    if (!active) continue;
    float w0, w1, cg, ca;
    router_grad(wl, dwl, r, dw0, dw1, D, w0, w1, cg, ca);
    if (!mine) continue;
    float o_g[VEC], o_a[VEC], o_z[VEC];
    mix::outputs(a, b, zz, g, wg, wa, rg, ra, w0, w1, cg, ca, o_g, o_a, o_z, j, part_g, part_a);
    store_vec<T, VEC>(dog + off + j, o_g);
    store_vec<T, VEC>(doa + off + j, o_a);
    store_vec<T, VEC>(dz + off + j, o_z);
  }
  part_g.finish(D);
  part_a.finish(D);
}

}  // namespace natsl::kernels::cuda::mix
