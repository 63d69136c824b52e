#include "layers/gated_mlp.h"

#include "autograd/ops.h"

namespace natsl {

GatedMLP::GatedMLP(int64_t hidden_size, int64_t intermediate_size, double init_std) {
  gate_proj_ = register_module("gate_proj", std::make_shared<Linear>(hidden_size, intermediate_size, false, init_std));
  up_proj_ = register_module("up_proj", std::make_shared<Linear>(hidden_size, intermediate_size, false, init_std));
  down_proj_ = register_module("down_proj", std::make_shared<Linear>(intermediate_size, hidden_size, false, init_std));
}

Tensor GatedMLP::forward(const Tensor& x) const { return forward(x, Tensor()); }

Tensor GatedMLP::forward(const Tensor& x, const Tensor& residual) const {
  return down_proj_->forward(swiglu(gate_proj_->forward(x), up_proj_->forward(x)), residual);
}

}  // namespace natsl
