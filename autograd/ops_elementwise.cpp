// Arithmetic, unary maps and reductions.
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace natsl {

using kernels::BinaryOp;
using kernels::UnaryOp;

namespace detail {
Tensor reduce_grad_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  kernels::sum_to_shape(g, out);
  return out;
}
}  // namespace detail

namespace {
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  NATSL_CHECK(a.dtype() == b.dtype(), name, ": dtypes ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()));
  Shape s = kernels::broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(s, a.dtype(), a.device());
  kernels::binary_fwd(op, a, b, out);
  bool need_a = a.requires_grad(), need_b = b.requires_grad();
  // Mul/Div need the other operand; save detached views (no history, no cycle).
  Tensor sa = (op == BinaryOp::Mul || op == BinaryOp::Div) ? b.detach() : Tensor();
  Tensor sb = (op == BinaryOp::Mul || op == BinaryOp::Div) ? a.detach() : Tensor();
  Shape ash = a.shape(), bsh = b.shape();
  record(name, {a, b}, {&out}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    const Tensor& dy = g[0];
    Tensor da, db;
    switch (op) {
      case BinaryOp::Add:
        if (need_a) da = detail::reduce_grad_to(dy, ash);
        if (need_b) db = detail::reduce_grad_to(dy, bsh);
        break;
      case BinaryOp::Sub:
        if (need_a) da = detail::reduce_grad_to(dy, ash);
        if (need_b) {
          Tensor n = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
          kernels::scale(dy.contiguous(), -1.0, n);
          db = detail::reduce_grad_to(n, bsh);
        }
        break;
      case BinaryOp::Mul: {
        if (need_a) {
          Tensor t = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
          kernels::binary_fwd(BinaryOp::Mul, dy, sa, t);  // dy * b
          da = detail::reduce_grad_to(t, ash);
        }
        if (need_b) {
          Tensor t = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
          kernels::binary_fwd(BinaryOp::Mul, dy, sb, t);  // dy * a
          db = detail::reduce_grad_to(t, bsh);
        }
        break;
      }
      case BinaryOp::Div: {
        // y = a / b: da = dy / b, db = -dy * a / b^2 = -(dy / b) * (a / b)
        Tensor q = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
        kernels::binary_fwd(BinaryOp::Div, dy, sa, q);
        if (need_a) da = detail::reduce_grad_to(q, ash);
        if (need_b) {
          Tensor ab = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
          kernels::binary_fwd(BinaryOp::Div, sb, sa, ab);
          kernels::binary_fwd(BinaryOp::Mul, q, ab, ab);
          kernels::scale(ab, -1.0, ab);
          db = detail::reduce_grad_to(ab, bsh);
        }
        break;
      }
    }
    return {da, db};
  });
  return out;
}

Tensor unary(UnaryOp op, const Tensor& x) {
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  kernels::unary_fwd(op, xc, y);
  Tensor sx = xc.detach(), sy = y.detach();
  record(kernels::unary_name(op), {x}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(sx.shape(), sx.dtype(), sx.device());
    kernels::unary_bwd(op, sx, sy, g[0].contiguous(), dx);
    return {dx};
  });
  return y;
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Add, a, b, "add"); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Sub, a, b, "sub"); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Mul, a, b, "mul"); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Div, a, b, "div"); }

Tensor mul_scalar(const Tensor& a, double s) {
  Tensor ac = a.contiguous();
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  kernels::scale(ac, s, y);
  record("mul_scalar", {a}, {&y}, [s](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(g[0].shape(), g[0].dtype(), g[0].device());
    kernels::scale(g[0].contiguous(), s, dx);
    return {dx};
  });
  return y;
}

Tensor add_scalar(const Tensor& a, double s) {
  Tensor c = Tensor::full({}, s, a.dtype(), a.device());
  return binary(BinaryOp::Add, a, c, "add_scalar");
}

Tensor neg(const Tensor& a) { return mul_scalar(a, -1.0); }
Tensor exp(const Tensor& x) { return unary(UnaryOp::Exp, x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::Log, x); }
Tensor silu(const Tensor& x) { return unary(UnaryOp::Silu, x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::Sigmoid, x); }
Tensor softplus(const Tensor& x) { return unary(UnaryOp::Softplus, x); }
Tensor tanh(const Tensor& x) { return unary(UnaryOp::Tanh, x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::Sqrt, x); }
Tensor square(const Tensor& x) { return unary(UnaryOp::Square, x); }

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  std::vector<int64_t> dims;
  for (int64_t d : dims_in) dims.push_back(d < 0 ? d + x.dim() : d);
  Shape keep = x.shape();
  for (int64_t d : dims) {
    NATSL_CHECK(d >= 0 && d < x.dim(), "sum: dim out of range for ", x.str());
    keep[d] = 1;
  }
  Tensor out = Tensor::empty(keep, x.dtype(), x.device());
  kernels::sum_dims(x, dims, out);
  if (!keepdim) {
    Shape s;
    for (int64_t i = 0; i < x.dim(); ++i)
      if (std::find(dims.begin(), dims.end(), i) == dims.end()) s.push_back(x.shape()[i]);
    out = out.view(s);
  }
  Shape xs = x.shape();
  record("sum", {x}, {&out}, [xs, keep](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(xs, g[0].dtype(), g[0].device());
    dx.copy_(g[0].reshape(keep).expand(xs));
    return {dx};
  });
  return out;
}

Tensor sum(const Tensor& x) {
  std::vector<int64_t> all;
  for (int64_t i = 0; i < x.dim(); ++i) all.push_back(i);
  return sum(x, all, false);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  int64_t n = 1;
  for (int64_t d : dims) n *= x.size(d);
  return mul_scalar(sum(x, dims, keepdim), 1.0 / double(std::max<int64_t>(n, 1)));
}

Tensor mean(const Tensor& x) { return mul_scalar(sum(x), 1.0 / double(std::max<int64_t>(x.numel(), 1))); }

}  // namespace natsl
