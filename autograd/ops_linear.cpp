// matmul and linear. With C = op(A) op(B):  d op(A) = dC op(B)^T,  d op(B) = op(A)^T dC; a transposed
// operand's gradient is the transpose of that. Broadcast batch dims are summed back to each input's shape.
#include "autograd/checkpoint.h"
#include "autograd/engine.h"
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/reduce.h"

namespace natsl {
namespace {

Shape batch_of(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }
Shape batch_of(const Shape& s) { return Shape(s.begin(), s.end() - 2); }

Shape with_matrix(Shape batch, int64_t rows, int64_t cols) {
  batch.push_back(rows);
  batch.push_back(cols);
  return batch;
}

// t with its batch dims broadcast to `batch`, contiguous (t itself when nothing changes).
Tensor expand_batch(const Tensor& t, const Shape& batch) {
  Shape full = with_matrix(batch, t.size(-2), t.size(-1));
  return (t.shape() == full ? t : t.expand(full)).contiguous();
}

// op(a) @ op(b) for contiguous a with `batch` dims and b 2-D or with `batch` dims.
Tensor product(const Tensor& a, const Tensor& b, bool ta, bool tb, const Shape& batch) {
  Tensor out = Tensor::empty(with_matrix(batch, a.size(ta ? -1 : -2), b.size(tb ? -2 : -1)), a.dtype(), a.device());
  kernels::matmul(a, b, out, ta, tb);
  return out;
}

Tensor transpose_last(const Tensor& t) { return t.transpose(-2, -1).contiguous(); }

// A parameter's storage (a leaf that takes a gradient: the same in a checkpoint's first run, which runs without
// history, and in its recomputation), else null: what a kept product is checked against (autograd/checkpoint.h).
const void* parameter_storage(const Tensor& t) { return t.is_leaf() && t.requires_grad() ? t.data_ptr() : nullptr; }

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  NATSL_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: expects operands of rank >= 2, got ", a.str(), " and ", b.str());
  NATSL_CHECK(a.dtype() == b.dtype(), "matmul: dtypes differ: ", a.str(), " and ", b.str());
  const Shape batch = kernels::broadcast_shapes(batch_of(a), batch_of(b));
  // b stays 2-D when it is (the kernel shares it across the batch); everything else is broadcast.
  Tensor ae = expand_batch(a, batch).detach();
  Tensor be = (b.dim() == 2 ? b.contiguous() : expand_batch(b, batch)).detach();
  const Shape out_shape = with_matrix(batch, ae.size(trans_a ? -1 : -2), be.size(trans_b ? -2 : -1));
  Tensor out = kept_output({"matmul", out_shape, a.dtype(), parameter_storage(b) ? parameter_storage(b) : parameter_storage(a)},
                           [&] { return product(ae, be, trans_a, trans_b, batch); });
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const Shape ash = a.shape(), bsh = b.shape();
  record("matmul", {a, b}, {&out}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dc = g[0].contiguous();
    Tensor da, db;
    if (need_a) {
      // Straight into a's pending gradient (input_grad_sink) when a needs no transpose or batch sum.
      const Tensor sink = !trans_a && batch_of(ash) == batch ? input_grad_sink(0, ash, dc.dtype(), dc.device())
                                                            : Tensor();
      if (sink.defined()) {
        kernels::matmul(dc, be, sink, false, !trans_b, 1.0, 1.0);
        da = sink;
      } else {
        Tensor d_opa = product(dc, be, false, !trans_b, batch);  // [batch, M, K]
        da = detail::reduce_grad_to(trans_a ? transpose_last(d_opa) : d_opa, ash);
      }
    }
    if (need_b) {
      if (be.dim() == 2 && !trans_a) {
        // Shared b: fold the batch into the rows, so the batch sum happens inside one product.
        const int64_t K = ae.size(-1), N = dc.size(-1);
        Tensor a2 = ae.view({-1, K}), dc2 = dc.view({-1, N});
        db = trans_b ? product(dc2, a2, true, false, {}) : product(a2, dc2, true, false, {});
      } else {
        Tensor full = trans_b ? product(dc, ae, true, trans_a, batch) : product(ae, dc, !trans_a, false, batch);
        db = detail::reduce_grad_to(full, bsh);
      }
    }
    return {da, db};
  });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual) {
  NATSL_CHECK(x.dim() >= 1 && w.dim() == 2 && x.size(-1) == w.size(1), "linear: expects x [..., in] and w [out, in], got ",
              x.str(), " and ", w.str());
  NATSL_CHECK(x.dtype() == w.dtype(), "linear: dtypes differ: ", x.str(), " and ", w.str());
  NATSL_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == w.size(0) && bias.dtype() == w.dtype()),
              "linear: bias ", bias.str(), " for weight ", w.str());
  const int64_t in = w.size(1), outf = w.size(0);
  Shape ys = x.shape();
  ys.back() = outf;
  NATSL_CHECK(!residual.defined() || (residual.shape() == ys && residual.dtype() == x.dtype()), "linear: residual ",
              residual.str(), " for an output ", shape_str(ys), " ", dtype_name(x.dtype()));
  Tensor x2 = x.contiguous().view({-1, in}).detach();
  Tensor wc = w.contiguous().detach();
  // Kept by a checkpoint that keeps its products (autograd/checkpoint.h): its recomputation skips the GEMM.
  const char* kept_name = residual.defined() ? "linear+residual" : "linear";
  Tensor y2 = kept_output({kept_name, {x2.size(0), outf}, x.dtype(), parameter_storage(w)}, [&] {
    Tensor y = Tensor::empty({x2.size(0), outf}, x.dtype(), x.device());
    const Tensor r2 = residual.defined() ? residual.contiguous().view({-1, outf}) : Tensor();
    if (r2.defined() && !bias.defined()) {
      kernels::matmul(x2, wc, y, false, true, 1.0, 1.0, r2);
    } else {
      // With a bias: residual + (product + bias), the order of the composed ops.
      kernels::matmul(x2, wc, y, false, true);
      if (bias.defined()) kernels::binary_fwd(kernels::BinaryOp::Add, y, bias, y);
      if (r2.defined()) kernels::binary_fwd(kernels::BinaryOp::Add, r2, y, y);
    }
    return y;
  });
  Tensor y = y2.view(ys);
  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  const bool need_r = residual.defined() && residual.requires_grad();
  const Shape xs = x.shape();
  // A leaf weight (a parameter) is kept to ask the engine for its gradient sink in the backward.
  const Tensor w_leaf = need_w && w.is_leaf() ? w : Tensor();
  record("linear", {x, w, bias, residual}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dy2 = g[0].contiguous().view({-1, outf});
    Tensor dx, dw, db;
    if (need_x) {
      // dy w, added by the GEMM's beta = 1 into x's pending gradient when the engine offers it (engine.h,
      // input_grad_sink: x feeds several products, e.g. the q/k/v/gate projections of one normed input).
      const Tensor sink = input_grad_sink(0, xs, dy2.dtype(), dy2.device());
      if (sink.defined()) {
        kernels::matmul(dy2, wc, sink.view({-1, in}), false, false, 1.0, 1.0);
        dx = sink;
      } else {
        dx = product(dy2, wc, false, false, {}).view(xs);
      }
    }
    if (need_w) {
      // dy^T x, added straight into the weight's .grad when the engine allows it (engine.h, grad_sink) and
      // the product can write that dtype (f32 from bf16 operands: no bf16 rounding of dW).
      const Tensor sink = w_leaf.defined() ? grad_sink(w_leaf) : Tensor();
      if (sink.defined() && kernels::matmul_writes(dy2.dtype(), sink.dtype())) {
        kernels::matmul(dy2, x2, sink, true, false, 1.0, 1.0);
        dw = sink;
      } else {
        dw = product(dy2, x2, true, false, {});
      }
    }
    if (need_b) {
      Tensor s = Tensor::empty({1, outf}, dy2.dtype(), dy2.device());
      kernels::sum_dims(dy2, {0}, s);
      db = s.view({outf});
    }
    // The residual's gradient is the output's (the engine tells it apart from its other uses).
    return {dx, dw, db, need_r ? g[0] : Tensor()};
  });
  return y;
}

}  // namespace natsl
