#include "kernels/nn.h"

#include "kernels/dispatch.h"

namespace natsl::kernels {
namespace {

#define NATSL_NN_DISPATCH(dev, fn, ...)                   \
  do {                                                   \
    if ((dev).is_cuda()) NATSL_CUDA_ONLY(cuda::fn(__VA_ARGS__)); \
    else cpu::fn(__VA_ARGS__);                           \
  } while (0)

void check_floating(const Tensor& t, const char* op, const char* what) {
  NATSL_CHECK(is_floating(t.dtype()), op, ": ", what, " must be floating, got ", t.str());
}
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  NATSL_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", a.str(), " and ", b.str());
}
void check_index(const Tensor& ids, const char* op) {
  NATSL_CHECK(ids.dtype() == DType::i32 || ids.dtype() == DType::i64, op, ": ids must be i32 or i64, got ",
              ids.str());
}
// A statistics tensor: one value per row, in stat_dtype(data).
void check_stats(const Tensor& s, const Tensor& data, const char* op, const char* what) {
  const int64_t D = data.dim() > 0 ? data.size(-1) : 1;
  const int64_t rows = D > 0 ? data.numel() / D : 0;
  NATSL_CHECK(s.numel() == rows && s.dtype() == stat_dtype(data.dtype()), op, ": ", what, " must hold ", rows,
              " ", dtype_name(stat_dtype(data.dtype())), " values (one per row of ", data.str(), "), got ", s.str());
}
void check_rows(const Tensor& x, const char* op) {
  NATSL_CHECK(x.dim() >= 1, op, ": expects at least 1-D input, got ", x.str());
  check_floating(x, op, "input");
}

// A row-wise map x -> y (softmax, log-softmax; l2norm with its per-row statistics `stats`, called
// `stats_name`): returns the one device of all.
Device check_rowwise_fwd(const Tensor& x, const Tensor& y, const char* op, const Tensor* stats = nullptr,
                         const char* stats_name = nullptr) {
  Device d = common_device({&x, &y, stats}, op);
  check_contiguous({&x, &y, stats}, op);
  check_rows(x, op);
  check_same_shape(x, y, op);
  check_same_dtype(x, y, op);
  if (stats) check_stats(*stats, x, op, stats_name);
  return d;
}
// Its backward from the output: (y, dy) -> dx.
Device check_rowwise_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx, const char* op,
                         const Tensor* stats = nullptr, const char* stats_name = nullptr) {
  Device d = common_device({&y, stats, &dy, &dx}, op);
  check_contiguous({&y, stats, &dy, &dx}, op);
  check_rows(y, op);
  check_same_shape(y, dy, op);
  check_same_shape(y, dx, op);
  check_same_dtype(y, dy, op);
  check_same_dtype(y, dx, op);
  if (stats) check_stats(*stats, y, op, stats_name);
  return d;
}

// An embedding lookup (table = weight, rows = out) or its gradient (table = dweight, rows = dout): `table`
// floating [V, D], `ids` i32 or i64 of any shape, `rows` ids' shape + [D] in the table's dtype (the gradient: a
// table in rows' dtype or f32 for bf16 rows, weight_grad_writes). Returns the one device of the three.
Device check_embedding(const Tensor& table, const char* table_name, const Tensor& ids, const Tensor& rows,
                       const char* rows_name, const char* op, bool gradient = false) {
  Device d = common_device({&table, &ids, &rows}, op);
  check_contiguous({&table, &ids, &rows}, op);
  check_index(ids, op);
  check_floating(table, op, table_name);
  if (gradient)
    NATSL_CHECK(weight_grad_writes(rows.dtype(), table.dtype()), op, ": ", table_name, " ", table.str(),
                " for ", rows_name, " ", rows.str(), " (its dtype or f32 for bf16)");
  else
    check_same_dtype(table, rows, op);
  NATSL_CHECK(table.dim() == 2, op, ": ", table_name, " must be [V, D], got ", table.str());
  Shape want = ids.shape();
  want.push_back(table.size(1));
  NATSL_CHECK(rows.shape() == want, op, ": ", rows_name, " ", rows.str(), " should be ", shape_str(want));
  return d;
}

}  // namespace

void check_weight_grad(const Tensor& data, const Tensor& dw, const char* op) {
  if (!dw.defined()) return;
  NATSL_CHECK(weight_grad_writes(data.dtype(), dw.dtype()), op, ": the weight gradient ", dw.str(), " must be in the ",
              "data's dtype (or f32 for bf16 data), data ", data.str());
}

void embedding_fwd(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  Device d = check_embedding(weight, "weight", ids, out, "out", "embedding_fwd");
  NATSL_NN_DISPATCH(d, embedding_fwd, weight, ids, out);
}

void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight) {
  Device d = check_embedding(dweight, "dweight", ids, dout, "dout", "embedding_bwd", /*gradient=*/true);
  NATSL_NN_DISPATCH(d, embedding_bwd, ids, dout, dweight);
}

void rmsnorm_fwd(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd) {
  Device d = common_device({&x, &w, &y, &rstd}, "rmsnorm_fwd");
  check_contiguous({&x, &w, &y, &rstd}, "rmsnorm_fwd");
  check_rows(x, "rmsnorm_fwd");
  check_same_shape(x, y, "rmsnorm_fwd");
  check_same_dtype(x, y, "rmsnorm_fwd");
  if (w.defined()) {
    check_same_dtype(x, w, "rmsnorm_fwd");
    NATSL_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), "rmsnorm_fwd: weight ", w.str(), " for input ", x.str());
  }
  check_stats(rstd, x, "rmsnorm_fwd", "rstd");
  NATSL_NN_DISPATCH(d, rmsnorm_fwd, x, w, eps, y, rstd);
}

void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                 const Tensor& dw, bool accumulate_dx, bool accumulate_dw) {
  Device d = common_device({&x, &w, &rstd, &dy, &dx, &dw}, "rmsnorm_bwd");
  check_contiguous({&x, &w, &rstd, &dy, &dx, &dw}, "rmsnorm_bwd");
  check_rows(x, "rmsnorm_bwd");
  check_same_shape(x, dy, "rmsnorm_bwd");
  check_same_shape(x, dx, "rmsnorm_bwd");
  check_same_dtype(x, dy, "rmsnorm_bwd");
  check_same_dtype(x, dx, "rmsnorm_bwd");
  check_stats(rstd, x, "rmsnorm_bwd", "rstd");
  NATSL_CHECK(w.defined() == dw.defined(), "rmsnorm_bwd: dw must be given exactly when w is");
  if (w.defined()) {
    NATSL_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), "rmsnorm_bwd: weight ", w.str(), " for input ", x.str());
    check_same_shape(w, dw, "rmsnorm_bwd");
    check_same_dtype(x, w, "rmsnorm_bwd");
    check_weight_grad(x, dw, "rmsnorm_bwd");
  }
  NATSL_NN_DISPATCH(d, rmsnorm_bwd, x, w, rstd, dy, dx, dw, accumulate_dx, accumulate_dw);
}

void l2norm_fwd(const Tensor& x, double eps, const Tensor& y, const Tensor& rnorm) {
  Device d = check_rowwise_fwd(x, y, "l2norm_fwd", &rnorm, "rnorm");
  NATSL_NN_DISPATCH(d, l2norm_fwd, x, eps, y, rnorm);
}

void l2norm_bwd(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx) {
  Device d = check_rowwise_bwd(y, dy, dx, "l2norm_bwd", &rnorm, "rnorm");
  NATSL_NN_DISPATCH(d, l2norm_bwd, y, rnorm, dy, dx);
}

void softmax_fwd(const Tensor& x, const Tensor& y) {
  Device d = check_rowwise_fwd(x, y, "softmax_fwd");
  NATSL_NN_DISPATCH(d, softmax_fwd, x, y);
}

void softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  Device d = check_rowwise_bwd(y, dy, dx, "softmax_bwd");
  NATSL_NN_DISPATCH(d, softmax_bwd, y, dy, dx);
}

void log_softmax_fwd(const Tensor& x, const Tensor& y) {
  Device d = check_rowwise_fwd(x, y, "log_softmax_fwd");
  NATSL_NN_DISPATCH(d, log_softmax_fwd, x, y);
}

void log_softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  Device d = check_rowwise_bwd(y, dy, dx, "log_softmax_bwd");
  NATSL_NN_DISPATCH(d, log_softmax_bwd, y, dy, dx);
}

namespace {
void check_ce_shapes(const Tensor& logits, const Tensor& targets, const char* op) {
  check_floating(logits, op, "logits");
  check_index(targets, op);
  NATSL_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0), op,
              ": expects logits [N, V] and targets [N], got ", logits.str(), " and ", targets.str());
}
}  // namespace

void cross_entropy_fwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& losses,
                       const Tensor& lse, const Tensor& valid) {
  Device d = common_device({&logits, &targets, &losses, &lse, &valid}, "cross_entropy_fwd");
  check_contiguous({&logits, &targets, &losses, &lse, &valid}, "cross_entropy_fwd");
  check_ce_shapes(logits, targets, "cross_entropy_fwd");
  check_stats(losses, logits, "cross_entropy_fwd", "losses");
  check_stats(lse, logits, "cross_entropy_fwd", "lse");
  check_stats(valid, logits, "cross_entropy_fwd", "valid");
  NATSL_NN_DISPATCH(d, cross_entropy_fwd, logits, targets, ignore_index, losses, lse, valid);
}

void cross_entropy_bwd(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_scale,
                       int64_t ignore_index, const Tensor& dlogits) {
  Device d = common_device({&logits, &targets, &lse, &grad_scale, &dlogits}, "cross_entropy_bwd");
  check_contiguous({&logits, &targets, &lse, &grad_scale, &dlogits}, "cross_entropy_bwd");
  check_ce_shapes(logits, targets, "cross_entropy_bwd");
  check_stats(lse, logits, "cross_entropy_bwd", "lse");
  NATSL_CHECK(grad_scale.numel() == 1 && grad_scale.dtype() == stat_dtype(logits.dtype()),
              "cross_entropy_bwd: grad_scale must be one ", dtype_name(stat_dtype(logits.dtype())), " value, got ",
              grad_scale.str());
  check_same_shape(logits, dlogits, "cross_entropy_bwd");
  check_same_dtype(logits, dlogits, "cross_entropy_bwd");
  NATSL_NN_DISPATCH(d, cross_entropy_bwd, logits, targets, lse, grad_scale, ignore_index, dlogits);
}

namespace {
void check_conv(const Tensor& x, const Tensor& w, const char* op) {
  check_floating(x, op, "x");
  check_same_dtype(x, w, op);
  NATSL_CHECK(x.dim() == 3 && w.dim() == 2 && w.size(0) == x.size(2) && w.size(1) >= 1, op,
              ": expects x [B, T, C] and w [C, W], got ", x.str(), " and ", w.str());
}
}  // namespace

void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y) {
  Device d = common_device({&x, &w, &y}, "short_conv_fwd");
  check_contiguous({&x, &w, &y}, "short_conv_fwd");
  check_conv(x, w, "short_conv_fwd");
  check_same_shape(x, y, "short_conv_fwd");
  check_same_dtype(x, y, "short_conv_fwd");
  NATSL_NN_DISPATCH(d, short_conv_fwd, x, w, apply_silu, y);
}

void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,
                    const Tensor& dw, bool accumulate_dw) {
  Device d = common_device({&x, &w, &dy, &dx, &dw}, "short_conv_bwd");
  check_contiguous({&x, &w, &dy, &dx, &dw}, "short_conv_bwd");
  check_conv(x, w, "short_conv_bwd");
  check_same_shape(x, dy, "short_conv_bwd");
  check_same_shape(x, dx, "short_conv_bwd");
  check_same_shape(w, dw, "short_conv_bwd");
  for (const Tensor* t : {&dy, &dx}) check_same_dtype(x, *t, "short_conv_bwd");
  check_weight_grad(x, dw, "short_conv_bwd");
  NATSL_NN_DISPATCH(d, short_conv_bwd, x, w, apply_silu, dy, dx, dw, accumulate_dw);
}

namespace {
void check_conv_l2norm(const Tensor& x, const Tensor& w, int64_t group, const Tensor& y, const Tensor& rnorm,
                       const char* op) {
  check_conv(x, w, op);
  NATSL_CHECK(group >= 1 && x.size(2) % group == 0, op, ": group ", group, " must divide the ", x.size(2),
              " channels of ", x.str());
  check_same_shape(x, y, op);
  check_same_dtype(x, y, op);
  NATSL_CHECK(rnorm.dtype() == stat_dtype(x.dtype()) && rnorm.numel() == x.size(0) * x.size(1) * (x.size(2) / group),
              op, ": rnorm must hold ", x.size(0) * x.size(1) * (x.size(2) / group), " ",
              dtype_name(stat_dtype(x.dtype())), " values (one per group of ", group, " channels), got ", rnorm.str());
}
Shape group_rows(const Tensor& x, int64_t group) { return {x.size(0), x.size(1), x.size(2) / group, group}; }
}  // namespace

void short_conv_l2norm_fwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, double eps,
                           const Tensor& y, const Tensor& rnorm) {
  const char* op = "short_conv_l2norm_fwd";
  Device d = common_device({&x, &w, &y, &rnorm}, op);
  check_contiguous({&x, &w, &y, &rnorm}, op);
  check_conv_l2norm(x, w, group, y, rnorm, op);
  if (d.is_cuda()) {
    bool fused = false;
    NATSL_CUDA_ONLY(fused = cuda::short_conv_l2norm_fwd(x, w, apply_silu, group, eps, y, rnorm));
    if (fused) return;
  }
  Tensor act = Tensor::empty(x.shape(), x.dtype(), d);
  short_conv_fwd(x, w, apply_silu, act);
  const Shape rows = group_rows(x, group);
  l2norm_fwd(act.view(rows), eps, y.view(rows), rnorm.view({rows[0], rows[1], rows[2]}));
}

void short_conv_l2norm_bwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, const Tensor& y,
                           const Tensor& rnorm, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                           bool accumulate_dw) {
  const char* op = "short_conv_l2norm_bwd";
  Device d = common_device({&x, &w, &y, &rnorm, &dy, &dx, &dw}, op);
  check_contiguous({&x, &w, &y, &rnorm, &dy, &dx, &dw}, op);
  check_conv_l2norm(x, w, group, y, rnorm, op);
  check_same_shape(x, dy, op);
  check_same_shape(x, dx, op);
  if (dw.defined()) check_same_shape(w, dw, op);
  for (const Tensor* t : {&dy, &dx}) check_same_dtype(x, *t, op);
  if (dw.defined()) check_weight_grad(x, dw, op);
  if (d.is_cuda()) {
    bool fused = false;
    NATSL_CUDA_ONLY(fused = cuda::short_conv_l2norm_bwd(x, w, apply_silu, group, y, rnorm, dy, dx, dw, accumulate_dw));
    if (fused) return;
  }
  const Shape rows = group_rows(x, group);
  Tensor dact = Tensor::empty(x.shape(), x.dtype(), d);
  l2norm_bwd(y.view(rows), rnorm.view({rows[0], rows[1], rows[2]}), dy.view(rows), dact.view(rows));
  short_conv_bwd(x, w, apply_silu, dact, dx, dw.defined() ? dw : Tensor::empty(w.shape(), w.dtype(), d),
                 dw.defined() && accumulate_dw);
}

void swiglu_fwd(const Tensor& gate, const Tensor& up, const Tensor& y) {
  Device d = common_device({&gate, &up, &y}, "swiglu_fwd");
  check_contiguous({&gate, &up, &y}, "swiglu_fwd");
  check_floating(gate, "swiglu_fwd", "gate");
  check_same_shape(gate, up, "swiglu_fwd");
  check_same_shape(gate, y, "swiglu_fwd");
  check_same_dtype(gate, up, "swiglu_fwd");
  check_same_dtype(gate, y, "swiglu_fwd");
  NATSL_NN_DISPATCH(d, swiglu_fwd, gate, up, y);
}

void swiglu_bwd(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup) {
  Device d = common_device({&gate, &up, &dy, &dgate, &dup}, "swiglu_bwd");
  check_contiguous({&gate, &up, &dy, &dgate, &dup}, "swiglu_bwd");
  check_floating(gate, "swiglu_bwd", "gate");
  for (const Tensor* t : {&up, &dy, &dgate, &dup}) {
    check_same_shape(gate, *t, "swiglu_bwd");
    check_same_dtype(gate, *t, "swiglu_bwd");
  }
  NATSL_NN_DISPATCH(d, swiglu_bwd, gate, up, dy, dgate, dup);
}

#undef NATSL_NN_DISPATCH

}  // namespace natsl::kernels
