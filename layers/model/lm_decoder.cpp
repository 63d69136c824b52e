#include "layers/model/lm_decoder.h"

#include "autograd/engine.h"
#include "autograd/ops.h"

namespace natsl {

LMDecoder::LMDecoder(const CausalLM& model) : model_(model) {
  NATSL_CHECK(!model.training(), "LMDecoder: put the model in evaluation mode first (model.eval())");
  const LMBackbone& trunk = model.backbone();
  for (size_t i = 0; i < trunk.num_layers(); ++i) caches_.push_back(trunk.layer(i).mixer().decode_cache());
}

Tensor LMDecoder::embed(const Tensor& ids) {
  NATSL_CHECK(ids.dim() == 2 && ids.size(1) >= 1, "LMDecoder: expected ids [B, T], got ", ids.str());
  NATSL_CHECK(position_ == 0 || ids.size(0) == batch_, "LMDecoder: batch ", ids.size(0), " after batch ", batch_);
  batch_ = ids.size(0);
  const Tensor& w = model_.backbone().embeddings().weight();
  return model_.backbone().embeddings().forward(ids.device() == w.device() ? ids : ids.to(w.device()));
}

Tensor LMDecoder::prefill(const Tensor& ids, bool all_positions) {
  NATSL_CHECK(position_ == 0, "LMDecoder: prefill after ", position_, " tokens");
  NoGradGuard no_grad;
  Tensor h = embed(ids);
  const LMBackbone& trunk = model_.backbone();
  for (size_t i = 0; i < caches_.size(); ++i) h = trunk.layer(i).prefill(h, *caches_[i]);
  h = trunk.norm().forward(h);
  position_ = ids.size(1);
  if (!all_positions) h = slice(h, 1, position_ - 1, position_);
  return model_.head(h);
}

Tensor LMDecoder::step(const Tensor& ids) {
  NATSL_CHECK(ids.dim() == 2 && ids.size(1) == 1, "LMDecoder::step: expected ids [B, 1], got ", ids.str());
  NoGradGuard no_grad;
  Tensor h = embed(ids);
  const LMBackbone& trunk = model_.backbone();
  for (size_t i = 0; i < caches_.size(); ++i) h = trunk.layer(i).step(h, *caches_[i]);
  ++position_;
  return model_.head(trunk.norm().forward(h));
}

int64_t LMDecoder::kv_bytes() const {
  int64_t n = 0;
  for (const auto& c : caches_) n += c->kv_bytes();
  return n;
}

int64_t LMDecoder::state_bytes() const {
  int64_t n = 0;
  for (const auto& c : caches_) n += c->state_bytes();
  return n;
}

int64_t LMDecoder::full_attention_kv_bytes() const {
  int64_t width = 0;
  for (const auto& c : caches_) width += c->full_attention_width();
  const int64_t elem = int64_t(dtype_size(model_.backbone().embeddings().weight().dtype()));
  return batch_ * position_ * width * elem;
}

}  // namespace natsl
