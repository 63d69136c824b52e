#pragma once
// FunctionNode: a Node whose backward is a closure. The closure captures what the backward needs (saved
// tensors); release_saved() drops the closure, freeing them. Capture outputs only through detach(): an
// output holds its grad_fn, so capturing the output itself would make a cycle.
#include <functional>
#include <string>

#include "autograd/engine.h"
#include "kernels/nn.h"

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

// The sink for a parameter's weight gradient computed by a kernel with an accumulate mode (kernels/nn.h,
// weight_grad_writes): grad_sink(param) when `param` is a leaf that requires grad and its .grad is a tensor such a
// kernel writes for data of dtype `data` (the data's dtype, or f32 for bf16 data), else undefined. An op that gets
// one adds its weight gradient into it and returns it (engine.h): AccumulateGrad then adds nothing.
inline Tensor weight_grad_sink(const Tensor& param, DType data) {
  if (!param.defined() || !param.is_leaf() || !param.requires_grad()) return {};
  Tensor sink = grad_sink(param);
  return sink.defined() && kernels::weight_grad_writes(data, sink.dtype()) ? sink : Tensor();
}

// `t` when it is a parameter (a leaf that requires grad), for its op's backward to ask weight_grad_sink; else undefined.
inline Tensor parameter_or_null(const Tensor& t) {
  return t.defined() && t.is_leaf() && t.requires_grad() ? t : Tensor();
}

// The gradient of output i, or zeros of its shape when none reached it.
inline Tensor grad_or_zeros(std::vector<Tensor>& grads, size_t i, const Tensor& like) {
  if (i < grads.size() && grads[i].defined()) return grads[i].contiguous();
  return Tensor::zeros(like.shape(), like.dtype(), like.device());
}

}  // namespace natsl
