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
  // ZeRO-1: updates elements [shard_begin, shard_begin + n) of a (single-dtype) flat layout, held as the
  // 1-D tensors params_shard and grads_shard of n elements each, and keeps moments for those only
  // (exp_avg_shard()); exp_avg()/exp_avg_sq() are then empty.
  AdamW(const FlatLayout& layout, const Tensor& params_shard, const Tensor& grads_shard, std::vector<bool> decay,
        AdamWOptions opt, int64_t shard_begin);

  // One update with g = grad * grad_scale (grad_scale: undefined, or one f32 value on the params' device,
  // e.g. a clipping coefficient computed there).
  void step(const Tensor& grad_scale = Tensor());

  // From now on every step also writes the updated weights into `compute` (the forward's bf16 or f32 copy, a
  // buffer of the parameters' layout; sharded: the whole copy, of which the step writes the shard's range) in
  // the same pass (kernels/adamw.h), bit for bit what ParameterStore::sync_compute_from_master() would write.
  void write_compute_copy(const FlatBuffer& compute);

  double lr() const { return opt_.lr; }
  void set_lr(double lr);  // schedules change it between steps
  const AdamWOptions& options() const { return opt_; }

  // Checkpoint state: the number of steps taken (bias correction) and the moment buffers, whose views
  // can be written to restore them.
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t steps);
  const FlatBuffer& exp_avg() const { return m_; }
  const FlatBuffer& exp_avg_sq() const { return v_; }
  bool sharded() const { return shard_end_ > shard_begin_; }
  int64_t shard_begin() const { return shard_begin_; }
  // ZeRO-1: the moments of the shard (1-D, shard_end - shard_begin elements each); writable to restore them.
  const Tensor& exp_avg_shard() const { return m_shard_; }
  const Tensor& exp_avg_sq_shard() const { return v_shard_; }

 private:
  FlatBuffer params_, grads_, m_, v_;
  FlatBuffer compute_;  // empty unless write_compute_copy()
  Tensor params_shard_, grads_shard_;
  std::vector<bool> decay_;
  std::map<DType, std::vector<kernels::AdamWSegment>> segments_;  // per layout dtype
  AdamWOptions opt_;
  int64_t step_ = 0;
  int64_t shard_begin_ = 0, shard_end_ = 0;  // ZeRO-1 shard (empty: the whole buffers)
  Tensor m_shard_, v_shard_;
};

}  // namespace natsl
