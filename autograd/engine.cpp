#include "autograd/engine.h"

#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "core/profiler.h"
#include "kernels/elementwise.h"

namespace natsl {

namespace {
thread_local bool t_grad_enabled = true;

// Adds b into a (returning the sum). `a` may be undefined.
Tensor accumulate(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::binary_fwd(kernels::BinaryOp::Add, a, b, out);
  return out;
}
}  // namespace

bool grad_enabled() { return t_grad_enabled; }
GradModeGuard::GradModeGuard(bool enabled) : mode_(t_grad_enabled, enabled) {}

namespace {
thread_local GradReadyHook t_grad_ready_hook;
// True while a plain backward runs (grad_sink may hand out leaves' .grad); false inside gradients_of.
thread_local bool t_sinks_allowed = false;

// Adds g into the defined gradient cur in place (so a view into a flat gradient buffer stays one). Another dtype (a
// bf16 gradient into an f32 .grad) is widened and added in one pass, kernels::add_into: the bits of the cast and add.
void add_into(const Tensor& cur, const Tensor& g) {
  if (g.dtype() != cur.dtype() && g.shape() == cur.shape() && g.is_contiguous() && cur.is_contiguous())
    kernels::add_into(g, cur);
  else
    kernels::binary_fwd(kernels::BinaryOp::Add, cur, g.dtype() == cur.dtype() ? g : g.to(cur.dtype()), cur);
}

// True when g is `leaf`'s .grad itself: a gradient an op already added there (see grad_sink).
bool is_sink(const Tensor& leaf, const Tensor& g) {
  return g.defined() && leaf.grad().defined() && g.same(leaf.grad());
}
}  // namespace

namespace {
// The pending gradients of the inputs of the node whose backward runs (null where the input is a leaf or takes
// no gradient): what input_grad_sink may hand out. Set per node by backward_impl, saved and restored
// around it, so a backward nested in a node's (a checkpoint's recomputation) has its own.
// `handed_out[k]`: input_grad_sink gave slot k to the op, so an output that is the slot's tensor itself is the
// op's gradient already added in (any other repeat of a pending tensor, e.g. add(u, u) sending one gradient
// twice, is added as usual).
struct InputSlots {
  std::vector<Tensor*> slots;
  std::vector<bool> handed_out;
};
thread_local InputSlots* t_input_slots = nullptr;
}  // namespace

Tensor input_grad_sink(size_t k, const Shape& shape, DType dtype, Device device) {
  if (!t_input_slots || k >= t_input_slots->slots.size() || !t_input_slots->slots[k]) return {};
  const Tensor& acc = *t_input_slots->slots[k];
  // Only the engine's slot may hold it: another holder (a pending gradient of another input, a view) would see
  // the addition.
  if (!acc.defined() || acc.impl_ptr().use_count() != 1 || !acc.storage() || acc.storage().use_count() != 1) return {};
  if (acc.shape() != shape || acc.dtype() != dtype || acc.device() != device || !acc.is_contiguous() ||
      acc.requires_grad())
    return {};
  t_input_slots->handed_out[k] = true;
  return acc;
}

Tensor grad_sink(const Tensor& leaf) {
  if (!t_sinks_allowed || !leaf.defined() || !leaf.is_leaf() || !leaf.requires_grad()) return {};
  const Tensor& g = leaf.grad();
  if (!g.defined() || g.shape() != leaf.shape() || g.device() != leaf.device() || !g.is_contiguous()) return {};
  return g;
}

std::vector<Tensor> AccumulateGrad::apply(std::vector<Tensor>& grads) {
  const Tensor& g = grads[0];
  if (!g.defined()) return {};
  Tensor leaf = leaf_;
  Tensor& cur = leaf.mutable_grad();
  NATSL_CHECK(g.shape() == leaf.shape(), "gradient shape ", shape_str(g.shape()), " for leaf ", leaf.str());
  if (is_sink(leaf, g)) {
    // Already added into .grad by the op that made it.
  } else if (!cur.defined()) {
    // Own a fresh copy in the leaf's dtype: the incoming tensor may be shared with other nodes.
    cur = Tensor::empty(leaf.shape(), leaf.dtype(), leaf.device());
    cur.copy_(g);
  } else {
    add_into(cur, g);
  }
  if (t_grad_ready_hook) t_grad_ready_hook(leaf);
  return {};
}

GradReadyHookGuard::GradReadyHookGuard(GradReadyHook hook) : hook_(t_grad_ready_hook, std::move(hook)) {}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  if (t.grad_fn()) return {t.grad_fn(), t.output_nr()};
  // A leaf: one accumulator per leaf, kept in the leaf's impl so that all uses share it.
  TensorImpl* impl = t.impl();
  static thread_local std::unordered_map<TensorImpl*, std::weak_ptr<Node>> cache;
  auto it = cache.find(impl);
  if (it != cache.end()) {
    if (auto n = it->second.lock()) {
      auto* acc = static_cast<AccumulateGrad*>(n.get());
      if (acc->leaf().impl() == impl) return {n, 0};
    }
  }
  auto node = std::make_shared<AccumulateGrad>(t);
  node->output_shapes = {t.shape()};
  node->output_dtypes = {t.dtype()};
  node->device = t.device();
  if (cache.size() > 4096) {
    for (auto i = cache.begin(); i != cache.end();) i = i->second.expired() ? cache.erase(i) : std::next(i);
  }
  cache[impl] = node;
  return {node, 0};
}

bool any_requires_grad(std::initializer_list<const Tensor*> ts) {
  if (!t_grad_enabled) return false;
  for (const Tensor* t : ts)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& ts) {
  if (!t_grad_enabled) return false;
  for (const Tensor& t : ts)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void attach(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs,
            const std::vector<Tensor*>& outputs) {
  node->next_edges.clear();
  node->profile_owner = prof::current_scope();
  for (const Tensor& in : inputs) node->next_edges.push_back(gradient_edge(in));
  node->num_outputs = int(outputs.size());
  node->output_shapes.clear();
  node->output_dtypes.clear();
  for (size_t i = 0; i < outputs.size(); ++i) {
    node->output_shapes.push_back(outputs[i]->shape());
    node->output_dtypes.push_back(outputs[i]->dtype());
    node->device = outputs[i]->device();
    outputs[i]->set_grad_fn(node, int(i));
  }
}

namespace {

// The backward pass. With `capture` set, the nodes it lists (leaf accumulators) are not run: the gradient
// reaching node n is stored in captured[i] for every i of capture[n], and reaching any other leaf
// accumulator is an error.
void backward_impl(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph,
                   const std::unordered_map<Node*, std::vector<size_t>>* capture, std::vector<Tensor>* captured) {
  NATSL_CHECK(roots.size() == grads.size(), "backward: roots and grads differ in count");
  // Topological order by iterative DFS over next_edges (post-order), then walk it in reverse.
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, size_t>> stack;
  for (const Tensor& r : roots) {
    Edge e = gradient_edge(r);
    NATSL_CHECK(e.valid(), "backward() on a tensor that does not require grad: ", r.str());
    if (seen.insert(e.fn.get()).second) stack.push_back({e.fn.get(), 0});
    while (!stack.empty()) {
      auto& [n, i] = stack.back();
      if (i < n->next_edges.size()) {
        Node* child = n->next_edges[i++].fn.get();
        if (child && seen.insert(child).second) stack.push_back({child, 0});
      } else {
        order.push_back(n);
        stack.pop_back();
      }
    }
  }
  if (capture) {
    for (Node* n : order) {
      auto* acc = dynamic_cast<AccumulateGrad*>(n);
      NATSL_CHECK(!acc || capture->count(n), "gradients_of: the graph reaches the leaf ", acc ? acc->leaf().str() : "",
                  " which is not among the requested inputs (a parameter used by a checkpointed function but not "
                  "passed to checkpoint()?)");
    }
  }
  // Hold the nodes alive while we run (a node's apply may drop references to others).
  std::unordered_map<Node*, std::vector<Tensor>> pending;
  std::vector<std::shared_ptr<Node>> keep;
  keep.reserve(order.size());
  for (Node* n : order) keep.push_back(n->shared_from_this());
  for (size_t i = 0; i < roots.size(); ++i) {
    Edge e = gradient_edge(roots[i]);
    auto& slot = pending[e.fn.get()];
    slot.resize(size_t(e.fn->num_outputs));
    NATSL_CHECK(grads[i].shape() == roots[i].shape(), "backward: gradient shape ", shape_str(grads[i].shape()),
                " for ", roots[i].str());
    slot[size_t(e.input_nr)] = accumulate(slot[size_t(e.input_nr)], grads[i]);
  }
  InputSlots slots;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = *it;
    auto pit = pending.find(n);
    if (pit == pending.end()) continue;  // no gradient reached this node
    std::vector<Tensor> in_grads = std::move(pit->second);
    pending.erase(pit);
    in_grads.resize(size_t(n->num_outputs));
    if (capture) {
      auto cit = capture->find(n);
      if (cit != capture->end()) {
        for (size_t k : cit->second) (*captured)[k] = in_grads[0];
        continue;
      }
    }
    std::optional<prof::Scope> scope;  // the step profiler / NVTX, when on: one span per node
    if (prof::active() || prof::nvtx_enabled()) {
      static const std::string* const kBackward = prof::intern("backward");
      scope.emplace(prof::intern(n->name()), kBackward, n->profile_owner);
    }
    // The pending gradients of n's non-leaf inputs, for input_grad_sink (one pair of vectors for the whole walk:
    // a backward nested in n's has its own).
    slots.slots.assign(n->next_edges.size(), nullptr);
    slots.handed_out.assign(n->next_edges.size(), false);
    for (size_t k = 0; k < n->next_edges.size(); ++k) {
      const Edge& e = n->next_edges[k];
      if (!e.valid() || dynamic_cast<const AccumulateGrad*>(e.fn.get())) continue;
      auto sit = pending.find(e.fn.get());
      if (sit != pending.end() && size_t(e.input_nr) < sit->second.size())
        slots.slots[k] = &sit->second[size_t(e.input_nr)];
    }
    std::vector<Tensor> out;
    {
      ScopedValue<InputSlots*> sinks(t_input_slots, &slots);
      out = n->apply(in_grads);
    }
    in_grads.clear();
    if (!retain_graph) n->release_saved();
    for (size_t k = 0; k < n->next_edges.size() && k < out.size(); ++k) {
      const Edge& e = n->next_edges[k];
      if (!e.valid() || !out[k].defined()) continue;
      auto& slot = pending[e.fn.get()];
      slot.resize(size_t(e.fn->num_outputs));
      Tensor& acc = slot[size_t(e.input_nr)];
      const auto* leaf_acc = dynamic_cast<const AccumulateGrad*>(e.fn.get());
      const bool acc_in = leaf_acc && is_sink(leaf_acc->leaf(), acc);
      const bool out_in = leaf_acc && is_sink(leaf_acc->leaf(), out[k]);
      if (acc_in) {  // already in the leaf's .grad: add the new one there too (unless it is the sink as well)
        if (!out_in) add_into(acc, out[k]);
      } else if (out_in) {  // the new one is the sink: add what was pending into it, and keep the sink
        if (acc.defined()) add_into(out[k], acc);
        acc = out[k];
      } else if (!(k < slots.handed_out.size() && slots.handed_out[k] && out[k].same(acc))) {
        acc = accumulate(acc, out[k]);  // (else: n added its gradient into the pending one, input_grad_sink)
      }
    }
  }
}

}  // namespace

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph) {
  ScopedValue<bool> sinks(t_sinks_allowed, true);
  backward_impl(roots, grads, retain_graph, nullptr, nullptr);
}

std::vector<Tensor> gradients_of(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                                 const std::vector<Tensor>& inputs, bool retain_graph) {
  std::unordered_map<Node*, std::vector<size_t>> capture;
  for (size_t i = 0; i < inputs.size(); ++i) {
    NATSL_CHECK(!inputs[i].defined() || inputs[i].is_leaf(), "gradients_of: input ", i, " is not a leaf: ",
                inputs[i].str());
    Edge e = gradient_edge(inputs[i]);
    if (e.valid()) capture[e.fn.get()].push_back(i);
  }
  std::vector<Tensor> captured(inputs.size());
  ScopedValue<bool> no_sinks(t_sinks_allowed, false);  // the gradients are returned, never added into .grad
  backward_impl(roots, grads, retain_graph, &capture, &captured);
  return captured;
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  Tensor g = grad;
  if (!g.defined()) {
    NATSL_CHECK(numel() == 1, "backward() without a gradient needs a scalar, got ", str());
    g = Tensor::full(shape(), 1.0, dtype(), device());
  }
  run_backward({*this}, {g}, retain_graph);
}

}  // namespace natsl
