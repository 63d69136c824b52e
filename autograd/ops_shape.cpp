// Shape ops: reshape, transpose, permute, slice, concat, dtype cast.
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/elementwise.h"

namespace natsl {

Tensor reshape(const Tensor& x, const Shape& shape) {
  Tensor y = x.contiguous().view(shape).detach();
  Shape xs = x.shape();
  record("reshape", {x}, {&y}, [xs](std::vector<Tensor>& g) -> std::vector<Tensor> {
    return {g[0].reshape(xs)};
  });
  return y;
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& order) {
  Tensor y = x.permute(order).contiguous().detach();
  std::vector<int64_t> inv(order.size());
  for (size_t i = 0; i < order.size(); ++i) inv[size_t(order[i] < 0 ? order[i] + x.dim() : order[i])] = int64_t(i);
  record("permute", {x}, {&y}, [inv](std::vector<Tensor>& g) -> std::vector<Tensor> {
    return {g[0].permute(inv).contiguous()};
  });
  return y;
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> order(size_t(x.dim()));
  for (int64_t i = 0; i < x.dim(); ++i) order[size_t(i)] = i;
  if (d0 < 0) d0 += x.dim();
  if (d1 < 0) d1 += x.dim();
  std::swap(order[size_t(d0)], order[size_t(d1)]);
  return permute(x, order);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end) {
  Tensor view = x.slice(dim, start, end);
  Tensor y = view.contiguous();
  if (y.same(view) || y.storage() == x.storage()) y = view.clone();
  Shape xs = x.shape();
  int64_t d = dim < 0 ? dim + x.dim() : dim;
  int64_t s0 = start < 0 ? start + xs[size_t(d)] : start;
  int64_t s1 = s0 + y.shape()[size_t(d)];
  record("slice", {x}, {&y}, [xs, d, s0, s1](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::zeros(xs, g[0].dtype(), g[0].device());
    dx.slice(d, s0, s1).copy_(g[0]);
    return {dx};
  });
  return y;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  NATSL_CHECK(!xs.empty(), "concat of no tensors");
  int64_t d = dim < 0 ? dim + xs[0].dim() : dim;
  Shape s = xs[0].shape();
  int64_t total = 0;
  for (const Tensor& t : xs) {
    NATSL_CHECK(t.dim() == xs[0].dim() && t.dtype() == xs[0].dtype() && t.device() == xs[0].device(),
                "concat: ", t.str(), " does not match ", xs[0].str());
    for (int64_t i = 0; i < t.dim(); ++i)
      if (i != d) NATSL_CHECK(t.shape()[size_t(i)] == s[size_t(i)], "concat: ", t.str(), " vs ", xs[0].str());
    total += t.shape()[size_t(d)];
  }
  s[size_t(d)] = total;
  Tensor y = Tensor::empty(s, xs[0].dtype(), xs[0].device());
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& t : xs) {
    starts.push_back(at);
    y.slice(d, at, at + t.shape()[size_t(d)]).copy_(t);
    at += t.shape()[size_t(d)];
  }
  std::vector<int64_t> sizes;
  for (const Tensor& t : xs) sizes.push_back(t.shape()[size_t(d)]);
  record("concat", xs, {&y}, [d, starts, sizes](std::vector<Tensor>& g) -> std::vector<Tensor> {
    std::vector<Tensor> out;
    for (size_t i = 0; i < starts.size(); ++i) out.push_back(g[0].slice(d, starts[i], starts[i] + sizes[i]).contiguous());
    return out;
  });
  return y;
}

Tensor to_dtype(const Tensor& x, DType dt) {
  Tensor y = x.dtype() == dt ? x.contiguous().clone() : x.to(dt).contiguous();
  DType src = x.dtype();
  const Tensor x_param = parameter_or_null(x);
  record("to_dtype", {x}, {&y}, [src, x_param](std::vector<Tensor>& g) -> std::vector<Tensor> {
    // A parameter cast for its use (the router weight to f32): its gradient added and cast into its .grad in one pass
    // when the engine offers it (engine.h, grad_sink), not cast back and added by AccumulateGrad (for a bf16
    // parameter with an f32 .grad, that also skips the bf16 rounding of the gradient).
    const Tensor sink = x_param.defined() ? grad_sink(x_param) : Tensor();
    if (sink.defined()) {
      kernels::add_into(g[0].contiguous(), sink);
      return {sink};
    }
    return {g[0].to(src).contiguous()};
  });
  return y;
}

}  // namespace natsl
