#pragma once
// AdamW (Loshchilov & Hutter: decoupled weight decay) with bias correction, as one multi-tensor step over
// the flat parameter / gradient / moment buffers (core/flat_buffer.h):
//   g = grad * grad_scale
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p - lr * wd * p   (only segments with decay = true)
//   p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Matches torch.optim.AdamW. Params and moments are f32 (master weights); grads f32 or bf16.
#include <vector>

#include "core/tensor.h"

namespace natsl::kernels {

struct AdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1-based step count after this update (bias correction)
};

// A tensor inside the flat buffers: [offset, offset + numel) elements, decayed or not.
struct AdamWSegment {
  int64_t offset = 0, numel = 0;
  bool decay = true;
};

// grad_scale: undefined, or a 1-element f32 tensor on the device multiplying every gradient (e.g. the
// clipping coefficient computed on the device, so no host sync is needed).
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale);

namespace cpu {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale);
}
namespace cuda {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale);
}

}  // namespace natsl::kernels
