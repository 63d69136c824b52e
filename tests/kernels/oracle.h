#pragma once
// A float64 oracle of the NAtS-L mixed operator, written the slow, obvious way from natsl-layer.md:
// dense [T, T] attention with an explicit visibility/multiplier matrix, the GDN branch as a token recurrence
// with a carried state, the router and the output mixing as plain loops. No chunked algorithm, no online
// softmax, no compact index: if the kernels and this agree, they agree on the definition.
//
// All tensors are contiguous f64 on the CPU, in the kernels' layouts:
//   qa, ka [B, T, Ha, Dk], va [B, T, Ha, Dv]           softmax view
//   qg, kg [B, T, H, K],  vg [B, T, H, V], g, beta [B, T, H]   GDN view (q/k already L2-normalised)
//   mask_softmax, mask_gdn [B, NC, Hr] (exact 0/1 labels; the GDN one may be continuous)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"

namespace natsl::oracle {

inline const double* cptr(const Tensor& t) { return t.data<double>(); }
inline double* ptr(const Tensor& t) { return t.data<double>(); }
inline Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), DType::f64); }

// ------------------------------------------------------------------------------------------ softmax branch
// M[i][j] for one (b, router head r): the weight multiplying e^{z_ij} (0 = invisible).
//   own chunk: [j <= i];  earlier chunk c: mask_softmax[b, c, r] (times mult[b, c, r] when given);  later: 0
inline std::vector<double> attention_weights(int64_t T, int64_t C, const Tensor& mask_softmax, const Tensor& mult,
                                             int64_t b, int64_t r) {
  const int64_t NC = mask_softmax.size(1), Hr = mask_softmax.size(2);
  const double* sel = cptr(mask_softmax);
  const double* mu = mult.defined() ? cptr(mult) : nullptr;
  std::vector<double> M(size_t(T * T), 0.0);
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) {
      const int64_t ci = i / C, cj = j / C;
      double w = 0;
      if (ci == cj) w = j <= i ? 1.0 : 0.0;
      else if (cj < ci) {
        const int64_t at = (b * NC + cj) * Hr + r;
        w = sel[at] > 0.5 ? 1.0 : 0.0;
        if (w > 0 && mu) w *= mu[at];
      }
      M[size_t(i * T + j)] = w;
    }
  return M;
}

struct AttentionOut {
  Tensor o, lse;
  std::vector<std::vector<double>> P;  // per (b, a): the dense [T, T] probabilities
};

inline AttentionOut attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask_softmax,
                                  int64_t C, double scale, const Tensor& mult = Tensor()) {
  const int64_t B = q.size(0), T = q.size(1), Ha = q.size(2), Dk = q.size(3), Dv = v.size(3);
  const int64_t Hr = mask_softmax.size(2), G = Ha / Hr;
  AttentionOut out{Tensor::zeros({B, T, Ha, Dv}, DType::f64), Tensor::zeros({B, T, Ha}, DType::f64), {}};
  const double *qp = cptr(q), *kp = cptr(k), *vp = cptr(v);
  double *op = ptr(out.o), *lp = ptr(out.lse);
  std::vector<double> z(static_cast<size_t>(T));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t a = 0; a < Ha; ++a) {
      const std::vector<double> M = attention_weights(T, C, mask_softmax, mult, b, a / G);
      std::vector<double> P(size_t(T * T), 0.0);
      for (int64_t i = 0; i < T; ++i) {
        double zmax = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < T; ++j) {
          double s = 0;
          for (int64_t e = 0; e < Dk; ++e) s += qp[((b * T + i) * Ha + a) * Dk + e] * kp[((b * T + j) * Ha + a) * Dk + e];
          z[j] = scale * s;
          if (M[i * T + j] > 0) zmax = std::max(zmax, z[j]);
        }
        double den = 0;
        for (int64_t j = 0; j < T; ++j) den += M[i * T + j] * std::exp(z[j] - zmax);
        for (int64_t j = 0; j < T; ++j) P[i * T + j] = M[i * T + j] * std::exp(z[j] - zmax) / den;
        lp[(b * T + i) * Ha + a] = zmax + std::log(den);
        for (int64_t e = 0; e < Dv; ++e) {
          double s = 0;
          for (int64_t j = 0; j < T; ++j) s += P[i * T + j] * vp[((b * T + j) * Ha + a) * Dv + e];
          op[((b * T + i) * Ha + a) * Dv + e] = s;
        }
      }
      out.P.push_back(std::move(P));
    }
  return out;
}

struct AttentionGrads {
  Tensor dq, dk, dv, dm;  // dm [B, NC, Hr]
};

// dS = P (dO v^T - rowsum(dO o)); dq = scale dS k, dk = scale dS^T q, dv = P^T dO; with drop_own_chunk the
// same-chunk pairs are left out of dq, dk, dv. dm[c] = sum of dS over chunk c's columns and the rows of later
// chunks, summed over the router head's softmax heads, for selected chunks.
inline AttentionGrads attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask_softmax,
                                    int64_t C, double scale, const Tensor& dout, bool drop_own_chunk = false,
                                    const Tensor& mult = Tensor()) {
  const int64_t B = q.size(0), T = q.size(1), Ha = q.size(2), Dk = q.size(3), Dv = v.size(3);
  const int64_t NC = mask_softmax.size(1), Hr = mask_softmax.size(2), G = Ha / Hr;
  const AttentionOut f = attention_fwd(q, k, v, mask_softmax, C, scale, mult);
  AttentionGrads g{zeros_like(q), zeros_like(k), zeros_like(v), Tensor::zeros({B, NC, Hr}, DType::f64)};
  auto qk = [&](int64_t b, int64_t t, int64_t a) { return ((b * T + t) * Ha + a) * Dk; };
  auto vo = [&](int64_t b, int64_t t, int64_t a) { return ((b * T + t) * Ha + a) * Dv; };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t a = 0; a < Ha; ++a) {
      const std::vector<double>& P = f.P[size_t(b * Ha + a)];
      for (int64_t i = 0; i < T; ++i) {
        double D = 0;
        for (int64_t e = 0; e < Dv; ++e) D += cptr(dout)[vo(b, i, a) + e] * cptr(f.o)[vo(b, i, a) + e];
        for (int64_t j = 0; j < T; ++j) {
          double dP = 0;
          for (int64_t e = 0; e < Dv; ++e) dP += cptr(dout)[vo(b, i, a) + e] * cptr(v)[vo(b, j, a) + e];
          const double p = P[i * T + j], dS = p * (dP - D);
          const bool own = i / C == j / C;
          if (!own && j / C < i / C && cptr(mask_softmax)[(b * NC + j / C) * Hr + a / G] > 0.5)
            ptr(g.dm)[(b * NC + j / C) * Hr + a / G] += dS;
          if (own && drop_own_chunk) continue;
          for (int64_t e = 0; e < Dk; ++e) {
            ptr(g.dq)[qk(b, i, a) + e] += scale * dS * cptr(k)[qk(b, j, a) + e];
            ptr(g.dk)[qk(b, j, a) + e] += scale * dS * cptr(q)[qk(b, i, a) + e];
          }
          for (int64_t e = 0; e < Dv; ++e) ptr(g.dv)[vo(b, j, a) + e] += p * cptr(dout)[vo(b, i, a) + e];
        }
      }
    }
  return g;
}

// ------------------------------------------------------------------------------------------ GDN branch
// natsl-layer.md §3.4, semantic definition: every chunk runs the gated delta rule token by token from the
// carried state H; afterwards H := decay H + m (S_end - decay H) with m = mask_gdn[b, c, h] (1 commits the
// chunk's writes, 0 only decays H). h0 [B, H, K, V] optional; returns o and the final carried state.
struct GdnOut {
  Tensor o, ht;
};
inline GdnOut gdn_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                      const Tensor& mask_gdn, int64_t C, double scale, const Tensor& h0 = Tensor()) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  const int64_t NC = (T + C - 1) / C;
  GdnOut out{Tensor::zeros({B, T, H, V}, DType::f64), Tensor::zeros({B, H, K, V}, DType::f64)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> Hc(size_t(K * V), 0.0);
      if (h0.defined()) std::copy_n(cptr(h0) + (b * H + h) * K * V, K * V, Hc.begin());
      for (int64_t c = 0; c < NC; ++c) {
        std::vector<double> S = Hc;
        double log_decay = 0;
        for (int64_t t = c * C; t < std::min(T, c * C + C); ++t) {
          const int64_t bt = (b * T + t) * H + h;
          const double* kt = cptr(k) + bt * K;
          const double* qt = cptr(q) + bt * K;
          const double* vt = cptr(v) + bt * V;
          const double alpha = std::exp(cptr(g)[bt]), bet = cptr(beta)[bt];
          log_decay += cptr(g)[bt];
          for (double& x : S) x *= alpha;
          for (int64_t e = 0; e < V; ++e) {
            double sk = 0;
            for (int64_t d = 0; d < K; ++d) sk += S[d * V + e] * kt[d];
            const double u = bet * (vt[e] - sk);
            for (int64_t d = 0; d < K; ++d) S[d * V + e] += kt[d] * u;
          }
          for (int64_t e = 0; e < V; ++e) {
            double s = 0;
            for (int64_t d = 0; d < K; ++d) s += S[d * V + e] * qt[d];
            ptr(out.o)[bt * V + e] = scale * s;
          }
        }
        const double m = cptr(mask_gdn)[(b * NC + c) * H + h], decay = std::exp(log_decay);
        for (int64_t n = 0; n < K * V; ++n) Hc[n] = decay * Hc[n] + m * (S[n] - decay * Hc[n]);
      }
      std::copy(Hc.begin(), Hc.end(), ptr(out.ht) + (b * H + h) * K * V);
    }
  return out;
}

// ------------------------------------------------------------------------------------------ router
struct RouterOut {
  Tensor pooled, logits, probs, mask_softmax, mask_gdn;
};
// x [B, T, d], W [2 Hr, d]. noise_seed/offset used only when gumbel.
inline RouterOut router_fwd(const Tensor& x, const Tensor& W, int64_t C, bool training, double tau = 1.0,
                            bool gumbel = false, uint64_t seed = 0, uint64_t offset = 0) {
  const int64_t B = x.size(0), T = x.size(1), d = x.size(2), Hr = W.size(0) / 2, NC = (T + C - 1) / C;
  RouterOut r{Tensor::zeros({B, NC, d}, DType::f64), Tensor::zeros({B, NC, Hr, 2}, DType::f64),
              Tensor::zeros({B, NC, Hr, 2}, DType::f64), Tensor::zeros({B, NC, Hr}, DType::f64),
              Tensor::zeros({B, NC, Hr}, DType::f64)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < NC; ++c) {
      const int64_t t1 = std::min(T, c * C + C);
      for (int64_t e = 0; e < d; ++e) {
        double s = 0;
        for (int64_t t = c * C; t < t1; ++t) s += cptr(x)[(b * T + t) * d + e];
        ptr(r.pooled)[(b * NC + c) * d + e] = s / double(t1 - c * C);
      }
      for (int64_t h = 0; h < Hr; ++h) {
        double y[2];
        for (int op = 0; op < 2; ++op) {
          double s = 0;
          for (int64_t e = 0; e < d; ++e) s += cptr(W)[(2 * h + op) * d + e] * cptr(r.pooled)[(b * NC + c) * d + e];
          const int64_t n = ((b * NC + c) * Hr + h) * 2 + op;
          ptr(r.logits)[n] = s;
          y[op] = s;
          if (gumbel) y[op] -= std::log(-std::log(double(philox_uniform(seed, offset + uint64_t(n)))));
        }
        const double e0 = std::exp(y[0] / tau), e1 = std::exp(y[1] / tau);
        const int64_t row = (b * NC + c) * Hr + h;
        ptr(r.probs)[2 * row] = e0 / (e0 + e1);
        ptr(r.probs)[2 * row + 1] = e1 / (e0 + e1);
        const bool last = training && c == NC - 1;
        ptr(r.mask_softmax)[row] = (y[0] >= y[1] || last) ? 1.0 : 0.0;
        ptr(r.mask_gdn)[row] = (y[0] < y[1] || last) ? 1.0 : 0.0;
      }
    }
  return r;
}

// ------------------------------------------------------------------------------------------ output mixing
// y = (w0 RMSNorm(og) gamma_g + w1 RMSNorm(oa) gamma_a) * silu(z), w = softmax(wlogits) per row.
inline Tensor mix_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z, const Tensor& gamma_g,
                      const Tensor& gamma_a, double eps) {
  const int64_t D = og.size(-1), R = og.numel() / D;
  Tensor y = zeros_like(og);
  for (int64_t row = 0; row < R; ++row) {
    double sg = 0, sa = 0;
    for (int64_t e = 0; e < D; ++e) {
      sg += cptr(og)[row * D + e] * cptr(og)[row * D + e];
      sa += cptr(oa)[row * D + e] * cptr(oa)[row * D + e];
    }
    const double rg = 1 / std::sqrt(sg / double(D) + eps), ra = 1 / std::sqrt(sa / double(D) + eps);
    const double l0 = cptr(wlogits)[2 * row], l1 = cptr(wlogits)[2 * row + 1];
    const double w0 = std::exp(l0) / (std::exp(l0) + std::exp(l1)), w1 = 1 - w0;
    for (int64_t e = 0; e < D; ++e) {
      const double zz = cptr(z)[row * D + e];
      const double gate = zz / (1 + std::exp(-zz));
      ptr(y)[row * D + e] = (w0 * cptr(og)[row * D + e] * rg * cptr(gamma_g)[e] +
                             w1 * cptr(oa)[row * D + e] * ra * cptr(gamma_a)[e]) * gate;
    }
  }
  return y;
}

// GDN's gated output norm (kernels/mix_norm_gate.h norm_gate): o * rstd * gamma * silu(z) per row.
inline Tensor norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps) {
  const int64_t D = o.size(-1), R = o.numel() / D;
  Tensor y = zeros_like(o);
  for (int64_t row = 0; row < R; ++row) {
    double ss = 0;
    for (int64_t e = 0; e < D; ++e) ss += cptr(o)[row * D + e] * cptr(o)[row * D + e];
    const double r = 1 / std::sqrt(ss / double(D) + eps);
    for (int64_t e = 0; e < D; ++e) {
      const double zz = cptr(z)[row * D + e];
      ptr(y)[row * D + e] = cptr(o)[row * D + e] * r * cptr(gamma)[e] * zz / (1 + std::exp(-zz));
    }
  }
  return y;
}

// ------------------------------------------------------------------------------------------ finite differences
// <a, b> over all elements.
inline double inner(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t n = 0; n < a.numel(); ++n) s += cptr(a)[n] * cptr(b)[n];
  return s;
}

// Central differences of loss() with respect to every element of x (perturbed in place and restored).
inline Tensor finite_difference(const std::function<double()>& loss, const Tensor& x, double eps = 1e-6) {
  Tensor out = zeros_like(x);
  double* p = ptr(x);
  for (int64_t n = 0; n < x.numel(); ++n) {
    const double keep = p[n];
    p[n] = keep + eps;
    const double lp = loss();
    p[n] = keep - eps;
    const double lm = loss();
    p[n] = keep;
    ptr(out)[n] = (lp - lm) / (2 * eps);
  }
  return out;
}

// Central difference of loss() along direction dir of x: approximates <dL/dx, dir>.
inline double directional_difference(const std::function<double()>& loss, const Tensor& x, const Tensor& dir,
                                     double eps = 1e-6) {
  double* p = ptr(x);
  std::vector<double> keep(p, p + x.numel());
  for (int64_t n = 0; n < x.numel(); ++n) p[n] = keep[n] + eps * cptr(dir)[n];
  const double lp = loss();
  for (int64_t n = 0; n < x.numel(); ++n) p[n] = keep[n] - eps * cptr(dir)[n];
  const double lm = loss();
  std::copy(keep.begin(), keep.end(), p);
  return (lp - lm) / (2 * eps);
}

}  // namespace natsl::oracle
