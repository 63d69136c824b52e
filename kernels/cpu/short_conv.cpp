// CPU reference for the causal depthwise short convolution:
//   z[b,t,c] = sum_j w[c,j] x[b, t-W+1+j, c] (x = 0 before t = 0),  y = act(z), act = SiLU or identity.
// Backward with dz = dy act'(z):  dx[b,s,c] = sum_j w[c,j] dz[b, s+W-1-j, c] (terms past T dropped),
//   dw[c,j] = sum_{b,t} dz[b,t,c] x[b, t-W+1+j, c].
#include <vector>

#include "kernels/cpu/math.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/weight_grad.h"
#include "kernels/nn.h"

namespace natsl::kernels::cpu {
namespace {

struct ConvDims {
  int64_t B, T, C, W;
};
ConvDims dims_of(const Tensor& x, const Tensor& w) { return {x.size(0), x.size(1), x.size(2), w.size(1)}; }

// z for every (b, t, c), in double.
template <class T>
std::vector<double> pre_activation(const T* x, const T* w, const ConvDims& s) {
  std::vector<double> z(size_t(s.B * s.T * s.C), 0.0);
  parallel_for(s.B, [&](int64_t b) {
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t c = 0; c < s.C; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < s.W; ++j) {
          int64_t src = t - s.W + 1 + j;
          if (src >= 0) acc += double(convert<acc_t<T>>(w[c * s.W + j])) * double(convert<acc_t<T>>(x[(b * s.T + src) * s.C + c]));
        }
        z[size_t((b * s.T + t) * s.C + c)] = acc;
      }
  });
  return z;
}

}  // namespace

void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y) {
  const ConvDims s = dims_of(x, w);
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    std::vector<double> z = pre_activation(x.data<T>(), w.data<T>(), s);
    T* yp = y.data<T>();
    for (size_t i = 0; i < z.size(); ++i) yp[i] = convert<T>(apply_silu ? silu(z[i]) : z[i]);
  });
}

void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,
                    const Tensor& dw, bool accumulate_dw) {
  const ConvDims s = dims_of(x, w);
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    auto ld = [](T v) { return double(convert<acc_t<T>>(v)); };
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    const T* gp = dy.data<T>();
    std::vector<double> dz = pre_activation(xp, wp, s);
    for (size_t i = 0; i < dz.size(); ++i) dz[i] = ld(gp[i]) * (apply_silu ? silu_grad(dz[i]) : 1.0);
    T* dxp = dx.data<T>();
    // dx: batch rows are independent; dw: each channel sums over (b, t) in order.
    parallel_for(s.B, [&](int64_t b) {
      for (int64_t t = 0; t < s.T; ++t)
        for (int64_t c = 0; c < s.C; ++c) {
          double acc = 0;
          for (int64_t j = 0; j < s.W; ++j) {
            int64_t out_t = t + s.W - 1 - j;
            if (out_t < s.T) acc += ld(wp[c * s.W + j]) * dz[size_t((b * s.T + out_t) * s.C + c)];
          }
          dxp[(b * s.T + t) * s.C + c] = convert<T>(acc);
        }
    });
    std::vector<double> dw_acc(size_t(s.C * s.W), 0.0);
    parallel_for(s.C, [&](int64_t c) {
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t j = 0; j < s.W; ++j) {
            int64_t src = t - s.W + 1 + j;
            if (src >= 0) dw_acc[size_t(c * s.W + j)] += dz[size_t((b * s.T + t) * s.C + c)] * ld(xp[(b * s.T + src) * s.C + c]);
          }
    });
    store_weight_grad(dw_acc, dw, accumulate_dw);
  });
}

}  // namespace natsl::kernels::cpu
