#include "layers/block.h"

#include "autograd/ops.h"

namespace natsl {

Block::Block(const ModelConfig& c, int64_t layer_idx) : kind_(c.mixer_kinds().at(size_t(layer_idx))) {
  attn_norm_ = register_module("attn_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  attn_ = register_module("attn", make_mixer(kind_, c, layer_idx));
  mlp_norm_ = register_module("mlp_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  mlp_ = register_module("mlp", std::make_shared<GatedMLP>(c.hidden_size, c.mlp_intermediate(), c.initializer_range));
}

Tensor Block::forward(const Tensor& x) const { return finish(x, attn_->forward(attn_norm_->forward(x))); }

Tensor Block::prefill(const Tensor& x, DecodeCache& cache) const { return finish(x, cache.prefill(attn_norm_->forward(x))); }

Tensor Block::step(const Tensor& x, DecodeCache& cache) const { return finish(x, cache.step(attn_norm_->forward(x))); }

Tensor Block::finish(const Tensor& x, const Tensor& mixed) const {
  Tensor h = add(x, mixed);
  return add(h, mlp_->forward(mlp_norm_->forward(h)));
}

}  // namespace natsl
