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

}  // namespace natsl
