#pragma once
// CUDA-only extension of the cross-entropy family (kernels/nn.h): forward and backward in one kernel, for
// callers that know the gradient scale before the forward (a mean loss that is the root of the backward:
// grad_scale = loss_scale / count, count = valid targets, computable from the targets alone). Reads each
// row once from device memory and writes its gradient once; dlogits may alias logits. Outputs as
// cross_entropy_fwd and cross_entropy_bwd together.
#include "core/tensor.h"

namespace natsl::kernels::cuda {

void cross_entropy_fwd_bwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           const Tensor& grad_scale, const Tensor& losses, const Tensor& lse, const Tensor& valid,
                           const Tensor& dlogits);

}  // namespace natsl::kernels::cuda
