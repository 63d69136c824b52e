#pragma once
// Activation checkpointing (torch.utils.checkpoint): trade compute for memory by keeping only a function's
// inputs in the forward and running the function again in the backward.
//
//   outs = checkpoint(fn, inputs, params, state)
//
// Forward: fn(inputs) runs under NoGradGuard, so none of its intermediate tensors outlive it; one
// CheckpointNode is recorded with an edge to every input and every parameter, and the outputs point at it.
// Backward (the node's apply): fn runs again with grad mode on, on detached copies of the inputs, building
// its graph afresh; gradients_of() backpropagates the outputs' gradients through that graph to the detached
// inputs and to the parameters, and the node hands them on along its edges. A parameter's gradient
// therefore reaches its one AccumulateGrad node through the outer backward, exactly once per backward (and
// the GradReadyHook fires then, as without checkpointing). The recomputed graph is freed when the node is done.
//
// fn is kept and called again in the backward: it must capture by value what it reads (no references to
// locals of the caller). `params` must list every leaf that requires grad which fn reads besides its inputs (a module's parameters);
// the backward refuses to run if the recomputed graph reaches another leaf.
//
// State: a forward may change state besides its outputs (a random generator's offset, statistics of the last
// forward). `state`, when set, captures that state and returns a closure that puts it back. checkpoint()
// captures it before the first run; the backward captures the state of that moment, restores the first
// capture, recomputes (so the same noise is drawn again) and restores the state of that moment (so the
// recomputation leaves no trace: statistics stay those of the last real forward, generators where they were).
//
// With grad mode off, or when no input or parameter requires grad, fn just runs (nothing to recompute).
// Outputs of fn may be undefined (passed through) or non-floating (returned detached, no gradient).
//
// Keeping the matrix products (keep = CheckpointKeep::Matmuls; PyTorch's selective activation checkpointing
// with a policy that saves matmuls): the first run also keeps the output of every matrix product it computes
// (linear, matmul: the ops that call kept_output()), and the recomputation takes those tensors back in the same
// order instead of multiplying again, so only the cheap ops between the products (norms, activations,
// convolutions, the mixers' kernels) run twice. The node holds the kept outputs until its backward. The
// recomputation must ask for the same products in the same order: it runs the same code (the same call sites,
// so even an unspecified argument evaluation order is the same) on the same data with the same state. Each
// request is checked against what was kept (op, output shape and dtype, and the weight's storage for linear /
// a leaf operand's for matmul): a recomputation that asks for other products is an error, and one that asks
// for same-shaped products of other activations in another order is not caught (it cannot happen to code
// that runs the same way twice). A kept output must not be written in place after the product (no op does).
// Nesting: a checkpoint inside a keeping one's run (first or recomputation) keeps into the outer tape, not one
// of its own (its own recomputation, later, multiplies again); NoKeepGuard suspends keeping for a scope (the
// dense attention fallback's [T, T] scores are not worth their memory).
#include <functional>
#include <memory>
#include <vector>

#include "autograd/engine.h"
#include "core/scoped_value.h"

namespace natsl {

using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;
// Captures some state; the closure returned restores it.
using StateCapture = std::function<std::function<void()>()>;

// What a checkpoint keeps from its first run besides its inputs.
enum class CheckpointKeep { Inputs, Matmuls };

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const std::vector<Tensor>& params, const StateCapture& state = nullptr,
                               CheckpointKeep keep = CheckpointKeep::Inputs);

// One input, one output.
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input,
                  const std::vector<Tensor>& params, const StateCapture& state = nullptr,
                  CheckpointKeep keep = CheckpointKeep::Inputs);

// What a kept product is checked against on the recomputation's request.
struct KeptKey {
  const char* op;         // "linear", "matmul"
  Shape shape;            // the output's
  DType dtype;            // the output's
  const void* operand;    // the storage of the weight (linear) or of a leaf operand (matmul), else null
};

namespace detail {
// The outputs a keeping checkpoint holds (defined in checkpoint.cpp).
struct KeptOutputs;
// Whether a keeping checkpoint is running now (first run or recomputation).
bool keeping();
// In a recomputation: the kept tensor for this request (a fresh handle), checked against key; in a first run:
// an undefined tensor (compute, then keep()).
Tensor take_kept(const KeptKey& key);
void keep(const Tensor& out, const KeptKey& key);
}  // namespace detail

// For an op whose output a CheckpointKeep::Matmuls checkpoint keeps (the matrix products): inside such a
// checkpoint's first run, compute() runs and its result is kept; inside its recomputation, the kept tensor is
// returned (checked against key) and compute() does not run; anywhere else compute() just runs.
template <class F>
Tensor kept_output(const KeptKey& key, F&& compute) {
  if (!detail::keeping()) return compute();
  Tensor t = detail::take_kept(key);
  if (t.defined()) return t;
  Tensor out = compute();
  detail::keep(out, key);
  return out;
}

// No keeping for a scope (kept_output just computes): RAII, restores the enclosing state.
class NoKeepGuard {
 public:
  NoKeepGuard();

 private:
  ScopedValue<detail::KeptOutputs*> tape_;
};

}  // namespace natsl
