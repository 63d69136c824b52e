#pragma once
// Mixer: the token-mixing half of a block (softmax attention, Gated DeltaNet, NAtS-L). Which mixer a layer
// uses comes from ModelConfig::mixer_kinds(); each kind is an entry of the registry below.
//
// Adding a kind (e.g. "gdn"): implement a Mixer subclass, then add one entry to the table in
// layers/mixer_registry.cpp giving its factory, its closed-form parameter count, its non-parameter
// FLOPs per token (see docs/flops.md) and the check of the options it reads.
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "layers/model/model_config.h"
#include "layers/module.h"

namespace natsl {

class DecodeCache;

class Mixer : public Module {
 public:
  // x [B, T, d] (already normed) -> [B, T, d].
  virtual Tensor forward(const Tensor& x) = 0;
  // residual + forward(x): the block's residual add, which the mixers fold into their output projection's GEMM
  // (its epilogue adds the residual: no separate add kernel). Default: the two composed.
  virtual Tensor forward_residual(const Tensor& x, const Tensor& residual);
  // Adds per-layer statistics of the last training forward (e.g. NAtS-L's fraction of softmax chunks) under
  // short keys ("attn_frac"); the model prefixes the layer. Default: none.
  virtual void collect_stats(std::map<std::string, double>& stats) const { (void)stats; }
  // The last training forward's auxiliary loss (NAtS-L's routing-sparsity penalty), which the trainer adds
  // to the language-model loss; undefined (the default) when there is none.
  virtual Tensor aux_loss() const { return Tensor(); }
  // Training is at step `step` (0-based) of `total_steps`: called before each training step's forwards, for
  // schedules (the Gumbel temperature, the penalty's warm-up). Default: nothing to schedule.
  virtual void set_progress(int64_t step, int64_t total_steps) {
    (void)step;
    (void)total_steps;
  }
  // Why a CUDA graph captured at training step `step` could not stand in for this mixer's training forward at
  // that step and at every later one: a value the host computes anew per step (noise offsets, a schedule, a
  // routing drawn or read back on the host). Empty when it can. Sets *never when no later step will do either
  // (else the trainer asks again at the next step). Default: nothing per step.
  virtual std::string graph_blocker(int64_t step, bool* never) const {
    (void)step;
    (void)never;
    return {};
  }
  // A fresh decoding state for generating with this mixer (layers/decode_cache.h). The mixer must outlive it
  // and be in evaluation mode while it is used. Default: InputError (the kind cannot decode token by token).
  virtual std::unique_ptr<DecodeCache> decode_cache();
};

struct MixerSpec {
  std::function<std::shared_ptr<Mixer>(const ModelConfig&, int64_t layer_idx)> make;
  // Parameters of one such mixer (closed form; tests check it against the built module).
  std::function<int64_t(const ModelConfig&)> num_params;
  // Training FLOPs per token (forward + backward) that are NOT weight matmuls, at sequence length seq_len
  // (the attention score / value products, the recurrent state updates, ...). The weight matmuls are
  // counted as 6 per parameter by model_flops_per_token.
  std::function<double(const ModelConfig&, int64_t seq_len)> extra_flops_per_token;
  // The options this kind reads, checked (validate_model_config calls it for every kind a model uses):
  // throws ConfigKeyError naming the key, so the mixer itself may assume they hold.
  std::function<void(const ModelConfig&)> check;
};

// The registry: kind -> spec. Immutable (built once from the table in mixer_registry.cpp).
const std::map<std::string, MixerSpec>& mixer_registry();
// The spec of a kind; unknown kind -> InputError listing the known kinds.
const MixerSpec& mixer_spec(const std::string& kind);
std::shared_ptr<Mixer> make_mixer(const std::string& kind, const ModelConfig& config, int64_t layer_idx);

}  // namespace natsl
