#include "layers/block.h"

#include "autograd/ops.h"
#include "core/profiler.h"

namespace natsl {

namespace {
const std::string* module_category() {
  static const std::string* const c = prof::intern("module");
  return c;
}
}  // namespace

Block::Block(const ModelConfig& c, int64_t layer_idx)
    : kind_(c.mixer_kinds().at(size_t(layer_idx))),
      mixer_scope_(prof::intern("layers." + std::to_string(layer_idx) + "." + kind_)),
      mlp_scope_(prof::intern("layers." + std::to_string(layer_idx) + ".mlp")) {
  attn_norm_ = register_module("attn_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  attn_ = register_module("attn", make_mixer(kind_, c, layer_idx));
  mlp_norm_ = register_module("mlp_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  mlp_ = register_module("mlp", std::make_shared<GatedMLP>(c.hidden_size, c.mlp_intermediate(), c.initializer_range));
}

// Profiler spans (core/profiler.h): the mixer with its pre-norm, then the residual add and the MLP half.
Tensor Block::forward(const Tensor& x) const {
  Tensor mixed;
  {
    prof::Scope scope(mixer_scope_, module_category());
    mixed = attn_->forward(attn_norm_->forward(x));
  }
  return finish(x, mixed);
}

Tensor Block::prefill(const Tensor& x, DecodeCache& cache) const { return finish(x, cache.prefill(attn_norm_->forward(x))); }

Tensor Block::step(const Tensor& x, DecodeCache& cache) const { return finish(x, cache.step(attn_norm_->forward(x))); }

Tensor Block::finish(const Tensor& x, const Tensor& mixed) const {
  prof::Scope scope(mlp_scope_, module_category());
  Tensor h = add(x, mixed);
  return add(h, mlp_->forward(mlp_norm_->forward(h)));
}

}  // namespace natsl
