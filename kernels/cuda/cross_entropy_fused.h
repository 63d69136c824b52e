#pragma once
// CUDA-only extension of the cross-entropy family (kernels/nn.h): forward and backward in one kernel, for
// callers that know the gradient scale before the forward (a mean loss that is the root of the backward:
// grad_scale = loss_scale / count, count = valid targets, computable from the targets alone). Reads each
// row once from device memory and writes its gradient once; dlogits may alias logits. Outputs as
// cross_entropy_fwd and cross_entropy_bwd together.
#include "core/tensor.h"

namespace natsl::kernels::cuda {

// ring: the rows prefetched into a shared-memory ring by bulk copies (the default: 1.34x one read + write of
// the logits on the H200 against 1.93x for the register-row kernel); it needs rows of a multiple of 16 bytes
// that fit the ring, else the register-row kernel runs. Tests pass ring = false to check that fallback.
struct CrossEntropyFusedPlan {
  bool ring = true;
};

void cross_entropy_fwd_bwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           const Tensor& grad_scale, const Tensor& losses, const Tensor& lse, const Tensor& valid,
                           const Tensor& dlogits, const CrossEntropyFusedPlan& plan = {});

// For the fused path of a mean loss, on the device (no host read): count[0] = number of targets that are
// not ignore_index (an exact integer count, deterministic) and inv_count[0] = 1 / max(count, 1). Both f32
// [1]; inv_count is the grad_scale of cross_entropy_fwd_bwd for d(mean)/d(logits).
void cross_entropy_valid_count(const Tensor& targets, int64_t ignore_index, const Tensor& count,
                               const Tensor& inv_count);

// x *= s[0] in place, with s a 1-element f32 device tensor; when s[0] == 1 (a loss that is the root of the
// backward) every block returns at once, so the common case costs one empty launch, not a pass over x.
void scale_unless_one(const Tensor& x, const Tensor& s);

}  // namespace natsl::kernels::cuda
