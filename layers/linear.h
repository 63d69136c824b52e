#pragma once
// Linear: y = x W^T (+ b), weight [out, in] ~ N(0, std), bias (optional) zeros and not decayed.
#include "layers/module.h"

namespace natsl {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = false, double init_std = 0.02);
  Tensor forward(const Tensor& x) const;  // [..., in] -> [..., out]
  // residual + forward(x), the add in the product's epilogue (autograd linear's residual); residual [..., out]
  // or undefined (none).
  Tensor forward(const Tensor& x, const Tensor& residual) const;
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t in_, out_;
  Tensor weight_, bias_;
};

}  // namespace natsl
