#pragma once
// GatedMLP (SwiGLU, as FLA's GatedMLP): y = down_proj(silu(gate_proj(x)) * up_proj(x)), no biases.
#include <memory>

#include "layers/linear.h"

namespace natsl {

class GatedMLP : public Module {
 public:
  GatedMLP(int64_t hidden_size, int64_t intermediate_size, double init_std = 0.02);
  Tensor forward(const Tensor& x) const;
  // residual + forward(x), the residual added by down_proj's GEMM (undefined: none).
  Tensor forward(const Tensor& x, const Tensor& residual) const;
  const Linear& gate_proj() const { return *gate_proj_; }
  const Linear& up_proj() const { return *up_proj_; }
  const Linear& down_proj() const { return *down_proj_; }

 private:
  std::shared_ptr<Linear> gate_proj_, up_proj_, down_proj_;
};

}  // namespace natsl
