#pragma once
// The NAtS-L kernels as differentiable ops, each one autograd node (kernels/router.h,
// kernels/sparse_attention.h, kernels/mix_norm_gate.h; the GDN branch is autograd/ops_gdn.h with its mask).
// The router's masks are ordinary tensors in the graph: the branches take them as inputs and return their
// mask gradients, and router_choice's backward turns those into logit gradients (straight-through).
#include <cstdint>

#include "core/tensor.h"
#include "kernels/router.h"

namespace natsl {

// x [B, T, d] -> [B, NC, d]: the mean of each chunk (a partial last chunk over its real tokens).
Tensor chunk_mean_pool(const Tensor& x, int64_t chunk_size);

struct RouterChoice {
  Tensor mask_softmax, mask_gdn;  // [B, NC, Hr] exact 0/1 (f32; f64 for f64 logits), differentiable
  Tensor probs;                   // [B, NC, Hr, 2], no history (for logging / penalties)
};
// logits [B, NC, Hr, 2] (index 0 = softmax, 1 = GDN) -> hard masks; backward (1/tau) p (dm - <dm, p>) over
// the selected op's mask gradient, none for the last chunk when args.force_last_both.
RouterChoice router_choice(const Tensor& logits, const kernels::RouterChoiceArgs& args);
// The hard budget: per (b, router head), the k = router_topk_count(NC, fraction) routable chunks (c < NC - 1)
// with the highest softmax probability (noise included when Gumbel) are softmax, the others GDN; the last
// chunk is labelled as router_choice labels it. Backward: router_choice's straight-through gradient, with
// these masks choosing whose gradient counts. The selection runs on the host (one copy of the probabilities).
RouterChoice router_choice_topk(const Tensor& logits, const kernels::RouterChoiceArgs& args, double fraction);
// k = round(fraction (NC - 1)) (halves up); 0 when NC <= 1.
int64_t router_topk_count(int64_t num_chunks, double fraction);

// Chunk-selected causal softmax attention. q, k [B, T, Ha, Dk], v [B, T, Ha, Dv], mask_softmax [B, NC, Hr]
// (> 0.5 = selected; f32, or f64 with f64 data). The mask's gradient is the softmax-side router gradient.
// drop_own_chunk_grad reproduces the reference's released backward (natsl-layer.md §4.1).
Tensor sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask_softmax, double scale,
                        int64_t chunk_size = 64, bool drop_own_chunk_grad = false);

// Plain causal softmax attention through the same kernel (every chunk selected).
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t chunk_size = 64);

// Output mixing: (w0 RMSNorm(og) gamma_g + w1 RMSNorm(oa) gamma_a) * silu(z), w = softmax(wlogits).
// og, oa, z [..., Ha, Dv]; wlogits [..., Ha, 2]; gamma_g, gamma_a [Dv].
Tensor mix_norm_gate(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                     const Tensor& gamma_g, const Tensor& gamma_a, double eps = 1e-6);

}  // namespace natsl
