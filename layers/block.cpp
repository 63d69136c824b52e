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

// Profiler spans (core/profiler.h): the mixer with its pre-norm and residual add; the MLP likewise. Each half
// is x + f(norm(x)), the residual added by the half's output projection (its GEMM's epilogue).
Tensor Block::mixer_half(const Tensor& x) {
  prof::Scope scope(mixer_scope_, module_category());
  return attn_->forward_residual(attn_norm_->forward(x), x);
}
Tensor Block::mlp_half(const Tensor& h) {
  prof::Scope scope(mlp_scope_, module_category());
  return mlp_->forward(mlp_norm_->forward(h), h);
}

// Decoding (layers/decode_cache.h): the mixer through its cache, then the residual and the MLP half.
Tensor Block::prefill(const Tensor& x, DecodeCache& cache) const { return finish(x, cache.prefill(attn_norm_->forward(x))); }

Tensor Block::step(const Tensor& x, DecodeCache& cache) const { return finish(x, cache.step(attn_norm_->forward(x))); }

Tensor Block::finish(const Tensor& x, const Tensor& mixed) const {
  Tensor h = add(x, mixed);
  return add(h, mlp_->forward(mlp_norm_->forward(h)));
}

Tensor Block::forward(const Tensor& x) {
  aux_from_checkpoint_ = false;
  aux_ = Tensor();
  // The mixer's aux loss is computed inside its forward; as a second output of the checkpoint it keeps its
  // gradient path (the first run has no history) and is counted once (the recomputation's is discarded).
  auto with_aux = [this](Tensor y) { return std::vector<Tensor>{std::move(y), attn_->aux_loss()}; };
  if (recompute_.block) {
    auto outs = checkpoint_modules({this}, [this, with_aux](const std::vector<Tensor>& in) {
      return with_aux(mlp_half(mixer_half(in[0])));
    }, {x}, recompute_.keep);
    aux_from_checkpoint_ = true;
    aux_ = outs[1];
    return outs[0];
  }
  Tensor h;
  if (recompute_.mixer(kind_)) {
    auto outs = checkpoint_modules({attn_norm_.get(), attn_.get()}, [this, with_aux](const std::vector<Tensor>& in) {
      return with_aux(mixer_half(in[0]));
    }, {x}, recompute_.keep);
    aux_from_checkpoint_ = true;
    aux_ = outs[1];
    h = outs[0];
  } else {
    h = mixer_half(x);
  }
  return recompute_.mlp ? checkpoint_modules({mlp_norm_.get(), mlp_.get()},
                                             [this](const std::vector<Tensor>& in) {
                                               return std::vector<Tensor>{mlp_half(in[0])};
                                             },
                                             {h}, recompute_.keep)[0]
                        : mlp_half(h);
}

Tensor Block::aux_loss() const { return aux_from_checkpoint_ ? aux_ : attn_->aux_loss(); }

}  // namespace natsl
