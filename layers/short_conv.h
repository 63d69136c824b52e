#pragma once
// ShortConv: causal depthwise convolution over time, y[b,t,c] = act(sum_j w[c,j] x[b,t-W+1+j,c]) with zero
// padding before t = 0 (so w[c, W-1] multiplies the current token), act = SiLU or identity. Weight [C, W]
// ~ N(0, std), no bias (FLA's ShortConvolution stores it as a Conv1d weight [C, 1, W]).
#include "layers/module.h"

namespace natsl {

class ShortConv : public Module {
 public:
  ShortConv(int64_t channels, int64_t kernel_size = 4, bool apply_silu = true, double init_std = 0.02);
  Tensor forward(const Tensor& x) const;  // [B, T, C] -> [B, T, C]
  const Tensor& weight() const { return weight_; }
  bool apply_silu() const { return apply_silu_; }

 private:
  bool apply_silu_;
  Tensor weight_;
};

}  // namespace natsl
