// Mean cross-entropy over the rows whose target is not ignore_index. The fused kernel keeps only per-row
// lse (no probability tensor); the mean and its gradient scale stay on the device (no host sync).
#include <memory>

#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/elementwise.h"
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

}  // namespace natsl
