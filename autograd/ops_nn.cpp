// embedding, short_conv, short_conv_l2norm, swiglu: single nodes around their fused kernels (kernels/nn.h). The
// weight gradients go straight into the parameter's .grad when the engine offers it (function.h, weight_grad_sink).
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/nn.h"

namespace natsl {

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  NATSL_CHECK(weight.dim() == 2, "embedding: weight must be [V, D], got ", weight.str());
  Shape s = ids.shape();
  s.push_back(weight.size(1));
  Tensor idc = ids.contiguous();
  Tensor out = Tensor::empty(s, weight.dtype(), weight.device());
  kernels::embedding_fwd(weight.contiguous(), idc, out);
  const Shape ws = weight.shape();
  const Tensor w_param = parameter_or_null(weight);
  record("embedding", {weight}, {&out}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    const Tensor dout = g[0].contiguous();
    // Into .grad: no zeroed [V, D] table and no add of it (for bf16 rows, no bf16 table widened into the f32 .grad).
    const Tensor sink = weight_grad_sink(w_param, dout.dtype());
    Tensor dw = sink.defined() ? sink : Tensor::zeros(ws, dout.dtype(), dout.device());
    kernels::embedding_bwd(idc, dout, dw);
    return {dw};
  });
  return out;
}

Tensor short_conv(const Tensor& x, const Tensor& w, bool apply_silu) {
  Tensor xc = x.contiguous().detach(), wc = w.contiguous().detach();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::short_conv_fwd(xc, wc, apply_silu, y);
  const Tensor w_param = parameter_or_null(w);
  record("short_conv", {x, w}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    const Tensor sink = weight_grad_sink(w_param, xc.dtype());
    Tensor dw = sink.defined() ? sink : Tensor::empty(wc.shape(), wc.dtype(), wc.device());
    kernels::short_conv_bwd(xc, wc, apply_silu, g[0].contiguous(), dx, dw, /*accumulate_dw=*/sink.defined());
    return {dx, dw};
  });
  return y;
}

Tensor short_conv_l2norm(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, double eps) {
  NATSL_CHECK(x.dim() == 3 && group >= 1 && x.size(2) % group == 0, "short_conv_l2norm: x [B, T, C] with C a multiple of ",
              "the group ", group, ", got ", x.str());
  Tensor xc = x.contiguous().detach(), wc = w.contiguous().detach();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rnorm = Tensor::empty({x.size(0), x.size(1), x.size(2) / group}, kernels::stat_dtype(x.dtype()), x.device());
  kernels::short_conv_l2norm_fwd(xc, wc, apply_silu, group, eps, y, rnorm);
  Tensor sy = y.detach();
  const Tensor w_param = parameter_or_null(w);
  record("short_conv_l2norm", {x, w}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    const Tensor sink = weight_grad_sink(w_param, xc.dtype());
    Tensor dw = sink.defined() ? sink : Tensor::empty(wc.shape(), wc.dtype(), wc.device());
    kernels::short_conv_l2norm_bwd(xc, wc, apply_silu, group, sy, rnorm, g[0].contiguous(), dx, dw,
                                   /*accumulate_dw=*/sink.defined());
    return {dx, dw};
  });
  return y;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  Tensor gc = gate.contiguous().detach(), uc = up.contiguous().detach();
  Tensor y = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  kernels::swiglu_fwd(gc, uc, y);
  record("swiglu", {gate, up}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dg = Tensor::empty(gc.shape(), gc.dtype(), gc.device());
    Tensor du = Tensor::empty(uc.shape(), uc.dtype(), uc.device());
    kernels::swiglu_bwd(gc, uc, g[0].contiguous(), dg, du);
    return {dg, du};
  });
  return y;
}

}  // namespace natsl
