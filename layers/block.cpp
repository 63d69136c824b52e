#include "layers/block.h"

#include "autograd/ops.h"

namespace natsl {

Block::Block(const ModelConfig& c, int64_t layer_idx) : kind_(c.mixer_kinds().at(size_t(layer_idx))) {
  attn_norm_ = register_module("attn_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  attn_ = register_module("attn", make_mixer(kind_, c, layer_idx));
  mlp_norm_ = register_module("mlp_norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps));
  mlp_ = register_module("mlp", std::make_shared<GatedMLP>(c.hidden_size, c.mlp_intermediate(), c.initializer_range));
}

Tensor Block::mixer_half(const Tensor& x) { return attn_->forward(attn_norm_->forward(x)); }
Tensor Block::mlp_half(const Tensor& h) { return mlp_->forward(mlp_norm_->forward(h)); }

Tensor Block::forward(const Tensor& x) {
  aux_from_checkpoint_ = false;
  aux_ = Tensor();
  // The mixer's aux loss is computed inside its forward; as a second output of the checkpoint it keeps its
  // gradient path (the first run has no history) and is counted once (the recomputation's is discarded).
  auto with_aux = [this](Tensor y) { return std::vector<Tensor>{std::move(y), attn_->aux_loss()}; };
  if (recompute_.block) {
    auto outs = checkpoint_modules({this}, [this, with_aux](const std::vector<Tensor>& in) {
      Tensor h = add(in[0], mixer_half(in[0]));
      return with_aux(add(h, mlp_half(h)));
    }, {x});
    aux_from_checkpoint_ = true;
    aux_ = outs[1];
    return outs[0];
  }
  Tensor a;
  if (recompute_.mixer(kind_)) {
    auto outs = checkpoint_modules({attn_norm_.get(), attn_.get()}, [this, with_aux](const std::vector<Tensor>& in) {
      return with_aux(mixer_half(in[0]));
    }, {x});
    aux_from_checkpoint_ = true;
    aux_ = outs[1];
    a = outs[0];
  } else {
    a = mixer_half(x);
  }
  Tensor h = add(x, a);
  Tensor m = recompute_.mlp ? checkpoint_modules({mlp_norm_.get(), mlp_.get()},
                                                 [this](const std::vector<Tensor>& in) {
                                                   return std::vector<Tensor>{mlp_half(in[0])};
                                                 },
                                                 {h})[0]
                            : mlp_half(h);
  return add(h, m);
}

Tensor Block::aux_loss() const { return aux_from_checkpoint_ ? aux_ : attn_->aux_loss(); }

}  // namespace natsl
