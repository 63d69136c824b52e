#pragma once
// Shared pieces of the CPU Gated DeltaNet kernels: where one (sequence, v head) lives in the flat tensors,
// loading a chunk, its decay factors, A and T = (I + A)^-1 by forward substitution, and the WY
// representation (gdn-algorithm.md §3 steps 0-2). Everything computes in A = acc_t<D> (the state dtype).
#include "kernels/cpu/eigen.h"
#include <cmath>

#include "kernels/cpu/math.h"
#include "kernels/gdn.h"

namespace natsl::kernels::cpu::gdn {

template <class A>
using Mat = Eigen::Matrix<A, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class A>
using Vec = Eigen::Matrix<A, Eigen::Dynamic, 1>;

// The raw pointers of a call's inputs in the data type D and its compute type A (optional inputs null).
template <class D>
struct InputPtrs {
  using A = acc_t<D>;
  const D *q, *k, *v;
  const A *g, *beta, *h0, *mask;
  explicit InputPtrs(const GdnInputs& in)
      : q(in.q.data<D>()), k(in.k.data<D>()), v(in.v.data<D>()), g(in.g.data<A>()), beta(in.beta.data<A>()),
        h0(in.h0.defined() ? in.h0.data<A>() : nullptr), mask(in.mask.defined() ? in.mask.data<A>() : nullptr) {}
};

// Flat offsets of one (batch row, v head) in the [B, T, heads, dim] tensors; t is the token within the row.
struct HeadIndex {
  const GdnShape& s;
  int64_t batch, hv;
  int64_t h() const { return hv / (s.HV / s.H); }  // q/k head read by this v head
  int64_t qk(int64_t t) const { return ((batch * s.T + t) * s.H + h()) * s.K; }
  int64_t vo(int64_t t) const { return ((batch * s.T + t) * s.HV + hv) * s.V; }
  int64_t gate(int64_t t) const { return (batch * s.T + t) * s.HV + hv; }
  int64_t a_inv(int64_t t) const { return gate(t) * kGdnChunk; }
  int64_t state(int64_t seq) const { return (seq * s.HV + hv) * s.K * s.V; }
  int64_t chunk(int64_t c) const { return c * s.HV + hv; }  // mask / dmask entry of global chunk c
};

// Rows [t0, t0 + L) of one head: `offset(t)` gives the first element of row t, each row has `width` values.
template <class A, class D, class Offset>
Mat<A> load_rows(const D* p, Offset offset, int64_t t0, int64_t L, int64_t width) {
  Mat<A> m(L, width);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < width; ++j) m(i, j) = convert<A>(p[offset(t0 + i) + j]);
  return m;
}
template <class A, class D, class Offset>
void store_rows(const Mat<A>& m, D* p, Offset offset, int64_t t0) {
  for (int64_t i = 0; i < m.rows(); ++i)
    for (int64_t j = 0; j < m.cols(); ++j) p[offset(t0 + i) + j] = convert<D>(m(i, j));
}
template <class A, class S, class Offset>
Vec<A> load_gates(const S* p, Offset offset, int64_t t0, int64_t L) {
  Vec<A> x(L);
  for (int64_t i = 0; i < L; ++i) x(i) = convert<A>(p[offset(t0 + i)]);
  return x;
}
template <class A, class S>
Mat<A> load_state(const S* p, int64_t off, const GdnShape& s) {
  Mat<A> h = Mat<A>::Zero(s.K, s.V);
  if (p)
    for (int64_t i = 0; i < s.K * s.V; ++i) h.data()[i] = convert<A>(p[off + i]);
  return h;
}
template <class A, class S>
void store_state(const Mat<A>& h, S* p, int64_t off) {
  for (int64_t i = 0; i < h.size(); ++i) p[off + i] = convert<S>(h.data()[i]);
}

// One chunk of one (sequence, v head): its inputs and decay factors.
template <class A>
struct Chunk {
  int64_t t0 = 0, L = 0;  // first token within the batch row, number of valid tokens
  Mat<A> Q, Kc, Vc;       // [L, K], [L, K], [L, V]
  Vec<A> beta;            // [L]
  Vec<A> gamma;           // [L] local inclusive cumsum of g
  Vec<A> e;               // exp(gamma_i)
  Vec<A> tail;            // exp(gamma_L - gamma_i): decay from token i to the chunk's end
  Mat<A> Gamma;           // [L, L] exp(gamma_i - gamma_j) for i >= j, 0 above (set, never multiplied, so
                          // the overflowing upper entries never appear)
  A e_last() const { return e(L - 1); }
};

template <class A, class D>
Chunk<A> load_chunk(const HeadIndex& ix, const D* q, const D* k, const D* v, const A* beta, int64_t t0,
                    int64_t L) {
  const GdnShape& s = ix.s;
  Chunk<A> c;
  c.t0 = t0;
  c.L = L;
  c.Q = load_rows<A>(q, [&](int64_t t) { return ix.qk(t); }, t0, L, s.K);
  c.Kc = load_rows<A>(k, [&](int64_t t) { return ix.qk(t); }, t0, L, s.K);
  c.Vc = load_rows<A>(v, [&](int64_t t) { return ix.vo(t); }, t0, L, s.V);
  c.beta = load_gates<A>(beta, [&](int64_t t) { return ix.gate(t); }, t0, L);
  return c;
}

// gamma from g (forward) or from the saved cumsum (backward), then the factors derived from it.
template <class A>
void set_decay(Chunk<A>& c, Vec<A> gamma) {
  const int64_t L = c.L;
  c.gamma = std::move(gamma);
  c.e = c.gamma.array().exp();
  c.tail = (c.gamma(L - 1) - c.gamma.array()).exp();
  c.Gamma = Mat<A>::Zero(L, L);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j <= i; ++j) c.Gamma(i, j) = std::exp(c.gamma(i) - c.gamma(j));
}
template <class A>
Vec<A> local_cumsum(const Vec<A>& g) {
  Vec<A> gamma(g.size());
  A acc = 0;
  for (int64_t i = 0; i < g.size(); ++i) gamma(i) = acc += g(i);
  return gamma;
}

// A_ij = beta_i (k_i . k_j) Gamma_ij for i > j, else 0.
template <class A>
Mat<A> strict_lower_a(const Chunk<A>& c) {
  Mat<A> KK = c.Kc * c.Kc.transpose();
  Mat<A> a = Mat<A>::Zero(c.L, c.L);
  for (int64_t i = 0; i < c.L; ++i)
    for (int64_t j = 0; j < i; ++j) a(i, j) = c.beta(i) * KK(i, j) * c.Gamma(i, j);
  return a;
}

// T = (I + A)^-1 for strictly lower A, by forward substitution: (I + A) T = I gives
// T_ij = delta_ij - sum_{j <= l < i} A_il T_lj (T is unit lower triangular).
template <class A>
Mat<A> unit_lower_inverse(const Mat<A>& a) {
  const int64_t L = a.rows();
  Mat<A> t = Mat<A>::Identity(L, L);
  for (int64_t i = 1; i < L; ++i)
    for (int64_t j = 0; j < i; ++j) {
      A acc = 0;
      for (int64_t l = j; l < i; ++l) acc += a(i, l) * t(l, j);
      t(i, j) = -acc;
    }
  return t;
}

// WY representation: w = T diag(beta e) K, u = T diag(beta) V, so that the values a chunk writes are
// v_new = u - w h for the entering state h.
template <class A>
struct WY {
  Mat<A> w, u;
};
template <class A>
WY<A> wy(const Chunk<A>& c, const Mat<A>& t) {
  Vec<A> be = c.beta.cwiseProduct(c.e);
  return {t * (be.asDiagonal() * c.Kc), t * (c.beta.asDiagonal() * c.Vc)};
}

// The chunk's write into the carried state: W = K^T diag(tail) v_new.
template <class A>
Mat<A> state_write(const Chunk<A>& c, const Mat<A>& v_new) {
  return c.Kc.transpose() * (c.tail.asDiagonal() * v_new);
}

// Causal (diagonal included) decayed scores (M o Gamma o Q K^T).
template <class A>
Mat<A> causal_scores(const Chunk<A>& c) {
  return (c.Q * c.Kc.transpose()).cwiseProduct(c.Gamma);  // Gamma is 0 above the diagonal
}

}  // namespace natsl::kernels::cpu::gdn
