#pragma once
// The per-element arithmetic of the mix_norm_gate backward (kernels/mix_norm_gate.h, kernels/cuda/mix_norm_gate.cu),
// shared by the production kernel and the kernel lab's variants (experiments/kernel_lab/mix_norm_gate), so that a
// variant changes only how the data moves, never the arithmetic (and its bits). One VEC-wide vector of a row:
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

}  // namespace natsl::kernels::cuda::mix
