#pragma once
// AdamW (Loshchilov & Hutter: decoupled weight decay) with bias correction, as one multi-tensor step over
// the flat parameter / gradient / moment buffers (core/flat_buffer.h):
//   g = grad * grad_scale
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p - lr * wd * p   (only segments with decay = true)
//   p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Matches torch.optim.AdamW. Params and moments are f32 (master weights); grads f32 or bf16.
// Optionally the same pass also writes every updated weight, rounded to nearest even, into `compute` (the
// forward's bf16 or f32 copy of the weights, same length and offsets as param), so a mixed-precision step
// needs no separate cast over the whole buffer afterwards: compute[i] = convert<C>(p[i]) for i in a segment,
// bit for bit what a cast of the master weights after the step gives; elements outside the segments are
// left as they are.
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
// compute: undefined, or a contiguous f32 / bf16 tensor of param's length on its device (see above).
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale,
                const Tensor& compute = Tensor());

namespace cpu {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale,
                const Tensor& compute);
}
namespace cuda {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale,
                const Tensor& compute);
}

}  // namespace natsl::kernels
