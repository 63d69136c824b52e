// softmax and log_softmax over the last dim; both backwards need only the output y.
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/nn.h"

namespace natsl {
namespace {
using Kernel = void (*)(const Tensor&, const Tensor&);
using BackwardKernel = void (*)(const Tensor&, const Tensor&, const Tensor&);

Tensor row_map(const char* name, const Tensor& x, Kernel fwd, BackwardKernel bwd) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  fwd(x.contiguous(), y);
  Tensor sy = y.detach();
  record(name, {x}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(sy.shape(), sy.dtype(), sy.device());
    bwd(sy, g[0].contiguous(), dx);
    return {dx};
  });
  return y;
}
}  // namespace

Tensor softmax(const Tensor& x) {
  return row_map("softmax", x, &kernels::softmax_fwd, &kernels::softmax_bwd);
}

Tensor log_softmax(const Tensor& x) {
  return row_map("log_softmax", x, &kernels::log_softmax_fwd, &kernels::log_softmax_bwd);
}

}  // namespace natsl
