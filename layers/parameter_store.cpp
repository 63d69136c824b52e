#include "layers/parameter_store.h"

namespace natsl {

std::string precision_name(Precision p) { return p == Precision::f32 ? "f32" : "bf16"; }

ParameterStore::ParameterStore(Module& model, Device device, Precision precision, int shards)
    : params_(model.named_parameters()), device_(device), precision_(precision) {
  NATSL_CHECK(!params_.empty(), "ParameterStore: the model has no parameters");
  NATSL_CHECK(shards >= 1, "ParameterStore: shards must be >= 1");
  for (const ParameterRef& p : params_) layout_.add(p.name, p.meta->shape, DType::f32);
  if (shards > 1) layout_.pad_totals(int64_t(shards) * FlatLayout::kFlatAlign);
  master_ = FlatBuffer(layout_, device_);
  grads_ = FlatBuffer(layout_, device_);
  if (precision_ == Precision::bf16) compute_ = FlatBuffer(layout_, device_, DType::bf16);
  for (size_t i = 0; i < params_.size(); ++i) master_.view(int(i)).copy_(*params_[i].tensor);
  sync_compute_from_master();
  bind();
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
  if (precision_ == Precision::f32) return;
  compute_.flat(DType::f32).copy_(master_.flat(DType::f32));
}

void ParameterStore::to(Device d) {
  if (d == device_) return;
  auto move = [&](FlatBuffer& b, std::optional<DType> as) {
    FlatBuffer nb(layout_, d, as);
    nb.flat(DType::f32).copy_(b.flat(DType::f32));
    b = std::move(nb);
  };
  move(master_, std::nullopt);
  move(grads_, std::nullopt);
  if (precision_ == Precision::bf16) move(compute_, DType::bf16);
  device_ = d;
  bind();
}

void ParameterStore::init(Generator& gen) {
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor host = Tensor::empty(params_[i].meta->shape, DType::f32, kCPU);
    init_parameter(*params_[i].meta, host, gen);
    master_.view(int(i)).copy_(host);
  }
  sync_compute_from_master();
}

std::vector<bool> ParameterStore::decay_mask(bool decay_embeddings) const {
  std::vector<bool> m;
  for (const ParameterRef& p : params_) m.push_back(!p.meta->no_decay && (decay_embeddings || !p.meta->is_embedding));
  return m;
}

StateDict ParameterStore::state_dict() const {
  StateDict sd;
  for (size_t i = 0; i < params_.size(); ++i) sd[params_[i].name] = master_.view(int(i));
  return sd;
}

void ParameterStore::load_state_dict(const StateDict& sd, const std::string& what) {
  std::vector<std::pair<std::string, Shape>> expected;
  for (const ParameterRef& p : params_) expected.emplace_back(p.name, p.meta->shape);
  check_state_dict(expected, sd, what);
  for (size_t i = 0; i < params_.size(); ++i) master_.view(int(i)).copy_(sd.at(params_[i].name));
  sync_compute_from_master();
}

}  // namespace natsl
