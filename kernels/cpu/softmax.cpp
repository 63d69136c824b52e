// CPU reference for softmax and log-softmax over the last dim (max-subtracted, double accumulation).
#include <cmath>
#include <limits>

#include "kernels/cpu/math.h"
#include "kernels/nn.h"

namespace natsl::kernels::cpu {
namespace {

// Applies f(row_in, row_out, D) to each row of [rows, D] views of contiguous tensors.
template <class F>
void for_rows(const Tensor& ref, F&& f) {
  const int64_t D = ref.size(-1), rows = D > 0 ? ref.numel() / D : 0;
  for (int64_t r = 0; r < rows; ++r) f(r * D, D);
}

template <class T>
double row_lse(const T* x, int64_t D) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t d = 0; d < D; ++d) m = std::max(m, double(convert<acc_t<T>>(x[d])));
  if (std::isinf(m)) return m;
  double s = 0;
  for (int64_t d = 0; d < D; ++d) s += std::exp(double(convert<acc_t<T>>(x[d])) - m);
  return m + std::log(s);
}

// y = out(x_d, lse) for each element of each row of x, lse = log(sum(exp(x))) of the row.
template <class Out>
void rowwise_fwd(const Tensor& x, const Tensor& y, Out out) {
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    for_rows(x, [&](int64_t o, int64_t D) {
      double lse = row_lse(xp + o, D);
      for (int64_t d = 0; d < D; ++d) yp[o + d] = convert<T>(out(double(convert<acc_t<T>>(xp[o + d])), lse));
    });
  });
}

// dx = out(y_d, dy_d, r) for each element of each row, r = the row's sum of term(y_d, dy_d).
template <class Term, class Out>
void rowwise_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx, Term term, Out out) {
  NATSL_DISPATCH_FLOAT(y.dtype(), T, [&] {
    auto ld = [](T v) { return double(convert<acc_t<T>>(v)); };
    const T* yp = y.data<T>();
    const T* gp = dy.data<T>();
    T* dp = dx.data<T>();
    for_rows(y, [&](int64_t o, int64_t D) {
      double r = 0;
      for (int64_t d = 0; d < D; ++d) r += term(ld(yp[o + d]), ld(gp[o + d]));
      for (int64_t d = 0; d < D; ++d) dp[o + d] = convert<T>(out(ld(yp[o + d]), ld(gp[o + d]), r));
    });
  });
}

}  // namespace

void softmax_fwd(const Tensor& x, const Tensor& y) {
  rowwise_fwd(x, y, [](double v, double lse) { return std::exp(v - lse); });
}

// dx = y (dy - sum(dy y))
void softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  rowwise_bwd(
      y, dy, dx, [](double yv, double g) { return g * yv; }, [](double yv, double g, double dot) { return yv * (g - dot); });
}

void log_softmax_fwd(const Tensor& x, const Tensor& y) {
  rowwise_fwd(x, y, [](double v, double lse) { return v - lse; });
}

// dx = dy - exp(y) sum(dy)
void log_softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  rowwise_bwd(
      y, dy, dx, [](double, double g) { return g; }, [](double yv, double g, double s) { return g - std::exp(yv) * s; });
}

}  // namespace natsl::kernels::cpu
