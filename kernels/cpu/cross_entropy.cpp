// CPU reference for the fused cross-entropy: per row lse = log sum exp(logits), loss = lse - logit[target];
// the backward rebuilds softmax from lse row by row, so no [N, V] probability tensor ever exists.
#include <cmath>
#include <limits>

#include "kernels/cpu/index.h"
#include "kernels/cpu/math.h"
#include "kernels/nn.h"

namespace natsl::kernels::cpu {

void cross_entropy_fwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& losses,
                       const Tensor& lse, const Tensor& valid) {
  const int64_t N = logits.size(0), V = logits.size(1);
  std::vector<int64_t> tgt = load_ids(targets, V, "cross_entropy targets", ignore_index);
  NATSL_DISPATCH_FLOAT(logits.dtype(), T, [&] {
    using S = stat_t<T>;
    auto ld = [](T v) { return double(convert<acc_t<T>>(v)); };
    const T* x = logits.data<T>();
    S* lp = losses.data<S>();
    S* sp = lse.data<S>();
    S* vp = valid.data<S>();
    for (int64_t i = 0; i < N; ++i) {
      const T* row = x + i * V;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < V; ++j) m = std::max(m, ld(row[j]));
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(ld(row[j]) - m);
      const double l = m + std::log(s);
      const bool ok = tgt[size_t(i)] != ignore_index;
      sp[i] = S(l);
      vp[i] = S(ok ? 1 : 0);
      lp[i] = S(ok ? l - ld(row[tgt[size_t(i)]]) : 0.0);
    }
  });
}

void cross_entropy_bwd(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_scale,
                       int64_t ignore_index, const Tensor& dlogits) {
  const int64_t N = logits.size(0), V = logits.size(1);
  std::vector<int64_t> tgt = load_ids(targets, V, "cross_entropy targets", ignore_index);
  const double scale = grad_scale.item();
  NATSL_DISPATCH_FLOAT(logits.dtype(), T, [&] {
    using S = stat_t<T>;
    const T* x = logits.data<T>();
    const S* sp = lse.data<S>();
    T* d = dlogits.data<T>();  // may alias x: each element is read before it is written
    for (int64_t i = 0; i < N; ++i) {
      const int64_t t = tgt[size_t(i)];
      const bool ok = t != ignore_index;
      for (int64_t j = 0; j < V; ++j) {
        double g = 0;
        if (ok) g = (std::exp(double(convert<acc_t<T>>(x[i * V + j])) - double(sp[i])) - (j == t ? 1.0 : 0.0)) * scale;
        d[i * V + j] = convert<T>(g);
      }
    }
  });
}

}  // namespace natsl::kernels::cpu
