#include "autograd/checkpoint.h"

#include <unordered_set>

namespace natsl {
namespace detail {

// The outputs a keeping checkpoint holds (kept_output): appended in the first run, read back in order in the
// recomputation, each with the key it was kept under.
struct KeptOutputs {
  struct Entry {
    Tensor tensor;
    KeptKey key;
  };
  std::vector<Entry> entries;
  size_t next = 0;
  bool replay = false;
};

}  // namespace detail

namespace {

using detail::KeptOutputs;

// Runs a restore closure when the scope ends, also when fn throws.
class RestoreOnExit {
 public:
  explicit RestoreOnExit(std::function<void()> restore) : restore_(std::move(restore)) {}
  ~RestoreOnExit() {
    if (restore_) restore_();
  }
  RestoreOnExit(const RestoreOnExit&) = delete;
  RestoreOnExit& operator=(const RestoreOnExit&) = delete;

 private:
  std::function<void()> restore_;
};

// The tape of the keeping checkpoint running now (first run or recomputation), or null.
thread_local KeptOutputs* t_kept = nullptr;

std::string key_str(const KeptKey& k) {
  return std::string(k.op) + " " + shape_str(k.shape) + " " + std::string(dtype_name(k.dtype));
}

class CheckpointNode : public Node {
 public:
  // inputs: the detached inputs (their data), wants_grad[i]: whether input i wants a gradient;
  // output_index[j]: which output of fn the node's output j is.
  CheckpointNode(CheckpointFn fn, std::vector<Tensor> inputs, std::vector<bool> wants_grad, std::vector<Tensor> params,
                 std::vector<size_t> output_index, StateCapture state, std::function<void()> restore_first,
                 std::shared_ptr<KeptOutputs> kept)
      : fn_(std::move(fn)), inputs_(std::move(inputs)), wants_grad_(std::move(wants_grad)), params_(std::move(params)),
        output_index_(std::move(output_index)), state_(std::move(state)), restore_first_(std::move(restore_first)),
        kept_(std::move(kept)) {}

  std::string name() const override { return "Checkpoint"; }
  void release_saved() override {
    fn_ = nullptr;
    inputs_.clear();
    params_.clear();
    state_ = nullptr;
    restore_first_ = nullptr;
    kept_.reset();
  }

  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    NATSL_CHECK(fn_ != nullptr, "backward through a checkpointed function a second time: its inputs were released; "
                                "pass retain_graph=true to the first backward");
    // Recompute with history, on fresh leaves holding the saved inputs' data.
    std::vector<Tensor> leaves;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      Tensor t = inputs_[i].defined() ? inputs_[i].detach() : Tensor();
      if (t.defined() && wants_grad_[i]) t.set_requires_grad(true);
      leaves.push_back(t);
    }
    std::vector<Tensor> outs;
    {
      RestoreOnExit restore_now(state_ ? state_() : nullptr);
      if (restore_first_) restore_first_();
      EnableGradGuard grad_on;
      if (kept_) {
        kept_->replay = true;
        kept_->next = 0;
      }
      ScopedValue<KeptOutputs*> tape(t_kept, kept_ ? kept_.get() : t_kept);
      outs = fn_(leaves);
      if (kept_)
        NATSL_CHECK(kept_->next == kept_->entries.size(), "checkpoint: the recomputation asked for ", kept_->next,
                    " kept matrix products, the first run kept ", kept_->entries.size(),
                    ": it must run the same ops on the same data");
    }
    // Backpropagate the outputs that got a gradient through the recomputed graph.
    std::vector<Tensor> roots, root_grads;
    for (size_t j = 0; j < output_index_.size() && j < grads.size(); ++j) {
      if (!grads[j].defined()) continue;
      const Tensor& o = outs.at(output_index_[j]);
      NATSL_CHECK(o.defined() && o.shape() == output_shapes[j], "checkpoint: the recomputed output ", j,
                  " differs in shape from the first run's");
      if (!o.requires_grad()) continue;  // depends on nothing that needs a gradient
      roots.push_back(o);
      root_grads.push_back(grads[j]);
    }
    std::vector<Tensor> wrt;
    for (size_t i = 0; i < leaves.size(); ++i) wrt.push_back(wants_grad_[i] ? leaves[i] : Tensor());
    for (const Tensor& p : params_) wrt.push_back(p);
    if (roots.empty()) return std::vector<Tensor>(wrt.size());
    outs.clear();
    return gradients_of(roots, root_grads, wrt);
  }

 private:
  CheckpointFn fn_;
  std::vector<Tensor> inputs_;
  std::vector<bool> wants_grad_;
  std::vector<Tensor> params_;
  std::vector<size_t> output_index_;
  StateCapture state_;
  std::function<void()> restore_first_;
  std::shared_ptr<KeptOutputs> kept_;
};

}  // namespace

namespace detail {

bool keeping() { return t_kept != nullptr; }

Tensor take_kept(const KeptKey& key) {
  KeptOutputs* tape = t_kept;
  if (!tape->replay) return Tensor();
  NATSL_CHECK(tape->next < tape->entries.size(), "checkpoint: the recomputation asked for more kept matrix products "
              "than the first run kept (", tape->entries.size(), "), at ", key_str(key));
  const size_t i = tape->next++;
  const KeptKey& k = tape->entries[i].key;
  NATSL_CHECK(std::string(k.op) == key.op && k.shape == key.shape && k.dtype == key.dtype && k.operand == key.operand,
              "checkpoint: kept product ", i, " is ", key_str(k), " from the first run, but the recomputation asks for ",
              key_str(key), k.operand != key.operand ? " of another weight" : "",
              ": it must run the same ops on the same data");
  return tape->entries[i].tensor.detach();
}

void keep(const Tensor& out, const KeptKey& key) { t_kept->entries.push_back({out.detach(), key}); }

}  // namespace detail

NoKeepGuard::NoKeepGuard() : tape_(t_kept, nullptr) {}

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const std::vector<Tensor>& params, const StateCapture& state, CheckpointKeep keep) {
  // The parameters that can take a gradient, each once.
  std::vector<Tensor> live_params;
  std::unordered_set<TensorImpl*> seen;
  for (const Tensor& p : params)
    if (p.defined() && p.requires_grad() && seen.insert(p.impl()).second) {
      NATSL_CHECK(p.is_leaf(), "checkpoint: parameter ", p.str(), " is not a leaf");
      live_params.push_back(p);
    }
  if (!any_requires_grad(inputs) && !any_requires_grad(live_params)) return fn(inputs);

  std::function<void()> restore_first = state ? state() : nullptr;
  std::vector<Tensor> outs;
  // A tape of its own only where no keeping checkpoint is running (nested: the outer tape keeps).
  auto kept = keep == CheckpointKeep::Matmuls && !t_kept ? std::make_shared<KeptOutputs>() : nullptr;
  {
    NoGradGuard no_grad;
    ScopedValue<KeptOutputs*> tape(t_kept, kept ? kept.get() : t_kept);
    outs = fn(inputs);
  }
  // Fresh handles on the outputs' data: an output may be an input or a parameter itself, whose history must
  // not change.
  std::vector<Tensor*> attached;
  std::vector<size_t> output_index;
  for (size_t j = 0; j < outs.size(); ++j) {
    if (!outs[j].defined()) continue;
    outs[j] = outs[j].detach();
    if (!is_floating(outs[j].dtype())) continue;
    attached.push_back(&outs[j]);
    output_index.push_back(j);
  }
  if (attached.empty()) return outs;

  std::vector<Tensor> saved;
  std::vector<bool> wants_grad;
  for (const Tensor& x : inputs) {
    saved.push_back(x.defined() ? x.detach() : Tensor());
    wants_grad.push_back(x.defined() && x.requires_grad());
  }
  auto node = std::make_shared<CheckpointNode>(fn, std::move(saved), std::move(wants_grad), live_params,
                                               std::move(output_index), state, std::move(restore_first),
                                               std::move(kept));
  std::vector<Tensor> edges = inputs;
  edges.insert(edges.end(), live_params.begin(), live_params.end());
  attach(node, edges, attached);
  return outs;
}

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input, const std::vector<Tensor>& params,
                  const StateCapture& state, CheckpointKeep keep) {
  return checkpoint([fn](const std::vector<Tensor>& in) { return std::vector<Tensor>{fn(in[0])}; },
                    std::vector<Tensor>{input}, params, state, keep)[0];
}

}  // namespace natsl
