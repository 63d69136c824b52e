#pragma once
// CausalLM: token embedding, a stack of Blocks, a final RMSNorm and the LM head (untied Linear d -> V, or
// tied to the embedding). Parameter names follow the HF/FLA checkpoints:
//   model.embeddings.weight, model.layers.N.{attn_norm,attn,mlp_norm,mlp}..., model.norm.weight,
//   lm_head.weight (absent when tied).
#include <map>
#include <memory>
#include <string>

#include "data/batch.h"
#include "layers/block.h"
#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"

namespace natsl {

// The trunk under "model.": embeddings, layers, norm.
class LMBackbone : public Module {
 public:
  explicit LMBackbone(const ModelConfig& config);
  Tensor forward(const Tensor& ids) const;  // ids [B, T] -> final-normed hidden states [B, T, d]
  const Embedding& embeddings() const { return *embeddings_; }
  const Block& layer(size_t i) const { return *blocks_.at(i); }
  size_t num_layers() const { return blocks_.size(); }
  const RMSNorm& norm() const { return *norm_; }
  void set_recompute(const RecomputePolicy& policy);

 private:
  std::shared_ptr<Embedding> embeddings_;
  std::shared_ptr<ModuleList> layers_;
  std::vector<std::shared_ptr<Block>> blocks_;
  std::shared_ptr<RMSNorm> norm_;
};

class CausalLM : public Module {
 public:
  // Checks the config (validate_model_config: an InputError naming the key); mixers come from mixer_registry().
  explicit CausalLM(const ModelConfig& config);
  // ids [B, T] i32/i64 (moved to the model's device if needed) -> logits [B, T, V].
  Tensor forward(const Tensor& ids) const;
  // The LM head: final-normed hidden states [..., d] -> logits [..., V].
  Tensor head(const Tensor& hidden) const;
  // Mean next-token cross-entropy over targets != kIgnoreIndex (batch.targets are already shifted).
  Tensor loss(const Batch& batch) const;
  // Per-layer statistics from the mixers, keyed "layers.N.<key>".
  void collect_stats(std::map<std::string, double>& stats) const;
  // The sum of the mixers' auxiliary losses of the last training forward (undefined when none has one).
  Tensor aux_loss() const;
  // Which parts of every block are recomputed in the backward (train.recompute; layers/recompute.h).
  void set_recompute(const RecomputePolicy& policy) { model_->set_recompute(policy); }
  // Passes the training step to every mixer (Mixer::set_progress).
  void set_progress(int64_t step, int64_t total_steps) const;
  // The first layer whose Mixer::graph_blocker objects, as "layer N: why"; empty when none does. *never as the
  // mixer says (some layer can never be captured).
  std::string graph_blocker(int64_t step, bool* never) const;
  const ModelConfig& config() const { return config_; }
  const LMBackbone& backbone() const { return *model_; }

 private:
  ModelConfig config_;
  std::shared_ptr<LMBackbone> model_;
  std::shared_ptr<Linear> lm_head_;  // null when tied
};

}  // namespace natsl
