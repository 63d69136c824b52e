#include "autograd/adamw.h"

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

void AdamW::step(const Tensor& grad_scale) {
  kernels::AdamWHyper h;
  h.lr = opt_.lr;
  h.beta1 = opt_.beta1;
  h.beta2 = opt_.beta2;
  h.eps = opt_.eps;
  h.weight_decay = opt_.weight_decay;
  h.step = step_ + 1;
  for (const auto& [dt, segs] : segments_)
    kernels::adamw_step(params_.flat(dt), grads_.flat(dt), m_.flat(dt), v_.flat(dt), segs, h, grad_scale);
  step_ = h.step;
}

}  // namespace natsl
