// CPU reference of the NAtS-L router kernels (kernels/router.h).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/philox.h"
#include "kernels/cpu/math.h"
#include "kernels/router.h"

namespace natsl::kernels::cpu {
namespace {

template <class T> using Stat = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
void pool_fwd(const Tensor& x, int64_t C, const Tensor& pooled) {
  using A = acc_t<T>;
  const int64_t B = x.size(0), L = x.size(1), d = x.size(2), NC = pooled.size(1);
  const T* xp = x.data<T>();
  T* pp = pooled.data<T>();
  std::vector<A> acc(static_cast<size_t>(d));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < NC; ++c) {
      const int64_t t0 = c * C, t1 = std::min(L, t0 + C);
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t e = 0; e < d; ++e) acc[e] += convert<A>(xp[(b * L + t) * d + e]);
      for (int64_t e = 0; e < d; ++e) pp[(b * NC + c) * d + e] = convert<T>(acc[e] / A(t1 - t0));
    }
}

template <class T>
void pool_bwd(const Tensor& dpooled, int64_t C, const Tensor& dx, bool accumulate) {
  using A = acc_t<T>;
  const int64_t B = dx.size(0), L = dx.size(1), d = dx.size(2), NC = dpooled.size(1);
  const T* gp = dpooled.data<T>();
  T* dp = dx.data<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t) {
      const int64_t c = t / C, n = std::min(L, c * C + C) - c * C;
      for (int64_t e = 0; e < d; ++e) {
        T v = convert<T>(convert<A>(gp[(b * NC + c) * d + e]) / A(n));
        if (accumulate) asm("" : "+m"(v));  // its own rounded value: no FMA contraction into the add
        T& o = dp[(b * L + t) * d + e];
        o = accumulate ? convert<T>(convert<A>(o) + convert<A>(v)) : v;
      }
    }
}

template <class T>
void choice_fwd(const RouterChoiceArgs& args, const Tensor& logits, const Tensor& probs, const Tensor& mask_softmax,
                const Tensor& mask_gdn) {
  using S = Stat<T>;
  const int64_t B = logits.size(0), NC = logits.size(1), Hr = logits.size(2);
  const T* lp = logits.data<T>();
  S* pp = probs.data<S>();
  S* ms = mask_softmax.data<S>();
  S* mg = mask_gdn.data<S>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < NC; ++c)
      for (int64_t r = 0; r < Hr; ++r) {
        const int64_t row = (b * NC + c) * Hr + r;
        double s[2];
        for (int op = 0; op < 2; ++op) {
          s[op] = double(convert<S>(lp[2 * row + op]));
          if (args.gumbel) {
            const double u = double(philox_uniform(args.seed, args.offset + uint64_t(2 * row + op)));
            s[op] += -std::log(-std::log(u));
          }
        }
        // softmax over two entries: p1 = sigmoid((s1 - s0) / tau)
        const double p1 = 1.0 / (1.0 + std::exp((s[0] - s[1]) / args.tau));
        pp[2 * row] = S(1.0 - p1);
        pp[2 * row + 1] = S(p1);
        const bool softmax = s[0] >= s[1];
        const bool both = args.force_last_both && c == NC - 1;
        ms[row] = S(softmax || both ? 1 : 0);
        mg[row] = S(!softmax || both ? 1 : 0);
      }
}

template <class T>
void choice_bwd(const RouterChoiceArgs& args, const Tensor& probs, const Tensor& mask_softmax, const Tensor& mask_gdn,
                const Tensor& dm_softmax, const Tensor& dm_gdn, const Tensor& dlogits) {
  using S = Stat<T>;
  const int64_t B = probs.size(0), NC = probs.size(1), Hr = probs.size(2);
  const S* pp = probs.data<S>();
  const S* ds = dm_softmax.defined() ? dm_softmax.data<S>() : nullptr;
  const S* dg = dm_gdn.defined() ? dm_gdn.data<S>() : nullptr;
  const S* ms = mask_softmax.defined() ? mask_softmax.data<S>() : nullptr;
  const S* mg = mask_gdn.defined() ? mask_gdn.data<S>() : nullptr;
  T* out = dlogits.data<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < NC; ++c)
      for (int64_t r = 0; r < Hr; ++r) {
        const int64_t row = (b * NC + c) * Hr + r;
        const bool dropped = args.force_last_both && c == NC - 1;
        const bool sel0 = !ms || ms[row] > S(0.5), sel1 = !mg || mg[row] > S(0.5);
        const double m0 = ds && sel0 && !dropped ? double(ds[row]) : 0.0;
        const double m1 = dg && sel1 && !dropped ? double(dg[row]) : 0.0;
        const double p0 = pp[2 * row], p1 = pp[2 * row + 1];
        const double mean = m0 * p0 + m1 * p1;
        out[2 * row] = convert<T>(p0 * (m0 - mean) / args.tau);
        out[2 * row + 1] = convert<T>(p1 * (m1 - mean) / args.tau);
      }
}

}  // namespace

void chunk_mean_pool_fwd(const Tensor& x, int64_t chunk_size, const Tensor& pooled) {
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] { pool_fwd<T>(x, chunk_size, pooled); });
}
void chunk_mean_pool_bwd(const Tensor& dpooled, int64_t chunk_size, const Tensor& dx, bool accumulate) {
  NATSL_DISPATCH_FLOAT(dx.dtype(), T, [&] { pool_bwd<T>(dpooled, chunk_size, dx, accumulate); });
}
void router_choice_fwd(const RouterChoiceArgs& args, const Tensor& logits, const Tensor& probs,
                       const Tensor& mask_softmax, const Tensor& mask_gdn) {
  NATSL_DISPATCH_FLOAT(logits.dtype(), T, [&] { choice_fwd<T>(args, logits, probs, mask_softmax, mask_gdn); });
}
void router_choice_bwd(const RouterChoiceArgs& args, const Tensor& probs, const Tensor& mask_softmax,
                       const Tensor& mask_gdn, const Tensor& dm_softmax, const Tensor& dm_gdn,
                       const Tensor& dlogits) {
  NATSL_DISPATCH_FLOAT(dlogits.dtype(), T,
                       [&] { choice_bwd<T>(args, probs, mask_softmax, mask_gdn, dm_softmax, dm_gdn, dlogits); });
}

}  // namespace natsl::kernels::cpu
