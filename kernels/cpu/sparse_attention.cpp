// CPU reference of chunk-selected causal softmax attention (kernels/sparse_attention.h): per query row, an
// online softmax over the key blocks it visits (own chunk first, causal; then the selected earlier chunks),
// and a backward that recomputes P from the saved lse.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/math.h"
#include "kernels/cpu/parallel.h"
#include "kernels/sparse_attention.h"

namespace natsl::kernels::cpu {
namespace {

template <class T> using Stat = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class A, class T>
std::vector<A> load(const Tensor& t) {
  const T* p = t.data<T>();
  std::vector<A> out(size_t(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = convert<A>(p[i]);
  return out;
}

template <class A>
A dot(const A* a, const A* b, int64_t n) {
  A s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Sizes and the selection lists of one call.
struct Geometry {
  int64_t B, T, Ha, Dk, Dv, Hr, G, NC, C;
  const int32_t* chunks;
  const int32_t* prefix;

  Geometry(const SparseAttentionIndex& index, const Tensor& q, const Tensor& v)
      : B(q.size(0)), T(q.size(1)), Ha(q.size(2)), Dk(q.size(3)), Dv(v.size(3)), Hr(index.router_heads()),
        G(Ha / Hr), NC(index.num_chunks()), C(index.chunk_size), chunks(index.chunks.data<int32_t>()),
        prefix(index.prefix.data<int32_t>()) {}

  int64_t begin(int64_t c) const { return c * C; }
  int64_t end(int64_t c) const { return std::min(T, c * C + C); }
  // The selected chunks before query chunk qc, for batch b and router head r.
  const int32_t* earlier(int64_t b, int64_t r) const { return chunks + (b * Hr + r) * NC; }
  int64_t num_earlier(int64_t b, int64_t r, int64_t qc) const { return prefix[(b * Hr + r) * (NC + 1) + qc]; }
  int64_t qk_at(int64_t b, int64_t t, int64_t a) const { return ((b * T + t) * Ha + a) * Dk; }
  int64_t v_at(int64_t b, int64_t t, int64_t a) const { return ((b * T + t) * Ha + a) * Dv; }
  int64_t mask_at(int64_t b, int64_t c, int64_t r) const { return (b * NC + c) * Hr + r; }
};

template <class T>
void fwd_impl(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q, const Tensor& k,
              const Tensor& v, const Tensor& o, const Tensor& lse) {
  using A = acc_t<T>;
  using S = Stat<T>;
  const Geometry g(index, q, v);
  const std::vector<A> qv = load<A, T>(q), kv = load<A, T>(k), vv = load<A, T>(v);
  const S* mult = args.chunk_mult.defined() ? args.chunk_mult.data<S>() : nullptr;
  T* op = o.data<T>();
  S* lp = lse.data<S>();
  const A scale = A(args.scale);

  // Every (batch row, head) writes only its own rows of o and lse: one thread per block of them.
  parallel_for(g.B * g.Ha, [&](int64_t ba) {
    const int64_t b = ba / g.Ha, a = ba % g.Ha, r = a / g.G;
    std::vector<A> acc(size_t(g.Dv)), score(size_t(g.C));
    for (int64_t i = 0; i < g.T; ++i) {
      const int64_t qc = i / g.C;
      const A* qi = &qv[g.qk_at(b, i, a)];
      A m = -std::numeric_limits<A>::infinity(), l = 0;
      std::fill(acc.begin(), acc.end(), A(0));
      // One key block [j0, j1) with weight mu: rescale the running sums to the new max, then add.
      auto visit = [&](int64_t j0, int64_t j1, A mu) {
        A block_max = -std::numeric_limits<A>::infinity();
        for (int64_t j = j0; j < j1; ++j) {
          score[j - j0] = scale * dot(qi, &kv[g.qk_at(b, j, a)], g.Dk);
          block_max = std::max(block_max, score[j - j0]);
        }
        if (block_max > m) {
          const A f = std::exp(m - block_max);
          l *= f;
          for (A& x : acc) x *= f;
          m = block_max;
        }
        for (int64_t j = j0; j < j1; ++j) {
          const A p = mu * std::exp(score[j - j0] - m);
          l += p;
          const A* vj = &vv[g.v_at(b, j, a)];
          for (int64_t e = 0; e < g.Dv; ++e) acc[e] += p * vj[e];
        }
      };
      visit(g.begin(qc), i + 1, A(1));
      const int32_t* list = g.earlier(b, r);
      for (int64_t n = 0, cnt = g.num_earlier(b, r, qc); n < cnt; ++n) {
        const int64_t c = list[n];
        visit(g.begin(c), g.end(c), mult ? A(mult[g.mask_at(b, c, r)]) : A(1));
      }
      T* oi = op + g.v_at(b, i, a);
      for (int64_t e = 0; e < g.Dv; ++e) oi[e] = convert<T>(acc[e] / l);
      lp[(b * g.T + i) * g.Ha + a] = S(m + std::log(l));
    }
  });
}

template <class T>
void bwd_impl(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q, const Tensor& k,
              const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout, const Tensor& dq,
              const Tensor& dk, const Tensor& dv, const Tensor& dm) {
  using A = acc_t<T>;
  using S = Stat<T>;
  const Geometry g(index, q, v);
  const std::vector<A> qv = load<A, T>(q), kv = load<A, T>(k), vv = load<A, T>(v), ov = load<A, T>(o),
                       dov = load<A, T>(dout);
  const S* mult = args.chunk_mult.defined() ? args.chunk_mult.data<S>() : nullptr;
  const S* lp = lse.data<S>();
  const A scale = A(args.scale);
  std::vector<A> dqa(qv.size(), A(0)), dka(kv.size(), A(0)), dva(vv.size(), A(0));
  std::vector<A> dma(size_t(g.B * g.NC * g.Hr), A(0));

  // A (batch row, router head) pair owns its heads' dq, dk, dv rows and its mask gradients (summed over
  // its heads in order): one thread per block of pairs.
  parallel_for(g.B * g.Hr, [&](int64_t br) {
    const int64_t b = br / g.Hr, r = br % g.Hr;
    for (int64_t a = r * g.G; a < (r + 1) * g.G; ++a) {
      for (int64_t i = 0; i < g.T; ++i) {
        const int64_t qc = i / g.C;
        const A* qi = &qv[g.qk_at(b, i, a)];
        const A* doi = &dov[g.v_at(b, i, a)];
        A* dqi = &dqa[g.qk_at(b, i, a)];
        const A lse_i = A(lp[(b * g.T + i) * g.Ha + a]);
        const A D = dot(doi, &ov[g.v_at(b, i, a)], g.Dv);
        // One key block [j0, j1) with weight mu; returns sum_j dS_ij over it.
        auto visit = [&](int64_t j0, int64_t j1, A mu, bool own_chunk) {
          const bool grads = !(own_chunk && args.drop_own_chunk_grad);
          A ds_sum = 0;
          for (int64_t j = j0; j < j1; ++j) {
            const A* kj = &kv[g.qk_at(b, j, a)];
            const A* vj = &vv[g.v_at(b, j, a)];
            const A p = mu * std::exp(scale * dot(qi, kj, g.Dk) - lse_i);
            const A ds = p * (dot(doi, vj, g.Dv) - D);
            ds_sum += ds;
            if (!grads) continue;
            A* dkj = &dka[g.qk_at(b, j, a)];
            A* dvj = &dva[g.v_at(b, j, a)];
            for (int64_t e = 0; e < g.Dk; ++e) {
              dqi[e] += scale * ds * kj[e];
              dkj[e] += scale * ds * qi[e];
            }
            for (int64_t e = 0; e < g.Dv; ++e) dvj[e] += p * doi[e];
          }
          return ds_sum;
        };
        visit(g.begin(qc), i + 1, A(1), true);
        const int32_t* list = g.earlier(b, r);
        for (int64_t n = 0, cnt = g.num_earlier(b, r, qc); n < cnt; ++n) {
          const int64_t c = list[n];
          const int64_t mi = g.mask_at(b, c, r);
          dma[size_t(mi)] += visit(g.begin(c), g.end(c), mult ? A(mult[mi]) : A(1), false);
        }
      }
    }
  });

  auto store = [](const std::vector<A>& src, const Tensor& dst) {
    T* p = dst.data<T>();
    for (size_t n = 0; n < src.size(); ++n) p[n] = convert<T>(src[n]);
  };
  store(dqa, dq);
  store(dka, dk);
  store(dva, dv);
  if (dm.defined()) {
    S* p = dm.data<S>();
    for (size_t n = 0; n < dma.size(); ++n) p[n] = S(dma[n]);
  }
}

}  // namespace

void sparse_attention_index(const Tensor& softmax_mask, const SparseAttentionIndex& index) {
  const int64_t B = softmax_mask.size(0), NC = softmax_mask.size(1), Hr = softmax_mask.size(2);
  const std::vector<double> m = softmax_mask.to_vector<double>();
  int32_t* chunks = index.chunks.data<int32_t>();
  int32_t* prefix = index.prefix.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < Hr; ++r) {
      int32_t* list = chunks + (b * Hr + r) * NC;
      int32_t* pre = prefix + (b * Hr + r) * (NC + 1);
      int32_t n = 0;
      for (int64_t c = 0; c < NC; ++c) {
        pre[c] = n;
        if (m[size_t((b * NC + c) * Hr + r)] > 0.5) list[n++] = int32_t(c);
      }
      pre[NC] = n;
      for (int64_t c = n; c < NC; ++c) list[c] = int32_t(NC);
    }
}

void sparse_attention_fwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse) {
  NATSL_DISPATCH_FLOAT(q.dtype(), T, [&] { fwd_impl<T>(args, index, q, k, v, o, lse); });
}

void sparse_attention_bwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dm) {
  NATSL_DISPATCH_FLOAT(q.dtype(), T, [&] { bwd_impl<T>(args, index, q, k, v, o, lse, dout, dq, dk, dv, dm); });
}

}  // namespace natsl::kernels::cpu
