// CPU reference for the multi-tensor AdamW step (formula in kernels/adamw.h), evaluated in double.
#include <cmath>
#include <type_traits>

#include "kernels/adamw.h"
#include "kernels/cpu/math.h"

namespace natsl::kernels::cpu {
namespace {

// C: the compute copy's element type, or void for none.
template <class P, class G, class C>
void step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
          const std::vector<AdamWSegment>& segments, const AdamWHyper& h, double scale, const Tensor& compute) {
  P* p = param.data<P>();
  // The copy's elements, read once here (not per element inside the loop); unused when C is void.
  [[maybe_unused]] auto* c = [&] {
    if constexpr (std::is_void_v<C>) return static_cast<void*>(nullptr);
    else return compute.data<C>();
  }();
  const G* g = grad.data<G>();
  P* mp = m.data<P>();
  P* vp = v.data<P>();
  const double bc1 = 1.0 - std::pow(h.beta1, double(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  for (const AdamWSegment& s : segments) {
    const double decay = s.decay ? h.lr * h.weight_decay : 0.0;
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) {
      const double gi = double(convert<acc_t<G>>(g[i])) * scale;
      const double mi = h.beta1 * double(mp[i]) + (1.0 - h.beta1) * gi;
      const double vi = h.beta2 * double(vp[i]) + (1.0 - h.beta2) * gi * gi;
      mp[i] = P(mi);
      vp[i] = P(vi);
      double pi = double(p[i]);
      pi -= decay * pi;
      pi -= h.lr * (mi / bc1) / (std::sqrt(vi / bc2) + h.eps);
      p[i] = P(pi);
      if constexpr (!std::is_void_v<C>) c[i] = convert<C>(p[i]);
    }
  }
}

template <class P>
void step_for_grad(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                   const std::vector<AdamWSegment>& segments, const AdamWHyper& h, double scale,
                   const Tensor& compute) {
  NATSL_DISPATCH_FLOAT(grad.dtype(), G, [&] {
    if (!compute.defined()) step<P, G, void>(param, grad, m, v, segments, h, scale, compute);
    else if (compute.dtype() == DType::bf16) step<P, G, bf16>(param, grad, m, v, segments, h, scale, compute);
    else step<P, G, float>(param, grad, m, v, segments, h, scale, compute);
  });
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale,
                const Tensor& compute) {
  const double scale = grad_scale.defined() ? grad_scale.item() : 1.0;
  if (param.dtype() == DType::f64) step_for_grad<double>(param, grad, m, v, segments, h, scale, compute);
  else step_for_grad<float>(param, grad, m, v, segments, h, scale, compute);
}

}  // namespace natsl::kernels::cpu
