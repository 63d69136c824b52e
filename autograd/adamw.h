#pragma once
// AdamW over flat buffers (core/flat_buffer.h): the moments m and v share the parameters' layout, and a
// step is one multi-tensor kernels::adamw_step per dtype buffer. The update is torch.optim.AdamW's
// (formula in kernels/adamw.h); entries whose decay flag is false (norm gains, biases, ...) skip the
// weight decay.
#include <map>
#include <vector>

#include "core/flat_buffer.h"
#include "kernels/adamw.h"

namespace natsl {

struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  // params and grads: buffers of one layout (the grads may be bf16); decay[i] for layout entry i.
  // Moments are f32 (f64 when every parameter is f64, for CPU tests) and start at zero.
  AdamW(const FlatBuffer& params, const FlatBuffer& grads, std::vector<bool> decay, AdamWOptions opt = {});

  // One update with g = grad * grad_scale (grad_scale: undefined, or one f32 value on the params' device,
  // e.g. a clipping coefficient computed there).
  void step(const Tensor& grad_scale = Tensor());

  double lr() const { return opt_.lr; }
  void set_lr(double lr);  // schedules change it between steps
  const AdamWOptions& options() const { return opt_; }

  // Checkpoint state: the number of steps taken (bias correction) and the moment buffers, whose views
  // can be written to restore them.
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t steps);
  const FlatBuffer& exp_avg() const { return m_; }
  const FlatBuffer& exp_avg_sq() const { return v_; }

 private:
  FlatBuffer params_, grads_, m_, v_;
  std::vector<bool> decay_;
  std::map<DType, std::vector<kernels::AdamWSegment>> segments_;  // per layout dtype
  AdamWOptions opt_;
  int64_t step_ = 0;
};

}  // namespace natsl
