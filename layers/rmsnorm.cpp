#include "layers/rmsnorm.h"

#include "autograd/ops.h"

namespace natsl {

RMSNorm::RMSNorm(int64_t dim, double eps) : eps_(eps) {
  register_parameter("weight", &weight_, ParamMeta{{dim}, ParamInit::ones(), /*no_decay=*/true});
}

Tensor RMSNorm::forward(const Tensor& x) const { return rmsnorm(x, weight_, eps_); }

}  // namespace natsl
