#pragma once
// Module: the base of every layer. A module owns ordered, named parameters (registered from its Tensor
// members) and ordered, named submodules; full parameter names are dotted paths through the tree
// ("model.layers.3.attn.q_proj.weight"), matching the Hugging Face / FLA checkpoints where the layer has an
// HF twin.
//
// A module registers pointers to its own Tensor members, so modules are neither copyable nor movable and
// always live behind a shared_ptr. Replacing a registered tensor (to(), a ParameterStore binding it to a
// view of a flat buffer) updates the member the layer's forward reads.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"

namespace natsl {

enum class InitKind { Normal, Ones, Zeros, Custom };

// Fills a CPU f32 tensor (contiguous) from the generator; used for A_log, dt_bias and the like.
using CustomInit = std::function<void(Tensor& cpu_f32, Generator& gen)>;

struct ParamInit {
  InitKind kind = InitKind::Normal;
  double std = 0.02;  // InitKind::Normal: N(0, std)
  CustomInit custom;  // InitKind::Custom

  static ParamInit normal(double std) { return {InitKind::Normal, std, nullptr}; }
  static ParamInit ones() { return {InitKind::Ones, 0.0, nullptr}; }
  static ParamInit zeros() { return {InitKind::Zeros, 0.0, nullptr}; }
  static ParamInit with(CustomInit fn) { return {InitKind::Custom, 0.0, std::move(fn)}; }
};

struct ParamMeta {
  Shape shape;
  ParamInit init;
  bool no_decay = false;      // AdamW applies no weight decay (norm weights, A_log, dt_bias, biases)
  bool is_embedding = false;  // token embedding: decay is a trainer option
};

// One parameter of a module tree, as the tree's owner sees it.
struct ParameterRef {
  std::string name;  // full dotted name
  Tensor* tensor;    // the module member holding it
  const ParamMeta* meta;
};

// Writes a parameter's initial values (drawn in f32 on the CPU, so CPU and GPU runs start identical) into
// `out` (CPU, f32, contiguous, meta.shape). Normal draws advance `gen`; ones/zeros draw nothing.
void init_parameter(const ParamMeta& meta, Tensor& out, Generator& gen);

using StateDict = std::map<std::string, Tensor>;

// Checks that `given` has exactly the names and shapes of `expected`; throws InputError naming every missing
// or unexpected tensor (first few) or the first shape mismatch. `what` names the source (e.g. a file).
void check_state_dict(const std::vector<std::pair<std::string, Shape>>& expected, const StateDict& given,
                      const std::string& what);

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // All parameters of the tree, depth first: a module's own parameters (in registration order), then each
  // submodule's (in registration order), names prefixed by `prefix`.
  std::vector<ParameterRef> named_parameters(const std::string& prefix = "") const;
  // The member holding the parameter of that full name, or nullptr.
  Tensor* find_parameter(const std::string& name) const;
  int64_t num_parameters() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  // Moves/casts every parameter (a fresh leaf that requires grad). Not for models bound to a
  // ParameterStore: use ParameterStore::to there.
  void to(Device d);
  void to(DType dt);

  // Deterministic per-parameter init in named_parameters() order (see init_parameter).
  void init_parameters(Generator& gen);

  // State this module's forward changes besides its outputs (a noise generator's offset, statistics of the
  // last forward), for recomputation (autograd/checkpoint.h, layers/recompute.h): returns a closure that puts
  // that state back as it is now, or nullptr when there is none (the default). The module's own state only;
  // recompute.h walks a tree.
  virtual std::function<void()> capture_forward_state() { return nullptr; }

  // name -> the parameter's data (shared, detached).
  StateDict state_dict() const;
  // Copies every tensor into the matching parameter (dtype/device converted). Strict: a missing or
  // unexpected name, or a shape mismatch, throws InputError naming the tensor and `what`.
  void load_state_dict(const StateDict& sd, const std::string& what = "state dict");

 protected:
  // Allocates *slot as zeros(meta.shape) f32 on the CPU that requires grad, and records it under `name`.
  void register_parameter(const std::string& name, Tensor* slot, ParamMeta meta);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

 private:
  struct Slot {
    std::string name;
    Tensor* tensor;
    ParamMeta meta;
  };
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void collect(const std::string& prefix, std::vector<ParameterRef>& out) const;
  std::vector<Slot> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// An ordered list of submodules named "0", "1", ... (as torch.nn.ModuleList).
class ModuleList : public Module {
 public:
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    return register_module(std::to_string(children().size()), std::move(m));
  }
  size_t size() const { return children().size(); }
};

}  // namespace natsl
