// CPU reference for rmsnorm and l2norm over the last dim. Row sums accumulate in double.
#include <cmath>
#include <vector>

#include "kernels/cpu/math.h"
#include "kernels/cpu/weight_grad.h"
#include "kernels/nn.h"

namespace natsl::kernels::cpu {

void rmsnorm_fwd(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd) {
  const int64_t D = x.size(-1), rows = D > 0 ? x.numel() / D : 0;
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    using S = stat_t<T>;
    const T* xp = x.data<T>();
    const T* wp = w.defined() ? w.data<T>() : nullptr;
    T* yp = y.data<T>();
    S* rp = rstd.data<S>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * D;
      double ss = 0;
      for (int64_t d = 0; d < D; ++d) {
        double v = double(convert<acc_t<T>>(xr[d]));
        ss += v * v;
      }
      // The stored (rounded) rstd is the one used for y, so the backward sees the forward's numbers.
      S rs = S(1.0 / std::sqrt(ss / double(D) + eps));
      rp[r] = rs;
      for (int64_t d = 0; d < D; ++d) {
        double v = double(convert<acc_t<T>>(xr[d])) * double(rs);
        if (wp) v *= double(convert<acc_t<T>>(wp[d]));
        yp[r * D + d] = convert<T>(v);
      }
    }
  });
}

// With xh = x rstd and g = dy w:  dx = rstd (g - xh mean(g xh)),  dw = sum over rows of dy xh. With
// accumulate_dx, dx += that gradient rounded to T first: the bits of a separate add of the two (the sum of two
// values of T computed in double and rounded once is the correctly rounded sum in T, in every dtype). dw: the
// row sums in dw's dtype (store_weight_grad: overwritten, or added into with accumulate_dw).
void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                 const Tensor& dw, bool accumulate_dx, bool accumulate_dw) {
  const int64_t D = x.size(-1), rows = D > 0 ? x.numel() / D : 0;
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    using S = stat_t<T>;
    auto ld = [](T v) { return double(convert<acc_t<T>>(v)); };
    const T* xp = x.data<T>();
    const T* wp = w.defined() ? w.data<T>() : nullptr;
    const T* gp = dy.data<T>();
    const S* rp = rstd.data<S>();
    T* dxp = dx.data<T>();
    std::vector<double> dw_acc(wp ? size_t(D) : 0, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const double rs = double(rp[r]);
      const T* xr = xp + r * D;
      const T* gr = gp + r * D;
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) {
        double g = ld(gr[d]) * (wp ? ld(wp[d]) : 1.0);
        dot += g * ld(xr[d]) * rs;
      }
      const double mean_dot = dot / double(D);
      for (int64_t d = 0; d < D; ++d) {
        double xh = ld(xr[d]) * rs;
        double g = ld(gr[d]) * (wp ? ld(wp[d]) : 1.0);
        // The gradient as its own rounded value: the barrier keeps the compiler from fusing its last multiply
        // into the add below (an FMA skips that rounding; f64 data has no conversion that would force it).
        T v = convert<T>(rs * (g - xh * mean_dot));
        if (accumulate_dx) asm("" : "+m"(v));
        dxp[r * D + d] = accumulate_dx ? convert<T>(ld(dxp[r * D + d]) + ld(v)) : v;
        if (wp) dw_acc[size_t(d)] += ld(gr[d]) * xh;
      }
    }
    if (wp) store_weight_grad(dw_acc, dw, accumulate_dw);
  });
}

void l2norm_fwd(const Tensor& x, double eps, const Tensor& y, const Tensor& rnorm) {
  const int64_t D = x.size(-1), rows = D > 0 ? x.numel() / D : 0;
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    using S = stat_t<T>;
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    S* rp = rnorm.data<S>();
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t d = 0; d < D; ++d) {
        double v = double(convert<acc_t<T>>(xp[r * D + d]));
        ss += v * v;
      }
      S rn = S(1.0 / std::sqrt(ss + eps));
      rp[r] = rn;
      for (int64_t d = 0; d < D; ++d) yp[r * D + d] = convert<T>(double(convert<acc_t<T>>(xp[r * D + d])) * double(rn));
    }
  });
}

// dy_i/dx_j = rnorm (delta_ij - y_i y_j), so dx = rnorm (dy - y sum(dy y)).
void l2norm_bwd(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx) {
  const int64_t D = y.size(-1), rows = D > 0 ? y.numel() / D : 0;
  NATSL_DISPATCH_FLOAT(y.dtype(), T, [&] {
    using S = stat_t<T>;
    auto ld = [](T v) { return double(convert<acc_t<T>>(v)); };
    const T* yp = y.data<T>();
    const T* gp = dy.data<T>();
    const S* rp = rnorm.data<S>();
    T* dxp = dx.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += ld(gp[r * D + d]) * ld(yp[r * D + d]);
      for (int64_t d = 0; d < D; ++d)
        dxp[r * D + d] = convert<T>(double(rp[r]) * (ld(gp[r * D + d]) - ld(yp[r * D + d]) * dot));
    }
  });
}

}  // namespace natsl::kernels::cpu
