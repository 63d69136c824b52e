#pragma once
// The NAtS-L router (natsl-layer.md §3.2, assembly of the mask gradients §4.2, Gumbel option §10.4):
//   pooled[b, c]  = mean of x[b, t] over the tokens t of chunk c    (a partial last chunk: over its real tokens)
//   logits        = pooled W_r^T, viewed [B, NC, Hr, 2]             (bias-free; an ordinary matmul, not here)
//   labels        = onehot(argmax(logits + noise)) per (b, c, r)    (index 0 = softmax, 1 = GDN; ties -> softmax)
//   probs         = softmax((logits + noise) / tau)                 (noise = 0 unless Gumbel)
// The forward value is the hard label, the backward that of probs (straight-through):
//   dlogits = (1/tau) probs ⊙ (dm - <dm, probs>),  dm = (mask_softmax dm_softmax, mask_gdn dm_gdn)
// Only the selected op's mask gradient counts (§4.2: the reference computes none for the other op; the GDN
// kernel returns one for every chunk, so the backward masks it). In training the last chunk is forced to both ops (mask = (1, 1)); its dm is then discarded, so its logits
// get zero gradient. Gumbel noise G = -log(-log U), U = philox_uniform(seed, offset + n) for element n of
// logits in row-major order (the caller reserves numel(logits) words of its Generator).
//
// Layouts (contiguous): x [B, T, d] D; pooled [B, NC, d] D; logits [B, NC, Hr, 2] D;
// probs [B, NC, Hr, 2] S; mask_softmax, mask_gdn, dm_softmax, dm_gdn [B, NC, Hr] S (exact 0/1 masks);
// S = f64 for f64 data, else f32. The masks are what the branches read: the softmax one builds the
// attention's selection index, the GDN one is the state-write mask of kernels/gdn.h ([B * NC, H] there).
#include <cstdint>

#include "core/tensor.h"

namespace natsl::kernels {

void chunk_mean_pool_fwd(const Tensor& x, int64_t chunk_size, const Tensor& pooled);
// dx[b, t] = dpooled[b, c(t)] / (tokens in c(t)); dx overwritten, or with accumulate added into dx (that value
// rounded to dx's dtype, then the sum rounded once: the bits of a separate add; the autograd op adds into x's
// pending gradient that way, autograd/engine.h input_grad_sink).
void chunk_mean_pool_bwd(const Tensor& dpooled, int64_t chunk_size, const Tensor& dx, bool accumulate = false);

struct RouterChoiceArgs {
  double tau = 1.0;
  bool gumbel = false;           // sample with Gumbel noise (use no noise at evaluation)
  uint64_t seed = 0, offset = 0;  // Philox stream of the noise
  bool force_last_both = true;   // training: the last chunk gets both ops and no router gradient
};

void router_choice_fwd(const RouterChoiceArgs& args, const Tensor& logits, const Tensor& probs,
                       const Tensor& mask_softmax, const Tensor& mask_gdn);
// mask_softmax / mask_gdn: the forward's masks (undefined: dm used as given); dm_softmax / dm_gdn may be
// undefined (zero). dlogits overwritten.
void router_choice_bwd(const RouterChoiceArgs& args, const Tensor& probs, const Tensor& mask_softmax,
                       const Tensor& mask_gdn, const Tensor& dm_softmax, const Tensor& dm_gdn,
                       const Tensor& dlogits);

#define NATSL_ROUTER_DECLS                                                                                    \
  void chunk_mean_pool_fwd(const Tensor& x, int64_t chunk_size, const Tensor& pooled);                        \
  void chunk_mean_pool_bwd(const Tensor& dpooled, int64_t chunk_size, const Tensor& dx, bool accumulate = false); \
  void router_choice_fwd(const RouterChoiceArgs& args, const Tensor& logits, const Tensor& probs,             \
                         const Tensor& mask_softmax, const Tensor& mask_gdn);                                 \
  void router_choice_bwd(const RouterChoiceArgs& args, const Tensor& probs, const Tensor& mask_softmax,       \
                         const Tensor& mask_gdn, const Tensor& dm_softmax, const Tensor& dm_gdn,              \
                         const Tensor& dlogits);
namespace cpu { NATSL_ROUTER_DECLS }
namespace cuda { NATSL_ROUTER_DECLS }
#undef NATSL_ROUTER_DECLS

}  // namespace natsl::kernels
