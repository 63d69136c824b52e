#include "kernels/router.h"

#include "kernels/dispatch.h"
#include "kernels/nn.h"  // stat_dtype

namespace natsl::kernels {
namespace {

// A chunk mean pool (x -> pooled) or its gradient (dpooled -> dx): `x` floating [B, T, d] and `pooled`
// [B, ceil(T / chunk_size), d] in its dtype, contiguous, on one device, which it returns.
Device check_pool(const Tensor& x, int64_t chunk_size, const Tensor& pooled, const char* op) {
  Device d = common_device({&x, &pooled}, op);
  check_contiguous({&x, &pooled}, op);
  NATSL_CHECK(chunk_size > 0, op, ": chunk size ", chunk_size);
  NATSL_CHECK(x.dim() == 3 && is_floating(x.dtype()), op, ": x must be floating [B, T, d], got ", x.str());
  int64_t NC = (x.size(1) + chunk_size - 1) / chunk_size;
  NATSL_CHECK(pooled.shape() == Shape({x.size(0), NC, x.size(2)}) && pooled.dtype() == x.dtype(), op, ": pooled ",
              pooled.str(), " for x ", x.str(), " and chunk size ", chunk_size);
  return d;
}

// Checks logits [B, NC, Hr, 2] and the [B, NC, Hr] stat-dtype tensors that go with them.
void check_choice(const Tensor& logits_or_probs, std::initializer_list<const Tensor*> masks, const char* op) {
  const Tensor& l = logits_or_probs;
  NATSL_CHECK(l.dim() == 4 && l.size(3) == 2 && is_floating(l.dtype()), op,
              ": logits/probs must be floating [B, NC, Hr, 2], got ", l.str());
  Shape ms{l.size(0), l.size(1), l.size(2)};
  DType sd = stat_dtype(l.dtype());
  for (const Tensor* m : masks)
    if (m->defined())
      NATSL_CHECK(m->shape() == ms && m->dtype() == sd, op, ": expected ", shape_str(ms), " ", dtype_name(sd),
                  ", got ", m->str());
}

}  // namespace

void chunk_mean_pool_fwd(const Tensor& x, int64_t chunk_size, const Tensor& pooled) {
  Device d = check_pool(x, chunk_size, pooled, "chunk_mean_pool_fwd");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::chunk_mean_pool_fwd(x, chunk_size, pooled));
  else cpu::chunk_mean_pool_fwd(x, chunk_size, pooled);
}

void chunk_mean_pool_bwd(const Tensor& dpooled, int64_t chunk_size, const Tensor& dx, bool accumulate) {
  Device d = check_pool(dx, chunk_size, dpooled, "chunk_mean_pool_bwd");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::chunk_mean_pool_bwd(dpooled, chunk_size, dx, accumulate));
  else cpu::chunk_mean_pool_bwd(dpooled, chunk_size, dx, accumulate);
}

void router_choice_fwd(const RouterChoiceArgs& args, const Tensor& logits, const Tensor& probs,
                       const Tensor& mask_softmax, const Tensor& mask_gdn) {
  const char* op = "router_choice_fwd";
  Device d = common_device({&logits, &probs, &mask_softmax, &mask_gdn}, op);
  check_contiguous({&logits, &probs, &mask_softmax, &mask_gdn}, op);
  NATSL_CHECK(args.tau > 0, op, ": temperature tau must be > 0, got ", args.tau);
  NATSL_CHECK(mask_softmax.defined() && mask_gdn.defined(), op, ": both masks are required");
  check_choice(logits, {&mask_softmax, &mask_gdn}, op);
  NATSL_CHECK(probs.shape() == logits.shape() && probs.dtype() == stat_dtype(logits.dtype()), op, ": probs ",
              probs.str(), " for logits ", logits.str());
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::router_choice_fwd(args, logits, probs, mask_softmax, mask_gdn));
  else cpu::router_choice_fwd(args, logits, probs, mask_softmax, mask_gdn);
}

void router_choice_bwd(const RouterChoiceArgs& args, const Tensor& probs, const Tensor& mask_softmax,
                       const Tensor& mask_gdn, const Tensor& dm_softmax, const Tensor& dm_gdn,
                       const Tensor& dlogits) {
  const char* op = "router_choice_bwd";
  Device d = common_device({&probs, &mask_softmax, &mask_gdn, &dm_softmax, &dm_gdn, &dlogits}, op);
  check_contiguous({&probs, &mask_softmax, &mask_gdn, &dm_softmax, &dm_gdn, &dlogits}, op);
  NATSL_CHECK(args.tau > 0, op, ": temperature tau must be > 0, got ", args.tau);
  NATSL_CHECK(dlogits.shape() == probs.shape() && is_floating(dlogits.dtype()) &&
                  stat_dtype(dlogits.dtype()) == probs.dtype(),
              op, ": dlogits ", dlogits.str(), " for probs ", probs.str());
  check_choice(dlogits, {&mask_softmax, &mask_gdn, &dm_softmax, &dm_gdn}, op);
  if (d.is_cuda())
    NATSL_CUDA_ONLY(cuda::router_choice_bwd(args, probs, mask_softmax, mask_gdn, dm_softmax, dm_gdn, dlogits));
  else
    cpu::router_choice_bwd(args, probs, mask_softmax, mask_gdn, dm_softmax, dm_gdn, dlogits);
}

}  // namespace natsl::kernels
