#include "trainers/optim/adamw.h"

#include <algorithm>
#include <cmath>

namespace natsl {
namespace {

void check_options(const AdamWOptions& o) {
  auto fail = [](const char* key, double v, const char* want) {
    throw InputError(detail::str("AdamW: ", key, " = ", v, " is invalid; it must be ", want));
  };
  if (!(o.lr >= 0 && std::isfinite(o.lr))) fail("lr", o.lr, ">= 0");
  if (!(o.beta1 >= 0 && o.beta1 < 1)) fail("beta1", o.beta1, "in [0, 1)");
  if (!(o.beta2 >= 0 && o.beta2 < 1)) fail("beta2", o.beta2, "in [0, 1)");
  if (!(o.eps >= 0 && std::isfinite(o.eps))) fail("eps", o.eps, ">= 0");
  if (!(o.weight_decay >= 0 && std::isfinite(o.weight_decay))) fail("weight_decay", o.weight_decay, ">= 0");
}

DType moment_dtype(const FlatLayout& layout) {
  for (DType dt : layout.dtypes())
    if (dt != DType::f64) return DType::f32;
  return layout.dtypes().empty() ? DType::f32 : DType::f64;
}

}  // namespace

AdamW::AdamW(const FlatBuffer& params, const FlatBuffer& grads, std::vector<bool> decay, AdamWOptions opt)
    : params_(params), grads_(grads), decay_(std::move(decay)), opt_(opt) {
  check_options(opt_);
  const auto& pe = params.layout().entries();
  const auto& ge = grads.layout().entries();
  NATSL_CHECK(pe.size() == ge.size(), "AdamW: ", pe.size(), " parameters but ", ge.size(), " gradients");
  NATSL_CHECK(decay_.size() == pe.size(), "AdamW: ", decay_.size(), " decay flags for ", pe.size(), " parameters");
  for (size_t i = 0; i < pe.size(); ++i) {
    NATSL_CHECK(pe[i].name == ge[i].name && pe[i].shape == ge[i].shape && pe[i].dtype == ge[i].dtype &&
                    pe[i].offset == ge[i].offset,
                "AdamW: gradient layout differs from the parameters' at '", pe[i].name, "'");
    segments_[pe[i].dtype].push_back({pe[i].offset, pe[i].numel(), decay_[i]});
  }
  Device d = params.flats().empty() ? kCPU : params.flats().begin()->second.device();
  m_ = FlatBuffer(params.layout(), d, moment_dtype(params.layout()));
  v_ = FlatBuffer(params.layout(), d, moment_dtype(params.layout()));
}

AdamW::AdamW(const FlatLayout& layout, const Tensor& params_shard, const Tensor& grads_shard,
             std::vector<bool> decay, AdamWOptions opt, int64_t shard_begin)
    : params_shard_(params_shard), grads_shard_(grads_shard), decay_(std::move(decay)), opt_(opt),
      shard_begin_(shard_begin), shard_end_(shard_begin + params_shard.numel()) {
  check_options(opt_);
  const auto& pe = layout.entries();
  NATSL_CHECK(layout.dtypes().size() == 1, "AdamW: a sharded optimizer needs one dtype buffer");
  const DType dt = layout.dtypes().front();
  NATSL_CHECK(decay_.size() == pe.size(), "AdamW: ", decay_.size(), " decay flags for ", pe.size(), " parameters");
  NATSL_CHECK(params_shard.dim() == 1 && params_shard.is_contiguous() && params_shard.dtype() == dt &&
                  grads_shard.dim() == 1 && grads_shard.numel() == params_shard.numel(),
              "AdamW: the shards must be 1-D contiguous tensors of the layout's dtype and the same length");
  NATSL_CHECK(0 <= shard_begin_ && shard_begin_ < shard_end_ && shard_end_ <= layout.total(dt),
              "AdamW: shard [", shard_begin_, ", ", shard_end_, ") outside the layout (", layout.total(dt), ")");
  // Each entry's part inside the shard, at offsets relative to the shard's start.
  for (size_t i = 0; i < pe.size(); ++i) {
    const int64_t lo = std::max(pe[i].offset, shard_begin_), hi = std::min(pe[i].offset + pe[i].numel(), shard_end_);
    if (lo < hi) segments_[dt].push_back({lo - shard_begin_, hi - lo, decay_[i]});
  }
  Device d = params_shard.device();
  m_shard_ = Tensor::zeros({shard_end_ - shard_begin_}, moment_dtype(layout), d);
  v_shard_ = Tensor::zeros({shard_end_ - shard_begin_}, moment_dtype(layout), d);
}

void AdamW::set_lr(double lr) {
  AdamWOptions o = opt_;
  o.lr = lr;
  check_options(o);
  opt_.lr = lr;
}

void AdamW::set_step_count(int64_t steps) {
  if (steps < 0) throw InputError(detail::str("AdamW: step count ", steps, " in the optimizer state is negative"));
  step_ = steps;
}

void AdamW::write_compute_copy(const FlatBuffer& compute) {
  for (const auto& [dt, segs] : segments_) {
    NATSL_CHECK(compute.flats().count(dt) == 1, "AdamW: the compute copy has no buffer for the ", dtype_name(dt),
                " parameters");
    const int64_t have = compute.flat(dt).numel();
    const int64_t need = sharded() ? shard_end_ : params_.flat(dt).numel();
    NATSL_CHECK(sharded() ? have >= need : have == need, "AdamW: the compute copy's ", dtype_name(dt), " buffer has ",
                have, " elements; the parameters need ", need);
  }
  compute_ = compute;
}

void AdamW::step(const Tensor& grad_scale) {
  kernels::AdamWHyper h;
  h.lr = opt_.lr;
  h.beta1 = opt_.beta1;
  h.beta2 = opt_.beta2;
  h.eps = opt_.eps;
  h.weight_decay = opt_.weight_decay;
  h.step = step_ + 1;
  const bool copy = !compute_.flats().empty();
  if (sharded()) {
    for (const auto& [dt, segs] : segments_) {
      const Tensor c = copy ? compute_.flat(dt).slice(0, shard_begin_, shard_end_) : Tensor();
      kernels::adamw_step(params_shard_, grads_shard_, m_shard_, v_shard_, segs, h, grad_scale, c);
    }
  } else {
    for (const auto& [dt, segs] : segments_)
      kernels::adamw_step(params_.flat(dt), grads_.flat(dt), m_.flat(dt), v_.flat(dt), segs, h, grad_scale,
                          copy ? compute_.flat(dt) : Tensor());
  }
  step_ = h.step;
}

}  // namespace natsl
