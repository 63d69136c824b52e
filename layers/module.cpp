#include "layers/module.h"

#include <set>

namespace natsl {

void init_parameter(const ParamMeta& meta, Tensor& out, Generator& gen) {
  NATSL_CHECK(out.device().is_cpu() && out.dtype() == DType::f32 && out.is_contiguous() && out.shape() == meta.shape,
              "init_parameter: expected a contiguous CPU f32 tensor of shape ", shape_str(meta.shape), ", got ",
              out.str());
  switch (meta.init.kind) {
    case InitKind::Normal: normal_(out, gen, 0.0, meta.init.std); break;
    case InitKind::Ones: out.fill_(1.0); break;
    case InitKind::Zeros: out.zero_(); break;
    case InitKind::Custom:
      NATSL_CHECK(meta.init.custom != nullptr, "init_parameter: custom init without a function");
      meta.init.custom(out, gen);
      break;
  }
}

void check_state_dict(const std::vector<std::pair<std::string, Shape>>& expected, const StateDict& given,
                      const std::string& what) {
  constexpr size_t kListed = 5;
  std::set<std::string> names;
  std::vector<std::string> missing;
  for (const auto& [name, shape] : expected) {
    names.insert(name);
    auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      continue;
    }
    if (it->second.shape() != shape)
      throw InputError(what + ": tensor '" + name + "' has shape " + shape_str(it->second.shape()) +
                       " but the model expects " + shape_str(shape) + " (does the model config match?)");
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, t] : given)
    if (!names.count(name)) unexpected.push_back(name);
  if (missing.empty() && unexpected.empty()) return;
  auto list = [&](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < kListed; ++i) s += (i ? ", '" : "'") + v[i] + "'";
    if (v.size() > kListed) s += " and " + std::to_string(v.size() - kListed) + " more";
    return s;
  };
  std::string msg = what + ":";
  if (!missing.empty()) msg += " missing tensor(s) " + list(missing) + ";";
  if (!unexpected.empty()) msg += " unexpected tensor(s) " + list(unexpected) + ";";
  throw InputError(msg + " the checkpoint does not match the model config");
}

void Module::register_parameter(const std::string& name, Tensor* slot, ParamMeta meta) {
  NATSL_CHECK(!name.empty() && name.find('.') == std::string::npos, "parameter name '", name, "' must be one non-empty word");
  for (const Slot& s : params_) NATSL_CHECK(s.name != name, "duplicate parameter '", name, "'");
  for (const auto& c : children_) NATSL_CHECK(c.first != name, "parameter '", name, "' clashes with a submodule");
  for (int64_t d : meta.shape) NATSL_CHECK(d > 0, "parameter '", name, "' has an empty shape ", shape_str(meta.shape));
  *slot = Tensor::zeros(meta.shape, DType::f32, kCPU);
  slot->set_requires_grad(true);
  params_.push_back(Slot{name, slot, std::move(meta)});
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  NATSL_CHECK(m != nullptr, "submodule '", name, "' is null");
  NATSL_CHECK(!name.empty() && name.find('.') == std::string::npos, "submodule name '", name, "' must be one non-empty word");
  for (const auto& c : children_) NATSL_CHECK(c.first != name, "duplicate submodule '", name, "'");
  for (const Slot& s : params_) NATSL_CHECK(s.name != name, "submodule '", name, "' clashes with a parameter");
  children_.emplace_back(name, std::move(m));
}

void Module::collect(const std::string& prefix, std::vector<ParameterRef>& out) const {
  for (const Slot& s : params_) out.push_back(ParameterRef{prefix + s.name, s.tensor, &s.meta});
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<ParameterRef> Module::named_parameters(const std::string& prefix) const {
  std::vector<ParameterRef> out;
  collect(prefix.empty() ? "" : prefix + ".", out);
  return out;
}

Tensor* Module::find_parameter(const std::string& name) const {
  for (const ParameterRef& p : named_parameters())
    if (p.name == name) return p.tensor;
  return nullptr;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const ParameterRef& p : named_parameters()) n += shape_numel(p.meta->shape);
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& c : children_) c.second->train(on);
}

void Module::to(Device d) {
  for (const ParameterRef& p : named_parameters()) {
    if (p.tensor->device() == d) continue;
    *p.tensor = p.tensor->detach().to(d);
    p.tensor->set_requires_grad(true);
  }
}

void Module::to(DType dt) {
  NATSL_CHECK(is_floating(dt), "Module::to: parameters must be floating, not ", dtype_name(dt));
  for (const ParameterRef& p : named_parameters()) {
    if (p.tensor->dtype() == dt) continue;
    *p.tensor = p.tensor->detach().to(dt);
    p.tensor->set_requires_grad(true);
  }
}

void Module::init_parameters(Generator& gen) {
  for (const ParameterRef& p : named_parameters()) {
    Tensor host = Tensor::empty(p.meta->shape, DType::f32, kCPU);
    init_parameter(*p.meta, host, gen);
    p.tensor->copy_(host);
  }
}

StateDict Module::state_dict() const {
  StateDict sd;
  for (const ParameterRef& p : named_parameters()) sd[p.name] = p.tensor->detach();
  return sd;
}

void Module::load_state_dict(const StateDict& sd, const std::string& what) {
  auto params = named_parameters();
  std::vector<std::pair<std::string, Shape>> expected;
  for (const ParameterRef& p : params) expected.emplace_back(p.name, p.meta->shape);
  check_state_dict(expected, sd, what);
  for (const ParameterRef& p : params) p.tensor->copy_(sd.at(p.name));
}

}  // namespace natsl
