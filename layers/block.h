#pragma once
// Block: pre-norm mixer and pre-norm MLP, each with a residual (FLA's block layout and names):
//   h = x + attn(attn_norm(x)),  y = h + mlp(mlp_norm(h)).
#include <memory>

#include "layers/decode_cache.h"
#include "layers/gated_mlp.h"
#include "layers/mixer.h"
#include "layers/rmsnorm.h"

namespace natsl {

class Block : public Module {
 public:
  Block(const ModelConfig& config, int64_t layer_idx);
  Tensor forward(const Tensor& x) const;  // [B, T, d] -> [B, T, d]
  // The same with the mixer's decoding cache (layers/decode_cache.h): the prompt [B, P, d], or one more
  // position [B, 1, d].
  Tensor prefill(const Tensor& x, DecodeCache& cache) const;
  Tensor step(const Tensor& x, DecodeCache& cache) const;
  const std::string& mixer_kind() const { return kind_; }
  Mixer& mixer() const { return *attn_; }

 private:
  Tensor finish(const Tensor& x, const Tensor& mixed) const;  // the residual and the MLP half
  std::string kind_;
  const std::string* mixer_scope_;  // profiler span names: "layers.N.<kind>", "layers.N.mlp"
  const std::string* mlp_scope_;
  std::shared_ptr<RMSNorm> attn_norm_, mlp_norm_;
  std::shared_ptr<Mixer> attn_;
  std::shared_ptr<GatedMLP> mlp_;
};

}  // namespace natsl
