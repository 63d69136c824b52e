#include "kernels/elementwise.h"

#include "kernels/dispatch.h"

namespace natsl::kernels {

const char* unary_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg: return "neg";
    case UnaryOp::Exp: return "exp";
    case UnaryOp::Log: return "log";
    case UnaryOp::Silu: return "silu";
    case UnaryOp::Sigmoid: return "sigmoid";
    case UnaryOp::Softplus: return "softplus";
    case UnaryOp::Tanh: return "tanh";
    case UnaryOp::Sqrt: return "sqrt";
    case UnaryOp::Square: return "square";
  }
  return "?";
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    NATSL_CHECK(da == db || da == 1 || db == 1, "shapes ", shape_str(a), " and ", shape_str(b),
                " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

void unary_fwd(UnaryOp op, const Tensor& x, const Tensor& y) {
  Device d = common_device({&x, &y}, "unary_fwd");
  check_contiguous({&x, &y}, "unary_fwd");
  check_same_shape(x, y, "unary_fwd");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::unary_fwd(op, x, y));
  else cpu::unary_fwd(op, x, y);
}

void unary_bwd(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) {
  Device d = common_device({&x, &y, &dy, &dx}, "unary_bwd");
  check_contiguous({&x, &y, &dy, &dx}, "unary_bwd");
  check_same_shape(dy, dx, "unary_bwd");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::unary_bwd(op, x, y, dy, dx));
  else cpu::unary_bwd(op, x, y, dy, dx);
}

void binary_fwd(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  Device d = common_device({&a, &b, &out}, "binary_fwd");
  check_contiguous({&out}, "binary_fwd");
  Shape s = broadcast_shapes(a.shape(), b.shape());
  NATSL_CHECK(s == out.shape(), "binary_fwd: out ", shape_str(out.shape()), " for broadcast shape ", shape_str(s));
  NATSL_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), "binary_fwd: dtypes ",
              dtype_name(a.dtype()), ", ", dtype_name(b.dtype()), " -> ", dtype_name(out.dtype()));
  Tensor ae = a.shape() == s ? a : a.expand(s);
  Tensor be = b.shape() == s ? b : b.expand(s);
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::binary_fwd(op, ae, be, out));
  else cpu::binary_fwd(op, ae, be, out);
}

void axpby(double alpha, const Tensor& x, double beta, const Tensor& y, const Tensor& out) {
  Device d = common_device({&x, &y, &out}, "axpby");
  check_contiguous({&x, &y, &out}, "axpby");
  check_same_shape(x, out, "axpby");
  check_same_shape(y, out, "axpby");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::axpby(alpha, x, beta, y, out));
  else cpu::axpby(alpha, x, beta, y, out);
}

void scale(const Tensor& x, double s, const Tensor& out) { axpby(s, x, 0.0, x, out); }

void add_into(const Tensor& x, const Tensor& out) {
  Device d = common_device({&x, &out}, "add_into");
  check_contiguous({&x, &out}, "add_into");
  check_same_shape(x, out, "add_into");
  NATSL_CHECK(is_floating(x.dtype()) && is_floating(out.dtype()), "add_into: expects floating tensors, got ", x.str(),
              " and ", out.str());
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::add_into(x, out));
  else cpu::add_into(x, out);
}

}  // namespace natsl::kernels
