#include "layers/short_conv.h"

#include "autograd/ops.h"

namespace natsl {

ShortConv::ShortConv(int64_t channels, int64_t kernel_size, bool apply_silu, double init_std) : apply_silu_(apply_silu) {
  register_parameter("weight", &weight_, ParamMeta{{channels, kernel_size}, ParamInit::normal(init_std)});
}

Tensor ShortConv::forward(const Tensor& x) const { return short_conv(x, weight_, apply_silu_); }

}  // namespace natsl
