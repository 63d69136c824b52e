// Mean cross-entropy over the rows whose target is not ignore_index. The fused kernel keeps only per-row
// lse (no probability tensor); the mean and its gradient scale stay on the device (no host sync).
#include <algorithm>
#include <memory>

#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/nn.h"
#include "kernels/reduce.h"
#ifdef NATSL_WITH_CUDA
#include "kernels/cuda/cross_entropy_fused.h"
#endif

namespace natsl {
namespace {

Tensor sum_rows(const Tensor& v) {
  Tensor s = Tensor::empty({1}, v.dtype(), v.device());
  kernels::sum_dims(v, {0}, s);
  return s;
}

// max(count, 1) for an integer count >= 0, as count + exp(-1000 count): the exp term is exactly 1 at
// count = 0 and underflows to exactly 0 for count >= 1 (in f32 and f64), so no comparison kernel or host
// read is needed.
Tensor at_least_one(const Tensor& count) {
  Tensor e = Tensor::empty(count.shape(), count.dtype(), count.device());
  kernels::scale(count, -1000.0, e);
  kernels::unary_fwd(kernels::UnaryOp::Exp, e, e);
  Tensor out = Tensor::empty(count.shape(), count.dtype(), count.device());
  kernels::axpby(1.0, count, 1.0, e, out);
  return out;
}

#ifdef NATSL_WITH_CUDA
// CUDA with grad: the gradient of the mean is computed in the forward by the fused kernel (one read and one
// write of the logits instead of two reads and a write), with grad_scale = 1 / max(count, 1) counted from
// the targets on the device first. The backward only multiplies by the incoming gradient, and skips that
// pass on the device when it is 1 (the loss is the root of the backward). The logits are not kept.
Tensor cross_entropy_fused_cuda(const Tensor& logits, const Tensor& lc, const Tensor& tc, int64_t ignore_index) {
  const int64_t N = lc.size(0);
  const Device dev = lc.device();
  Tensor count = Tensor::empty({1}, DType::f32, dev), inv_count = Tensor::empty({1}, DType::f32, dev);
  kernels::cuda::cross_entropy_valid_count(tc, ignore_index, count, inv_count);
  Tensor losses = Tensor::empty({N}, DType::f32, dev);
  Tensor lse = Tensor::empty({N}, DType::f32, dev);
  Tensor valid = Tensor::empty({N}, DType::f32, dev);
  Tensor dlogits = Tensor::empty(lc.shape(), lc.dtype(), dev);
  kernels::cuda::cross_entropy_fwd_bwd(lc, tc, ignore_index, inv_count, losses, lse, valid, dlogits);
  Tensor loss = Tensor::empty({1}, DType::f32, dev);
  kernels::binary_fwd(kernels::BinaryOp::Mul, sum_rows(losses), inv_count, loss);
  loss = loss.view({});
  auto used = std::make_shared<bool>(false);
  record("cross_entropy", {logits}, {&loss}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    // dlogits is scaled in place, so a retained graph cannot run this node's backward a second time.
    NATSL_CHECK(!*used, "cross_entropy on CUDA: backward ran twice through this loss (retain_graph); run the "
                        "forward again instead");
    *used = true;
    Tensor gs = g[0].reshape({1});
    if (gs.dtype() != DType::f32) gs = gs.to(DType::f32);
    kernels::cuda::scale_unless_one(dlogits, gs);
    return {dlogits};
  });
  return loss;
}
#endif

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  NATSL_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "cross_entropy: expects logits [N, V] and targets [N], got ", logits.str(), " and ", targets.str());
  Tensor lc = logits.contiguous().detach();
  Tensor tc = targets.contiguous();
#ifdef NATSL_WITH_CUDA
  if (lc.device().is_cuda() && lc.dtype() != DType::f64 && any_requires_grad({&logits}))
    return cross_entropy_fused_cuda(logits, lc, tc, ignore_index);
#endif
  const int64_t N = logits.size(0);
  const DType sd = kernels::stat_dtype(logits.dtype());
  Tensor losses = Tensor::empty({N}, sd, logits.device());
  Tensor lse = Tensor::empty({N}, sd, logits.device());
  Tensor valid = Tensor::empty({N}, sd, logits.device());
  kernels::cross_entropy_fwd(lc, tc, ignore_index, losses, lse, valid);
  Tensor count = at_least_one(sum_rows(valid));
  Tensor loss = Tensor::empty({1}, sd, logits.device());
  kernels::binary_fwd(kernels::BinaryOp::Div, sum_rows(losses), count, loss);
  loss = loss.view({});
  record("cross_entropy", {logits}, {&loss}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor grad_scale = Tensor::empty({1}, sd, lc.device());  // dL/dmean / count
    kernels::binary_fwd(kernels::BinaryOp::Div, g[0].reshape({1}), count, grad_scale);
    Tensor dlogits = Tensor::empty(lc.shape(), lc.dtype(), lc.device());
    kernels::cross_entropy_bwd(lc, tc, lse, grad_scale, ignore_index, dlogits);
    return {dlogits};
  });
  return loss;
}

namespace {

// Logits per chunk of linear_cross_entropy when chunk_rows is 0: 256 MiB (4096 rows of a 32000-entry bf16 head).
constexpr int64_t kLinearCeChunkBytes = int64_t(256) << 20;

}  // namespace

Tensor linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& targets, int64_t ignore_index,
                            int64_t chunk_rows) {
  NATSL_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1) && targets.dim() == 1 &&
                  targets.size(0) == h.size(0),
              "linear_cross_entropy: expects h [N, D], w [V, D] and targets [N], got ", h.str(), ", ", w.str(), " and ",
              targets.str());
  NATSL_CHECK(h.dtype() == w.dtype() && h.device() == w.device(), "linear_cross_entropy: h ", h.str(), " and w ",
              w.str(), " differ in dtype or device");
  NATSL_CHECK(chunk_rows >= 0, "linear_cross_entropy: chunk_rows ", chunk_rows, " < 0");
  const int64_t N = h.size(0), V = w.size(0);
  const DType dt = h.dtype(), sd = kernels::stat_dtype(dt);
  const Device dev = h.device();
  const Tensor hc = h.contiguous().detach(), wc = w.contiguous().detach();
  const Tensor tc = targets.device() == dev ? targets.contiguous() : targets.to(dev).contiguous();
  const int64_t rows = chunk_rows > 0 ? chunk_rows
                                      : std::max<int64_t>(1, kLinearCeChunkBytes / std::max<int64_t>(1, V * int64_t(dtype_size(dt))));
  const bool need_h = any_requires_grad({&h}), need_w = any_requires_grad({&w});
  const bool grad = need_h || need_w;
#ifdef NATSL_WITH_CUDA
  // The fused kernel (one read of a chunk's logits for loss and gradient) where cross_entropy takes it.
  const bool fused = grad && dev.is_cuda() && dt != DType::f64;
#else
  const bool fused = false;
#endif
  Tensor losses = Tensor::empty({N}, sd, dev), lse = Tensor::empty({N}, sd, dev), valid = Tensor::empty({N}, sd, dev);
  Tensor count, inv_count;  // fused: counted first, the chunks' gradients are of the mean
#ifdef NATSL_WITH_CUDA
  if (fused) {
    count = Tensor::empty({1}, DType::f32, dev);
    inv_count = Tensor::empty({1}, DType::f32, dev);
    kernels::cuda::cross_entropy_valid_count(tc, ignore_index, count, inv_count);
  }
#endif
  // Unfused (the CPU, f64): the count of valid targets is read on the host first (a host read of the targets on
  // a GPU: only f64 takes this path there), so each chunk's gradient is of the mean as in the fused path.
  Tensor grad_scale;
  if (grad && !fused) {
    const Tensor th = tc.to(kCPU).to(DType::i64);
    const int64_t* t = th.data<int64_t>();
    int64_t c = 0;
    for (int64_t i = 0; i < N; ++i) c += t[i] != ignore_index ? 1 : 0;
    grad_scale = Tensor::full({1}, 1.0 / double(std::max<int64_t>(c, 1)), sd, dev);
  }
  const DType dw_dt = kernels::matmul_writes(dt, DType::f32) && dt != DType::f64 ? DType::f32 : dt;
  Tensor dh = need_h ? Tensor::empty({N, h.size(1)}, dt, dev) : Tensor();
  Tensor dw = need_w ? Tensor::empty(w.shape(), dw_dt, dev) : Tensor();
  // One chunk buffer: both cross-entropy paths write the logit gradient over the logits (lc below, both roles).
  Tensor logits = Tensor::empty({std::min(rows, std::max<int64_t>(N, 1)), V}, dt, dev);
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t r1 = std::min(N, r0 + rows), n = r1 - r0;
    const Tensor lc = logits.slice(0, 0, n), hs = hc.slice(0, r0, r1);
    const Tensor ts = tc.slice(0, r0, r1), ls = losses.slice(0, r0, r1), es = lse.slice(0, r0, r1);
    const Tensor vs = valid.slice(0, r0, r1);
    kernels::matmul(hs, wc, lc, false, true);
#ifdef NATSL_WITH_CUDA
    if (fused) kernels::cuda::cross_entropy_fwd_bwd(lc, ts, ignore_index, inv_count, ls, es, vs, lc);
#endif
    if (!fused) {
      kernels::cross_entropy_fwd(lc, ts, ignore_index, ls, es, vs);
      if (grad) kernels::cross_entropy_bwd(lc, ts, es, grad_scale, ignore_index, lc);
    }
    if (need_h) kernels::matmul(lc, wc, dh.slice(0, r0, r1));
    if (need_w) kernels::matmul(lc, hs, dw, true, false, 1.0, r0 > 0 ? 1.0 : 0.0);
  }
  if (need_w && N == 0) dw.zero_();
  Tensor loss = Tensor::empty({1}, sd, dev);
  if (!count.defined()) count = at_least_one(sum_rows(valid));
  if (fused) kernels::binary_fwd(kernels::BinaryOp::Mul, sum_rows(losses), inv_count, loss);
  else kernels::binary_fwd(kernels::BinaryOp::Div, sum_rows(losses), count, loss);
  loss = loss.view({});
  if (!grad) return loss;
  const Tensor w_leaf = need_w && w.is_leaf() ? w : Tensor();
  auto used = std::make_shared<bool>(false);
  record("linear_cross_entropy", {h, w}, {&loss}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    // dh and dw are scaled in place, so a retained graph cannot run this node's backward a second time.
    NATSL_CHECK(!*used, "linear_cross_entropy: backward ran twice through this loss (retain_graph); run the forward "
                        "again instead");
    *used = true;
    Tensor gs = g[0].reshape({1});
    if (gs.dtype() != sd) gs = gs.to(sd);
    Tensor dhr = dh, dwr = dw;
#ifdef NATSL_WITH_CUDA
    if (fused) {  // dL/dmean; the chunks' gradients are already of the mean
      if (dhr.defined()) kernels::cuda::scale_unless_one(dhr, gs);
      if (dwr.defined()) kernels::cuda::scale_unless_one(dwr, gs);
    }
#endif
    if (!fused) {  // times dL/dmean, in the statistics dtype (a bf16 gradient is scaled in f32, rounded once)
      auto scale = [&](Tensor& x) {
        if (x.dtype() == sd) {
          kernels::binary_fwd(kernels::BinaryOp::Mul, x, gs, x);
        } else {
          Tensor x32 = x.to(sd);
          kernels::binary_fwd(kernels::BinaryOp::Mul, x32, gs, x32);
          x = x32.to(x.dtype());
        }
      };
      if (dhr.defined()) scale(dhr);
      if (dwr.defined()) scale(dwr);
    }
    if (dwr.defined()) {
      // Into the weight's .grad when the engine offers it in dw's dtype (as linear does), else returned in w's. The
      // sink exists only in the backward, after dw was made: one extra pass over dw (V x D f32, ~0.1 ms at V 32000).
      const Tensor sink = w_leaf.defined() ? grad_sink(w_leaf) : Tensor();
      if (sink.defined() && sink.dtype() == dwr.dtype()) {
        kernels::axpby(1.0, dwr, 1.0, sink, sink);
        dwr = sink;
      } else if (dwr.dtype() != dt) {
        dwr = dwr.to(dt);
      }
    }
    return {dhr, dwr};
  });
  return loss;
}

}  // namespace natsl
