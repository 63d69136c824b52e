#pragma once
// Gated DeltaNet's gates (layers/gated_deltanet.h) in one op: from the projections a = x W_a, b = x W_b and
// the per-head parameters A_log, dt_bias, per element n of [..., H] and head h:
//   beta = c sigmoid(b),  sigmoid(b) = 1 / (1 + exp(-b))          (c = beta_scale: 2 with negative eigenvalues)
//   u    = a + dt_bias[h]
//   g    = -(exp(A_log[h]) * softplus(u)),  softplus(u) = u > 20 ? u : log1p(exp(u))
// Backward (s = sigmoid(b), A = exp(A_log[h]), sp = softplus(u), softplus'(u) = u > 20 ? 1 : sigmoid(u)):
//   dm = -dg;  du = (dm A) softplus'(u);  da = du;  db = (c dbeta) s (1 - s)
//   ddt_bias[h] = sum over n of du;  dA_log[h] = (sum over n of dm sp) A
//
// It is the composed ops it replaces, to the bit: to_dtype(., S), sigmoid, mul_scalar(., c) (left out when
// c == 1), exp, add, softplus, mul, neg, and their backward kernels. Every quantity those ops store is rounded to
// S here too (the same expressions of kernels/cpu/math.h and kernels/cuda/elementwise.cu, in the same order);
// the scalings by -1 and c are kernels::scale's (on the GPU c x + 0, so a zero comes out +0 as there); the sums
// over n are kernels::sum_to_shape run on the per-element terms (dm sp and du, S tensors shaped like a), as the
// broadcast mul's and add's backward reduce them; the parameters' gradients are rounded to the parameter's
// dtype P (to_dtype's backward) or, when accumulated into a .grad of dtype G, added there as to_dtype's backward
// adds into its sink (out = G(out + G(grad)), kernels::add_into: no rounding to P).
//
// Layouts (contiguous): a, b [..., H] D; g, beta [..., H] S = f64 for f64 data, else f32 (DESIGN.md: the gates
// stay f32); A_log, dt_bias [H] P (f32, bf16: a bf16 model's compute copy, or f64 on the CPU); da, db like a.
#include "core/tensor.h"

namespace natsl::kernels {

void gdn_gates_fwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale,
                   const Tensor& g, const Tensor& beta);

// What gdn_gates_bwd writes; an undefined tensor is not computed. da, dA_log and ddt_bias need dg, db needs dbeta.
// dA_log / ddt_bias [H] (any floating dtype G): overwritten with the gradient, or with accumulate_* set, the
// gradient added to what they hold (a parameter's .grad, autograd/engine.h grad_sink).
struct GdnGatesGrads {
  Tensor da, db, dA_log, ddt_bias;
  bool accumulate_A_log = false, accumulate_dt_bias = false;
};
// dg, dbeta [..., H] S; either may be undefined (no gradient reached that output).
void gdn_gates_bwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale,
                   const Tensor& dg, const Tensor& dbeta, const GdnGatesGrads& grads);

// The device parts of gdn_gates_bwd (kernels/gdn_gates.cpp runs the sums between them):
// - gdn_gates_bwd_terms: da, db and the per-element terms dA_terms = dm sp, ddt_terms = du ([..., H] S); any
//   output may be undefined (not written);
// - gdn_gates_param_grads: dA_log from dA_sum [H] S (the sum of dA_terms) and ddt_bias from ddt_sum; either pair
//   may be undefined.
#define NATSL_GDN_GATES_DECLS                                                                                     \
  void gdn_gates_fwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias,                \
                     double beta_scale, const Tensor& g, const Tensor& beta);                                     \
  void gdn_gates_bwd_terms(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias,          \
                           double beta_scale, const Tensor& dg, const Tensor& dbeta, const Tensor& da,            \
                           const Tensor& db, const Tensor& dA_terms, const Tensor& ddt_terms);                    \
  void gdn_gates_param_grads(const Tensor& A_log, const Tensor& dt_bias, const Tensor& dA_sum,                    \
                             const Tensor& ddt_sum, const GdnGatesGrads& grads);
namespace cpu { NATSL_GDN_GATES_DECLS }
namespace cuda { NATSL_GDN_GATES_DECLS }
#undef NATSL_GDN_GATES_DECLS

}  // namespace natsl::kernels
