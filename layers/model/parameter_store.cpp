#include "layers/model/parameter_store.h"

#include <algorithm>

namespace natsl {

std::string precision_name(Precision p) { return p == Precision::f32 ? "f32" : "bf16"; }

ParameterStore::ParameterStore(Module& model, Device device, Precision precision, int shards, int rank)
    : params_(model.named_parameters()), device_(device), precision_(precision) {
  shards_ = shards;
  NATSL_CHECK(!params_.empty(), "ParameterStore: the model has no parameters");
  NATSL_CHECK(shards >= 1 && rank >= 0 && rank < shards, "ParameterStore: rank ", rank, " of ", shards, " shards");
  for (const ParameterRef& p : params_) layout_.add(p.name, p.meta->shape, DType::f32);
  if (shards > 1) layout_.pad_totals(int64_t(shards) * FlatLayout::kFlatAlign);
  const int64_t total = layout_.total(DType::f32);
  shard_begin_ = total / shards * rank;
  shard_end_ = shard_begin_ + total / shards;
  grads_ = FlatBuffer(layout_, device_);
  if (separate_compute()) compute_ = FlatBuffer(layout_, device_, precision_ == Precision::bf16 ? DType::bf16 : DType::f32);
  if (sharded()) {
    master_shard_ = Tensor::zeros({shard_end_ - shard_begin_}, DType::f32, device_);
  } else {
    master_ = FlatBuffer(layout_, device_);
    master_shard_ = master_.flat(DType::f32);
  }
  // The padding between entries stays zero in every buffer (FlatBuffer zero-fills).
  for (size_t i = 0; i < params_.size(); ++i) set_parameter(int(i), *params_[i].tensor);
  bind();
}

const FlatBuffer& ParameterStore::master() const {
  NATSL_CHECK(!sharded(), "ParameterStore::master(): the store is sharded (ZeRO-1); it holds master_shard() only");
  return master_;
}

void ParameterStore::set_parameter(int i, const Tensor& value) {
  const FlatEntry& e = layout_.entries().at(size_t(i));
  NATSL_CHECK(value.shape() == e.shape, "ParameterStore::set_parameter: '", e.name, "' has shape ",
              shape_str(e.shape), ", the value ", shape_str(value.shape()));
  if (!sharded()) {
    master_.view(i).copy_(value);
    if (separate_compute()) compute_.view(i).copy_(master_.view(i));
    return;
  }
  // The f32 value (on this device) goes to the compute buffer whole and to the master shard where they overlap.
  const Tensor v = value.to(device_).to(DType::f32).reshape({e.numel()});
  compute_.view(i).copy_(v.view(e.shape));
  const int64_t lo = std::max(e.offset, shard_begin_), hi = std::min(e.offset + e.numel(), shard_end_);
  if (lo < hi) master_shard_.slice(0, lo - shard_begin_, hi - shard_begin_).copy_(v.slice(0, lo - e.offset, hi - e.offset));
}

void ParameterStore::bind() {
  const FlatBuffer& comp = compute();
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& t = *params_[i].tensor;
    t = comp.view(int(i)).detach();  // a fresh leaf handle over the buffer
    t.set_requires_grad(true);
    t.set_grad(grads_.view(int(i)));
  }
}

int64_t ParameterStore::num_params() const {
  int64_t n = 0;
  for (const FlatEntry& e : layout_.entries()) n += e.numel();
  return n;
}

void ParameterStore::zero_grad() { grads_.zero_(); }

void ParameterStore::sync_compute_from_master() {
  if (!separate_compute()) return;
  compute_.flat(DType::f32).slice(0, shard_begin_, shard_end_).copy_(master_shard_);
}

void ParameterStore::to(Device d) {
  if (d == device_) return;
  auto move = [&](FlatBuffer& b, std::optional<DType> as) {
    FlatBuffer nb(layout_, d, as);
    nb.flat(DType::f32).copy_(b.flat(DType::f32));
    b = std::move(nb);
  };
  if (sharded()) {
    master_shard_ = master_shard_.to(d);
  } else {
    move(master_, std::nullopt);
    master_shard_ = master_.flat(DType::f32);
  }
  move(grads_, std::nullopt);
  if (separate_compute()) move(compute_, precision_ == Precision::bf16 ? DType::bf16 : DType::f32);
  device_ = d;
  bind();
}

void ParameterStore::init(Generator& gen) {
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor host = Tensor::empty(params_[i].meta->shape, DType::f32, kCPU);
    init_parameter(*params_[i].meta, host, gen);
    set_parameter(int(i), host);
  }
}

std::vector<bool> ParameterStore::decay_mask(bool decay_embeddings) const {
  std::vector<bool> m;
  for (const ParameterRef& p : params_) m.push_back(!p.meta->no_decay && (decay_embeddings || !p.meta->is_embedding));
  return m;
}

StateDict ParameterStore::state_dict() const {
  StateDict sd;
  for (size_t i = 0; i < params_.size(); ++i) sd[params_[i].name] = master().view(int(i));
  return sd;
}

void ParameterStore::load_state_dict(const StateDict& sd, const std::string& what) {
  std::vector<std::pair<std::string, Shape>> expected;
  for (const ParameterRef& p : params_) expected.emplace_back(p.name, p.meta->shape);
  check_state_dict(expected, sd, what);
  for (size_t i = 0; i < params_.size(); ++i) set_parameter(int(i), sd.at(params_[i].name));
}

}  // namespace natsl
