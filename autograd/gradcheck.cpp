#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/engine.h"
#include "core/philox.h"

namespace natsl {

namespace {
// L = sum(out * R) evaluated in double on the host.
double project(const Tensor& out, const std::vector<double>& r) {
  auto v = out.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * r[i];
  return s;
}
}  // namespace

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opt) {
  GradcheckResult res;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad())
      NATSL_CHECK(t.dtype() == DType::f64 && t.device().is_cpu() && t.is_contiguous(),
                  "gradcheck needs contiguous f64 CPU inputs, got ", t.str());

  // Analytic: backward of sum(out * R).
  for (const Tensor& t : inputs)
    if (t.defined()) t.set_grad(Tensor());
  Tensor out = f(inputs);
  std::vector<double> r(size_t(out.numel()));
  Generator g(opt.seed);
  Tensor rt = Tensor::empty(out.shape(), DType::f64);
  normal_(rt, g);
  r = rt.to_vector<double>();
  out.backward(rt.to(out.dtype()).to(out.device()));

  std::ostringstream msg;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& in = inputs[k];
    if (!in.defined() || !in.requires_grad()) continue;
    std::vector<double> analytic = in.grad().defined() ? in.grad().to_vector<double>()
                                                       : std::vector<double>(size_t(in.numel()), 0.0);
    double* p = in.data<double>();
    NoGradGuard ng;
    for (int64_t i = 0; i < in.numel(); ++i) {
      double orig = p[i];
      p[i] = orig + opt.eps;
      double lp = project(f(inputs), r);
      p[i] = orig - opt.eps;
      double lm = project(f(inputs), r);
      p[i] = orig;
      double numeric = (lp - lm) / (2 * opt.eps);
      double err = std::abs(analytic[size_t(i)] - numeric);
      res.max_abs_err = std::max(res.max_abs_err, err);
      if (!(err <= opt.atol + opt.rtol * std::abs(numeric)) && res.ok) {
        res.ok = false;
        msg << "input " << k << " element " << i << ": analytic " << analytic[size_t(i)] << " vs numeric "
            << numeric << " (err " << err << ")";
      }
    }
  }
  res.message = msg.str();
  return res;
}

}  // namespace natsl
