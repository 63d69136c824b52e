#include "layers/linear.h"

#include "autograd/ops.h"

namespace natsl {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, double init_std)
    : in_(in_features), out_(out_features) {
  register_parameter("weight", &weight_, ParamMeta{{out_, in_}, ParamInit::normal(init_std)});
  if (bias) register_parameter("bias", &bias_, ParamMeta{{out_}, ParamInit::zeros(), /*no_decay=*/true});
}

Tensor Linear::forward(const Tensor& x) const { return linear(x, weight_, bias_); }

Tensor Linear::forward(const Tensor& x, const Tensor& residual) const { return linear(x, weight_, bias_, residual); }

}  // namespace natsl
