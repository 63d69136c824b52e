#pragma once
// Output mixing of NAtS-L (natsl-layer.md §3.5, the reference's FusedMultiInputRMSNormGated): per token
// and softmax-head slot a, with rows of Dv channels,
//   w     = softmax(wlogits[.., a, :])             over 2; index 0 weights the GDN output, 1 the softmax output
//   g_hat = og * rstd_g * gamma_g,  rstd_g = 1 / sqrt(mean(og^2) + eps)        (og: the GDN output's slot a)
//   a_hat = oa * rstd_a * gamma_a,  rstd_a = 1 / sqrt(mean(oa^2) + eps)        (oa: softmax head a's output)
//   y     = (w0 g_hat + w1 a_hat) ⊙ z ⊙ sigmoid(z)                             (z: the gate's slot a)
// Backward (u = w0 g_hat + w1 a_hat, s = silu(z)):
//   dz = dy ⊙ u ⊙ silu'(z);  du = dy ⊙ s;  dw_k = <du, hat_k>;  dwlogits = w ⊙ (dw - <dw, w>)
//   RMSNorm backward of w0 du ⊙ gamma_g into og (and of w1 du ⊙ gamma_a into oa); dgamma = sum over rows.
//
// Layouts (contiguous): og, oa, z, y [..., Ha, Dv] D (the GDN output [B, T, H, V] is passed viewed as
// [B, T, Ha, V / G], a plain reshape); wlogits [..., Ha, 2] D; gamma_g, gamma_a [Dv] D;
// rstd_g, rstd_a [..., Ha] S (f64 for f64 data, else f32). Statistics are computed in f32 (f64 for f64).
//
// The one-input case, Gated DeltaNet's output norm (FLA's FusedRMSNormGated with swish; natsl-layer.md §5):
//   n = o * rstd,  rstd = 1 / sqrt(mean(o^2) + eps);  y = n ⊙ gamma ⊙ z ⊙ sigmoid(z)
// Backward (u = n ⊙ gamma, du = dy ⊙ silu(z)):
//   dz = dy ⊙ u ⊙ silu'(z);  dgamma = sum over rows of du ⊙ n;  do = rstd (du ⊙ gamma - n <du ⊙ gamma, n> / D)
// Layouts (contiguous): o, z, y [..., D] D; gamma [D] D; rstd [...] S. One kernel each way instead of rmsnorm, silu
// and mul (their intermediates never reach memory, and are not rounded to D).
#include "core/tensor.h"

namespace natsl::kernels {

void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,
                       const Tensor& rstd_g, const Tensor& rstd_a);

// dog, doa, dwlogits, dz overwritten. dgamma_g / dgamma_a may be undefined (not computed); else in the data's dtype
// or f32 for bf16 data (kernels/nn.h, weight_grad_writes: a bf16 run's f32 .grad gets the f32 sums, no bf16
// rounding), overwritten with the sum over rows, or with accumulate_dgamma added into what they hold (the sum rounded
// to dgamma's dtype, then added: the bits of the plain gradient followed by AccumulateGrad's add; autograd's
// weight-gradient sink, autograd/function.h).
void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a,
                       const Tensor& dy, const Tensor& dog, const Tensor& doa, const Tensor& dwlogits,
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a,
                       bool accumulate_dgamma = false);

void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                   const Tensor& rstd);
// do_, dz overwritten; dgamma may be undefined (not computed), else as mix_norm_gate_bwd's (the data's dtype or f32
// for bf16 data; overwritten, or added into with accumulate_dgamma).
void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                   const Tensor& do_, const Tensor& dz, const Tensor& dgamma, bool accumulate_dgamma = false);

#define NATSL_MIX_NORM_GATE_DECLS                                                                            \
  void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,         \
                         const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,          \
                         const Tensor& rstd_g, const Tensor& rstd_a);                                        \
  void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,         \
                         const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g,                 \
                         const Tensor& rstd_a, const Tensor& dy, const Tensor& dog, const Tensor& doa,       \
                         const Tensor& dwlogits, const Tensor& dz, const Tensor& dgamma_g,                   \
                         const Tensor& dgamma_a, bool accumulate_dgamma = false);                            \
  void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,       \
                     const Tensor& rstd);                                                                    \
  void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd,                \
                     const Tensor& dy, const Tensor& do_, const Tensor& dz, const Tensor& dgamma,            \
                     bool accumulate_dgamma = false);
namespace cpu { NATSL_MIX_NORM_GATE_DECLS }
namespace cuda { NATSL_MIX_NORM_GATE_DECLS }
#undef NATSL_MIX_NORM_GATE_DECLS

}  // namespace natsl::kernels
