// rmsnorm, rmsnorm_gate and l2norm over the last dim: single nodes keeping the per-row statistic from the forward.
#include "autograd/engine.h"
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/nn.h"

namespace natsl {
namespace {
// One statistic per row of x, shaped like x without its last dim.
Tensor row_stats(const Tensor& x) {
  Shape s(x.shape().begin(), x.shape().end() - 1);
  return Tensor::empty(s, kernels::stat_dtype(x.dtype()), x.device());
}
}  // namespace

Tensor rmsnorm(const Tensor& x, const Tensor& weight, double eps) {
  NATSL_CHECK(x.dim() >= 1, "rmsnorm: expects at least 1-D input, got ", x.str());
  Tensor xc = x.contiguous().detach();
  Tensor wc = weight.defined() ? weight.contiguous().detach() : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = row_stats(x);
  kernels::rmsnorm_fwd(xc, wc, eps, y, rstd);
  const Tensor w_param = parameter_or_null(weight);
  record("rmsnorm", {x, weight}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    // Straight into x's pending gradient when the engine offers it (engine.h, input_grad_sink): a pre-norm's
    // input is the residual stream, whose gradient from the residual add is already there.
    const Tensor sink = input_grad_sink(0, xc.shape(), xc.dtype(), xc.device());
    Tensor dx = sink.defined() ? sink : Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    // dw straight into the weight's .grad when the engine offers it (function.h, weight_grad_sink).
    const Tensor dw_sink = weight_grad_sink(w_param, xc.dtype());
    Tensor dw = dw_sink.defined() ? dw_sink : wc.defined() ? Tensor::empty(wc.shape(), wc.dtype(), wc.device()) : Tensor();
    kernels::rmsnorm_bwd(xc, wc, rstd, g[0].contiguous(), dx, dw, /*accumulate_dx=*/sink.defined(),
                         /*accumulate_dw=*/dw_sink.defined());
    return {dx, dw};
  });
  return y;
}

Tensor rmsnorm_gate(const Tensor& x, const Tensor& weight, const Tensor& z, double eps) {
  NATSL_CHECK(x.dim() >= 1 && weight.defined() && z.defined(),
              "rmsnorm_gate: expects x [..., D], a weight [D] and a gate z like x, got ", x.str());
  Tensor xc = x.contiguous().detach(), wc = weight.contiguous().detach(), zc = z.contiguous().detach();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = row_stats(x);
  kernels::norm_gate_fwd(xc, zc, wc, eps, y, rstd);
  const Tensor w_param = parameter_or_null(weight);
  record("rmsnorm_gate", {x, weight, z}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    auto like = [](const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); };
    // dw straight into the weight's .grad when the engine offers it (function.h, weight_grad_sink).
    const Tensor dw_sink = weight_grad_sink(w_param, xc.dtype());
    Tensor dx = like(xc), dw = dw_sink.defined() ? dw_sink : like(wc), dz = like(zc);
    kernels::norm_gate_bwd(xc, zc, wc, rstd, g[0].contiguous(), dx, dz, dw, /*accumulate_dgamma=*/dw_sink.defined());
    return {dx, dw, dz};
  });
  return y;
}

Tensor l2norm(const Tensor& x, double eps) {
  NATSL_CHECK(x.dim() >= 1, "l2norm: expects at least 1-D input, got ", x.str());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rnorm = row_stats(x);
  kernels::l2norm_fwd(x.contiguous(), eps, y, rnorm);
  Tensor sy = y.detach();
  record("l2norm", {x}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(sy.shape(), sy.dtype(), sy.device());
    kernels::l2norm_bwd(sy, rnorm, g[0].contiguous(), dx);
    return {dx};
  });
  return y;
}

}  // namespace natsl
