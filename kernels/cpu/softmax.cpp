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

}  // namespace

void softmax_fwd(const Tensor& x, const Tensor& y) {
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    for_rows(x, [&](int64_t o, int64_t D) {
      double lse = row_lse(xp + o, D);
      for (int64_t d = 0; d < D; ++d) yp[o + d] = convert<T>(std::exp(double(convert<acc_t<T>>(xp[o + d])) - lse));
    });
  });
}

// dx = y (dy - sum(dy y))
void softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  NATSL_DISPATCH_FLOAT(y.dtype(), T, [&] {
    auto ld = [](T v) { return double(convert<acc_t<T>>(v)); };
    const T* yp = y.data<T>();
    const T* gp = dy.data<T>();
    T* dp = dx.data<T>();
    for_rows(y, [&](int64_t o, int64_t D) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += ld(gp[o + d]) * ld(yp[o + d]);
      for (int64_t d = 0; d < D; ++d) dp[o + d] = convert<T>(ld(yp[o + d]) * (ld(gp[o + d]) - dot));
    });
  });
}

void log_softmax_fwd(const Tensor& x, const Tensor& y) {
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    for_rows(x, [&](int64_t o, int64_t D) {
      double lse = row_lse(xp + o, D);
      for (int64_t d = 0; d < D; ++d) yp[o + d] = convert<T>(double(convert<acc_t<T>>(xp[o + d])) - lse);
    });
  });
}

// dx = dy - exp(y) sum(dy)
void log_softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  NATSL_DISPATCH_FLOAT(y.dtype(), T, [&] {
    auto ld = [](T v) { return double(convert<acc_t<T>>(v)); };
    const T* yp = y.data<T>();
    const T* gp = dy.data<T>();
    T* dp = dx.data<T>();
    for_rows(y, [&](int64_t o, int64_t D) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += ld(gp[o + d]);
      for (int64_t d = 0; d < D; ++d) dp[o + d] = convert<T>(ld(gp[o + d]) - std::exp(ld(yp[o + d])) * s);
    });
  });
}

}  // namespace natsl::kernels::cpu
