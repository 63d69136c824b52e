#include "layers/block.h"

#include "autograd/ops.h"
#include "core/profiler.h"

namespace natsl {

Block::Block(const ModelConfig& c, int64_t layer_idx)
    : kind_(c.mixer_kinds().at(size_t(layer_idx))),
      mixer_scope_(prof::intern("layers." + std::to_string(layer_idx) + "." + kind_)),
      mlp_scope_(prof::intern("layers." + std::to_string(layer_idx) + ".mlp")) {
  attn_norm_ = register_module("attn_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  attn_ = register_module("attn", make_mixer(kind_, c, layer_idx));
  mlp_norm_ = register_module("mlp_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  mlp_ = register_module("mlp", std::make_shared<GatedMLP>(c.hidden_size, c.mlp_intermediate(), c.initializer_range));
}

Tensor Block::forward(const Tensor& x) const {
  // Profiler spans (core/profiler.h): each sub-block with its pre-norm and residual add.
  static const std::string* const kModule = prof::intern("module");
  Tensor h;
  {
    prof::Scope scope(mixer_scope_, kModule);
    h = add(x, attn_->forward(attn_norm_->forward(x)));
  }
  prof::Scope scope(mlp_scope_, kModule);
  return add(h, mlp_->forward(mlp_norm_->forward(h)));
}

}  // namespace natsl
