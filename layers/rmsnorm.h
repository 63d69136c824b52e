#pragma once
// RMSNorm over the last dim: y = x / sqrt(mean(x^2) + eps) * w, w initialised to 1 (not decayed).
#include "layers/module.h"

namespace natsl {

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, double eps);
  Tensor forward(const Tensor& x) const;
  const Tensor& weight() const { return weight_; }
  double eps() const { return eps_; }

 private:
  double eps_;
  Tensor weight_;
};

}  // namespace natsl
