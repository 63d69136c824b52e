#pragma once
// The gated delta rule as one differentiable op (kernels/gdn.h): the chunked forward and backward kernels
// behind a single autograd node.
#include <vector>

#include "core/tensor.h"

namespace natsl {

struct GdnOpResult {
  Tensor o;   // [B, T, HV, V]
  Tensor ht;  // [N, HV, K, V] final state (f32; f64 for f64 data), defined when requested
};

// q, k [B, T, H, K] (already L2-normalised), v [B, T, HV, V], g (log decay) and beta [B, T, HV] (f32, or
// f64 with f64 data), h0 optional [N, HV, K, V]; mask optional [NC, HV] (NAtS-L state-write mask; its
// gradient is the GDN-side router gradient). cu_seqlens: empty, or N+1 token offsets with B = 1.
GdnOpResult gated_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                             double scale, const Tensor& h0 = Tensor(), const Tensor& mask = Tensor(),
                             bool output_final_state = false, const std::vector<int64_t>& cu_seqlens = {});

// The token-by-token recurrence (kernels/gdn.h, gdn_recurrent_fwd) for decoding: same arguments (no mask,
// one sequence per row), o and the final state ht always returned, no autograd history (inference only).
// On CUDA, a single token with a K the recurrent kernel lacks (it has 64, 128, 256) runs
// gated_delta_rule_step_ops instead.
GdnOpResult gated_delta_rule_recurrent(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                       const Tensor& beta, double scale, const Tensor& h0 = Tensor());

// One token (T = 1, as many v heads as q/k heads) of the rule composed from tensor ops, on any device and K:
//   h = exp(g) h0;  u = beta (v - h^T k);  h += k u^T;  o = scale h^T q     (state dtype: f32, f64 for f64)
GdnOpResult gated_delta_rule_step_ops(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                      const Tensor& beta, double scale, const Tensor& h0 = Tensor());

// Gated DeltaNet's gates in one node (kernels/gdn_gates.h), from a = x W_a and b = x W_b ([..., H], the compute
// dtype) and the per-head parameters A_log, dt_bias [H]:
//   beta = beta_scale sigmoid(b),  g = -exp(A_log) softplus(a + dt_bias)     (f32; f64 for f64 data)
// The values and gradients of the composed ops (to_dtype to f32, sigmoid, mul_scalar unless beta_scale is 1, exp,
// add, softplus, mul, neg), to the bit. A_log and dt_bias that are parameters (leaves) get their gradients added
// straight into their .grad when the engine offers it (engine.h, grad_sink): the bits of AccumulateGrad's add.
struct GdnGates {
  Tensor g, beta;  // [..., H]
};
GdnGates gdn_gates(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale);

}  // namespace natsl
