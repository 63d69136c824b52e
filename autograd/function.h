#pragma once
// FunctionNode: a Node whose backward is a closure. The closure captures what the backward needs (saved
// tensors); release_saved() drops the closure, freeing them. Capture outputs only through detach(): an
// output holds its grad_fn, so capturing the output itself would make a cycle.
#include <functional>
#include <string>

#include "autograd/engine.h"

namespace natsl {

class FunctionNode : public Node {
 public:
  using Backward = std::function<std::vector<Tensor>(std::vector<Tensor>& grads)>;
  FunctionNode(std::string name, Backward bw) : name_(std::move(name)), backward_(std::move(bw)) {}
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    NATSL_CHECK(backward_ != nullptr, "backward through ", name_,
                " a second time: its saved tensors were released; pass retain_graph=true to the first backward");
    return backward_(grads);
  }
  std::string name() const override { return name_; }
  void release_saved() override { backward_ = nullptr; }

 private:
  std::string name_;
  Backward backward_;
};

// Records `outputs` as produced from `inputs` by a node running `bw`, if any input requires grad.
// Gradients in bw's result line up with `inputs`.
inline void record(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor*> outputs,
                   FunctionNode::Backward bw) {
  if (!any_requires_grad(inputs)) return;
  attach(std::make_shared<FunctionNode>(name, std::move(bw)), inputs, outputs);
}

// The gradient of output i, or zeros of its shape when none reached it.
inline Tensor grad_or_zeros(std::vector<Tensor>& grads, size_t i, const Tensor& like) {
  if (i < grads.size() && grads[i].defined()) return grads[i].contiguous();
  return Tensor::zeros(like.shape(), like.dtype(), like.device());
}

}  // namespace natsl
