// Mean cross-entropy over the rows whose target is not ignore_index. The fused kernel keeps only per-row
// lse (no probability tensor); the mean and its gradient scale stay on the device (no host sync).
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/elementwise.h"
#include "kernels/nn.h"
#include "kernels/reduce.h"

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

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  NATSL_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "cross_entropy: expects logits [N, V] and targets [N], got ", logits.str(), " and ", targets.str());
  Tensor lc = logits.contiguous().detach();
  Tensor tc = targets.contiguous();
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
