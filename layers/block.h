#pragma once
// Block: pre-norm mixer and pre-norm MLP, each with a residual (FLA's block layout and names):
//   h = x + attn(attn_norm(x)),  y = h + mlp(mlp_norm(h)).
// Each residual add is done by the half's output projection (Mixer::forward_residual, GatedMLP's residual).
// With a RecomputePolicy (layers/recompute.h) the mixer half (x + mixer(attn_norm(x))), the MLP half
// (h + mlp(mlp_norm(h))) or the whole block keep only their input in the forward and run again in the backward.
#include <memory>

#include "layers/decode_cache.h"
#include "layers/gated_mlp.h"
#include "layers/mixer.h"
#include "layers/recompute.h"
#include "layers/rmsnorm.h"

namespace natsl {

class Block : public Module {
 public:
  Block(const ModelConfig& config, int64_t layer_idx);
  Tensor forward(const Tensor& x);  // [B, T, d] -> [B, T, d]
  // The same with the mixer's decoding cache (layers/decode_cache.h): the prompt [B, P, d], or one more
  // position [B, 1, d]. No recomputation (decoding keeps no history).
  Tensor prefill(const Tensor& x, DecodeCache& cache) const;
  Tensor step(const Tensor& x, DecodeCache& cache) const;
  const std::string& mixer_kind() const { return kind_; }
  Mixer& mixer() const { return *attn_; }
  void set_recompute(const RecomputePolicy& policy) { recompute_ = policy; }
  const RecomputePolicy& recompute() const { return recompute_; }
  // The mixer's auxiliary loss of the last training forward (Mixer::aux_loss). When the mixer is recomputed
  // its forward runs without history, so the loss that carries the gradient is the checkpoint's output,
  // kept here; otherwise the mixer's own.
  Tensor aux_loss() const;

 private:
  Tensor finish(const Tensor& x, const Tensor& mixed) const;  // decoding: the residual and the MLP half
  Tensor mixer_half(const Tensor& x);  // x + mixer(attn_norm(x))
  Tensor mlp_half(const Tensor& h);    // h + mlp(mlp_norm(h))
  std::string kind_;
  const std::string* mixer_scope_;  // profiler span names: "layers.N.<kind>", "layers.N.mlp"
  const std::string* mlp_scope_;
  std::shared_ptr<RMSNorm> attn_norm_, mlp_norm_;
  std::shared_ptr<Mixer> attn_;
  std::shared_ptr<GatedMLP> mlp_;
  RecomputePolicy recompute_;
  bool aux_from_checkpoint_ = false;
  Tensor aux_;  // the checkpointed mixer's aux loss output (when aux_from_checkpoint_)
};

}  // namespace natsl
