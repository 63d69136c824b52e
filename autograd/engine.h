#pragma once
// The autograd engine: Nodes with edges, a topological backward, gradient accumulation into leaves.
//
// A differentiable op computes its outputs with a forward kernel, then (when grad mode is on and some input
// requires grad) creates a Node that saves what the backward needs and points, through one Edge per
// input, at the node that produced that input (or at the input's AccumulateGrad node when it is a leaf).
// Node::apply maps the gradients of its outputs to the gradients of its inputs by calling the backward
// kernels. Big fused ops (norms, cross-entropy, GDN, sparse attention) are single nodes.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/scoped_value.h"
#include "core/tensor.h"

namespace natsl {

class Node;

struct Edge {
  std::shared_ptr<Node> fn;  // null: the input needs no gradient
  int input_nr = 0;          // which output of fn this input was
  bool valid() const { return fn != nullptr; }
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  virtual ~Node() = default;
  // grads[i] is dL/d(output i), undefined when no gradient reached that output. Returns one gradient per
  // input edge (undefined where the input needs none).
  virtual std::vector<Tensor> apply(std::vector<Tensor>& grads) = 0;
  virtual std::string name() const = 0;
  // Drops saved tensors once the backward has used them (unless retain_graph).
  virtual void release_saved() {}

  std::vector<Edge> next_edges;
  int num_outputs = 1;
  // Metadata of each output, so the engine can build zero gradients where only some outputs got one.
  std::vector<Shape> output_shapes;
  std::vector<DType> output_dtypes;
  Device device;
  // The profiler's innermost span when the node was made (core/profiler.h): its backward is charged there.
  const std::string* profile_owner = nullptr;
};

// The sink for a leaf: adds the incoming gradient into leaf.grad (in place when grad already exists,
// e.g. a view into the flat gradient buffer).
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(const Tensor& leaf) : leaf_(leaf) {}
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override;
  std::string name() const override { return "AccumulateGrad"; }
  const Tensor& leaf() const { return leaf_; }

 private:
  Tensor leaf_;
};

// Called after a leaf's AccumulateGrad has added this backward's gradient into leaf.grad: from then on the
// leaf's gradient is final for this backward (a leaf has one accumulator node, which the engine runs once,
// after every node that feeds it). Per thread; the data-parallel reducer sets it around the backward of the
// last micro-batch to start reducing gradient buckets while the rest of the backward runs.
using GradReadyHook = std::function<void(const Tensor& leaf)>;
class GradReadyHookGuard {
 public:
  explicit GradReadyHookGuard(GradReadyHook hook);

 private:
  ScopedValue<GradReadyHook> hook_;
};

// Writing a leaf's gradient straight into leaf.grad (e.g. linear's weight gradient by the GEMM's beta = 1,
// instead of a separate product, cast and add). An op's backward asks grad_sink(leaf): inside a plain backward
// (run_backward, not gradients_of) and when the leaf requires grad and already has a contiguous .grad of its
// shape on its device, that .grad, else an undefined tensor. An op that adds its gradient into the sink returns
// the sink itself as the leaf's gradient: the engine then knows it is already in .grad (other gradients for the
// same leaf are added to it in place, AccumulateGrad adds nothing, and the grad-ready hook still runs once, after
// every use of the leaf).
Tensor grad_sink(const Tensor& leaf);

// Adding an input's gradient in place into what the engine already holds for that input (e.g. linear's dx by the
// GEMM's beta = 1, instead of a fresh product and a separate add): while a node's backward runs, its input k's
// pending gradient (the sum of what the input's other uses sent back so far, in the engine's fixed order) when
// the op may add into it: a non-leaf input, a pending gradient that nothing else holds (no other tensor shares
// its storage), contiguous, of the given shape and dtype on `device`; else an undefined tensor. An op that adds
// its gradient into the sink returns the sink itself as input k's gradient; one that returns another tensor
// leaves the sink untouched (the engine adds the two as usual). In both plain backward and gradients_of.
Tensor input_grad_sink(size_t k, const Shape& shape, DType dtype, Device device);

// Grad mode: on by default; NoGradGuard turns it off for its scope, EnableGradGuard on (thread-local).
bool grad_enabled();
// Sets grad mode to `enabled` for its scope and restores the mode it found.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);

 private:
  ScopedValue<bool> mode_;
};
class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};
class EnableGradGuard : public GradModeGuard {
 public:
  EnableGradGuard() : GradModeGuard(true) {}
};

// The edge that gradient for `t` should flow along (its grad_fn, or its leaf accumulator).
Edge gradient_edge(const Tensor& t);

// True when grad mode is on and any of the tensors requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> ts);
bool any_requires_grad(const std::vector<Tensor>& ts);

// Wires a node into the graph: edges from the inputs, outputs' grad_fn set to the node. Call only when
// the op should record history (any_requires_grad of its inputs).
void attach(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs,
            const std::vector<Tensor*>& outputs);

// Runs the backward pass from `roots` with gradients `grads` (same shapes as the roots).
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph);

// The gradients of `roots` (given `grads`) with respect to the leaves `inputs`, as torch.autograd.grad:
// returned one per input (undefined where none reached it), not added into the leaves' .grad, and no
// GradReadyHook is called. Every leaf the graph reaches must be one of `inputs`: reaching another one is an
// error, raised before any node runs (the caller, e.g. checkpoint(), would otherwise lose its gradient).
std::vector<Tensor> gradients_of(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                                 const std::vector<Tensor>& inputs, bool retain_graph = false);

}  // namespace natsl
