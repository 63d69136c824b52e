#include "layers/model/causal_lm.h"

#include "core/profiler.h"

#include "autograd/ops.h"

namespace natsl {

LMBackbone::LMBackbone(const ModelConfig& c) {
  embeddings_ = register_module("embeddings", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, c.initializer_range));
  layers_ = register_module("layers", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.num_layers; ++i) blocks_.push_back(layers_->push_back(std::make_shared<Block>(c, i)));
  norm_ = register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
}

void LMBackbone::set_recompute(const RecomputePolicy& policy) {
  for (const auto& b : blocks_) b->set_recompute(policy);
}

Tensor LMBackbone::forward(const Tensor& ids) const {
  const Tensor& w = embeddings_->weight();
  Tensor h;
  {
    prof::Scope scope("embedding", "module");
    h = embeddings_->forward(ids.device() == w.device() ? ids : ids.to(w.device()));
  }
  for (const auto& b : blocks_) h = b->forward(h);
  prof::Scope scope("norm + lm_head", "module");
  return norm_->forward(h);
}

CausalLM::CausalLM(const ModelConfig& c) : config_(c) {
  validate_model_config(c);  // a config built in code has not met the loader's check
  model_ = register_module("model", std::make_shared<LMBackbone>(c));
  if (!c.tie_word_embeddings)
    lm_head_ = register_module("lm_head", std::make_shared<Linear>(c.hidden_size, c.vocab_size, false, c.initializer_range));
}

Tensor CausalLM::forward(const Tensor& ids) const {
  NATSL_CHECK(ids.dim() == 2, "CausalLM::forward: expected ids [B, T], got ", ids.str());
  return head(model_->forward(ids));
}

Tensor CausalLM::head(const Tensor& h) const {
  prof::Scope scope("norm + lm_head", "module");
  return lm_head_ ? lm_head_->forward(h) : linear(h, model_->embeddings().weight());
}

Tensor CausalLM::loss(const Batch& batch) const {
  NATSL_CHECK(batch.inputs.shape() == batch.targets.shape(), "CausalLM::loss: inputs ", batch.inputs.str(),
              " and targets ", batch.targets.str(), " differ in shape");
  const int64_t N = batch.inputs.numel(), V = config_.vocab_size;
  Tensor targets = batch.targets.reshape({N});
  const Tensor& w = lm_head_ ? lm_head_->weight() : model_->embeddings().weight();
  // The head's product and the loss in row chunks (linear_cross_entropy): the [N, V] logits and their gradient
  // (2 x 2 GiB at B8 T4096 with a 32000-entry vocabulary in bf16) never exist; instead dw (f32, V x D) and dh (N x D)
  // wait for the backward. Taken on the GPU where that lowers the peak by at least half of what it holds; the CPU
  // keeps the composed ops, whose bits the CPU's golden loss traces record.
  const int64_t D = config_.hidden_size, es = int64_t(dtype_size(w.dtype()));
  if (w.device().is_cuda() && batch.inputs.dim() == 2 && N * V * es > 2 * (4 * V * D + N * D * es)) {
    const Tensor h = model_->forward(batch.inputs);
    if (targets.device() != h.device()) targets = targets.to(h.device());
    prof::Scope scope("lm_head + cross-entropy", "module");
    return linear_cross_entropy(reshape(h, {N, h.size(-1)}), w, targets, kIgnoreIndex);
  }
  Tensor logits = forward(batch.inputs);
  if (targets.device() != logits.device()) targets = targets.to(logits.device());
  prof::Scope scope("cross-entropy", "module");
  return cross_entropy(reshape(logits, {N, V}), targets, kIgnoreIndex);
}

Tensor CausalLM::aux_loss() const {
  Tensor total;
  for (size_t i = 0; i < model_->num_layers(); ++i) {
    const Tensor a = model_->layer(i).aux_loss();
    if (a.defined()) total = total.defined() ? add(total, a) : a;
  }
  return total;
}

void CausalLM::set_progress(int64_t step, int64_t total_steps) const {
  for (size_t i = 0; i < model_->num_layers(); ++i) model_->layer(i).mixer().set_progress(step, total_steps);
}

std::string CausalLM::graph_blocker(int64_t step, bool* never) const {
  *never = false;
  for (size_t i = 0; i < model_->num_layers(); ++i) {
    bool layer_never = false;
    const std::string why = model_->layer(i).mixer().graph_blocker(step, &layer_never);
    if (!why.empty()) {
      *never = layer_never;
      return "layer " + std::to_string(i) + ": " + why;
    }
  }
  return {};
}

void CausalLM::collect_stats(std::map<std::string, double>& stats) const {
  for (size_t i = 0; i < model_->num_layers(); ++i) {
    std::map<std::string, double> layer_stats;
    model_->layer(i).mixer().collect_stats(layer_stats);
    for (const auto& [k, v] : layer_stats) stats["layers." + std::to_string(i) + "." + k] = v;
  }
}

}  // namespace natsl
