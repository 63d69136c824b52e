// embedding, short_conv, short_conv_l2norm, swiglu: single nodes around their fused kernels (kernels/nn.h).
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
  record("embedding", {weight}, {&out}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dw = Tensor::zeros(ws, g[0].dtype(), g[0].device());
    kernels::embedding_bwd(idc, g[0].contiguous(), dw);
    return {dw};
  });
  return out;
}

Tensor short_conv(const Tensor& x, const Tensor& w, bool apply_silu) {
  Tensor xc = x.contiguous().detach(), wc = w.contiguous().detach();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::short_conv_fwd(xc, wc, apply_silu, y);
  record("short_conv", {x, w}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    Tensor dw = Tensor::empty(wc.shape(), wc.dtype(), wc.device());
    kernels::short_conv_bwd(xc, wc, apply_silu, g[0].contiguous(), dx, dw);
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
  record("short_conv_l2norm", {x, w}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    Tensor dw = Tensor::empty(wc.shape(), wc.dtype(), wc.device());
    kernels::short_conv_l2norm_bwd(xc, wc, apply_silu, group, sy, rnorm, g[0].contiguous(), dx, dw);
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
