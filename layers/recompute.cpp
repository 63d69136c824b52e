#include "layers/recompute.h"

#include <algorithm>

#include "core/error.h"

namespace natsl {
namespace {

void collect_modules(Module& m, std::vector<Module*>& out) {
  out.push_back(&m);
  for (const auto& [name, child] : m.children()) collect_modules(*child, out);
}

}  // namespace

const std::vector<std::string>& recompute_kinds() {
  static const std::vector<std::string> kinds = {"mlp", "attn", "gdn", "natsl", "mixer", "block"};
  return kinds;
}

const std::vector<std::string>& recompute_keep_kinds() {
  static const std::vector<std::string> kinds = {"matmul"};
  return kinds;
}

RecomputePolicy RecomputePolicy::parse(const std::vector<std::string>& names, const std::vector<std::string>& keep) {
  RecomputePolicy p;
  auto add_mixer = [&](const std::string& k) {
    if (std::find(p.mixers.begin(), p.mixers.end(), k) == p.mixers.end()) p.mixers.push_back(k);
  };
  for (const std::string& n : names) {
    if (n == "mlp") p.mlp = true;
    else if (n == "block") p.block = true;
    else if (n == "attn" || n == "gdn" || n == "natsl") add_mixer(n);
    else if (n == "mixer") for (const char* k : {"attn", "gdn", "natsl"}) add_mixer(k);
    else {
      std::string allowed;
      for (const std::string& k : recompute_kinds()) allowed += (allowed.empty() ? "" : ", ") + k;
      throw InputError("train.recompute: unknown module kind '" + n + "': expected a list of " + allowed);
    }
  }
  for (const std::string& k : keep) {
    if (k == "matmul") p.keep = CheckpointKeep::Matmuls;
    else throw InputError("train.recompute_keep: unknown op kind '" + k + "': expected a list of matmul (or [])");
  }
  return p;
}

bool RecomputePolicy::mixer(const std::string& kind) const {
  return std::find(mixers.begin(), mixers.end(), kind) != mixers.end();
}

StateCapture forward_state_capture(const std::vector<Module*>& roots) {
  std::vector<Module*> modules;
  for (Module* r : roots) collect_modules(*r, modules);
  return [modules] {
    std::vector<std::function<void()>> restores;
    for (Module* m : modules)
      if (auto r = m->capture_forward_state()) restores.push_back(std::move(r));
    return std::function<void()>([restores = std::move(restores)] {
      for (const auto& r : restores) r();
    });
  };
}

std::vector<Tensor> checkpoint_modules(const std::vector<Module*>& roots, const CheckpointFn& fn,
                                       const std::vector<Tensor>& inputs, CheckpointKeep keep) {
  std::vector<Tensor> params;
  for (Module* r : roots)
    for (const ParameterRef& p : r->named_parameters()) params.push_back(*p.tensor);
  return checkpoint(fn, inputs, params, forward_state_capture(roots), keep);
}

}  // namespace natsl
