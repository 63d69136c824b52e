#pragma once
// Plain-loop f64 references for the layers, written straight from the formulas (no natsl ops), and helpers
// shared by the layer tests.
#include <cmath>
#include <string>
#include <vector>

#include "layers/model/model_config.h"
#include "layers/module.h"
#include "tests/layers/model/model_test_util.h"
#include "tests/test_util.h"

namespace natsl::testing {

using Vec = std::vector<double>;

// A two-layer attention language model small enough for f64 loops and gradchecks.
inline ModelConfig tiny_lm_config(bool qk_norm = false) {
  ModelConfig c = sized_model({.vocab = 11, .hidden = 8, .intermediate = 12}, 2);
  set_attn_heads(c, {.heads = 2, .head_dim = 0, .value_dim = 0, .qk_norm = qk_norm, .rope = true});
  return c;
}

// Replaces every parameter of m (cast to f64 first) with N(0, std) values, seeds derived from `seed`.
inline void randomize(Module& m, uint64_t seed, double std = 0.5) {
  m.to(DType::f64);
  uint64_t s = seed;
  for (const ParameterRef& p : m.named_parameters()) p.tensor->copy_(randn(p.meta->shape, ++s, DType::f64, std));
}

inline Vec param(const Module& m, const std::string& name) {
  Tensor* t = m.find_parameter(name);
  EXPECT_NE(t, nullptr) << "no parameter " << name;
  return t ? t->to_vector<double>() : Vec();
}

inline Tensor tensor(const Vec& v, const Shape& s) { return Tensor::from_vector(v, s, DType::f64); }

// x [N, in] W [out, in] -> [N, out]
inline Vec ref_linear(const Vec& x, const Vec& w, int64_t n, int64_t in, int64_t out) {
  Vec y(size_t(n * out), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t k = 0; k < in; ++k) s += x[size_t(i * in + k)] * w[size_t(o * in + k)];
      y[size_t(i * out + o)] = s;
    }
  return y;
}

// Rows of length D: x / sqrt(mean(x^2) + eps) * w
inline Vec ref_rmsnorm(const Vec& x, const Vec& w, int64_t D, double eps) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / size_t(D); ++r) {
    double ms = 0;
    for (int64_t j = 0; j < D; ++j) ms += x[r * size_t(D) + size_t(j)] * x[r * size_t(D) + size_t(j)];
    double inv = 1.0 / std::sqrt(ms / double(D) + eps);
    for (int64_t j = 0; j < D; ++j) y[r * size_t(D) + size_t(j)] = x[r * size_t(D) + size_t(j)] * inv * w[size_t(j)];
  }
  return y;
}

inline double ref_silu(double z) { return z / (1.0 + std::exp(-z)); }

// down(silu(gate x) * up x), x [N, d]
inline Vec ref_mlp(const Vec& x, const Vec& wg, const Vec& wu, const Vec& wd, int64_t n, int64_t d, int64_t I) {
  Vec g = ref_linear(x, wg, n, d, I), u = ref_linear(x, wu, n, d, I);
  for (size_t i = 0; i < g.size(); ++i) g[i] = ref_silu(g[i]) * u[i];
  return ref_linear(g, wd, n, I, d);
}

// Rotary embedding of one head vector at position t, pairs (j, j + D/2).
inline void ref_rope_inplace(double* v, int64_t D, int64_t t, double theta) {
  const int64_t half = D / 2;
  for (int64_t j = 0; j < half; ++j) {
    double f = 1.0 / std::pow(theta, double(2 * j) / double(D));
    double c = std::cos(double(t) * f), s = std::sin(double(t) * f);
    double a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
  }
}

// Causal softmax attention over q, k [B,T,H,Dk], v [B,T,H,Dv] -> [B,T,H,Dv].
inline Vec ref_attention_core(const Vec& q, const Vec& k, const Vec& v, int64_t B, int64_t T, int64_t H, int64_t Dk,
                              int64_t Dv, bool causal) {
  Vec o(size_t(B * T * H * Dv), 0.0);
  const double scale = 1.0 / std::sqrt(double(Dk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t last = causal ? t : T - 1;
        Vec p(size_t(last + 1));
        double mx = -1e300;
        for (int64_t s = 0; s <= last; ++s) {
          double dot = 0;
          for (int64_t j = 0; j < Dk; ++j)
            dot += q[size_t(((b * T + t) * H + h) * Dk + j)] * k[size_t(((b * T + s) * H + h) * Dk + j)];
          p[size_t(s)] = dot * scale;
          mx = std::max(mx, p[size_t(s)]);
        }
        double z = 0;
        for (double& x : p) z += (x = std::exp(x - mx));
        for (int64_t s = 0; s <= last; ++s)
          for (int64_t j = 0; j < Dv; ++j)
            o[size_t(((b * T + t) * H + h) * Dv + j)] += p[size_t(s)] / z * v[size_t(((b * T + s) * H + h) * Dv + j)];
      }
  return o;
}

struct RefAttentionConfig {
  int64_t d, H, Dk, Dv;
  bool qk_norm, rope;
  double theta, eps;
};

// The full attention mixer on x [B, T, d], reading the weights of module m (names relative to m).
inline Vec ref_attention(const Module& m, const Vec& x, int64_t B, int64_t T, const RefAttentionConfig& c) {
  const int64_t n = B * T;
  Vec q = ref_linear(x, param(m, "q_proj.weight"), n, c.d, c.H * c.Dk);
  Vec k = ref_linear(x, param(m, "k_proj.weight"), n, c.d, c.H * c.Dk);
  Vec v = ref_linear(x, param(m, "v_proj.weight"), n, c.d, c.H * c.Dv);
  if (c.qk_norm) {
    q = ref_rmsnorm(q, param(m, "q_norm.weight"), c.Dk, c.eps);
    k = ref_rmsnorm(k, param(m, "k_norm.weight"), c.Dk, c.eps);
  }
  if (c.rope)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < c.H; ++h) {
          ref_rope_inplace(&q[size_t(((b * T + t) * c.H + h) * c.Dk)], c.Dk, t, c.theta);
          ref_rope_inplace(&k[size_t(((b * T + t) * c.H + h) * c.Dk)], c.Dk, t, c.theta);
        }
  Vec o = ref_attention_core(q, k, v, B, T, c.H, c.Dk, c.Dv, true);
  return ref_linear(o, param(m, "o_proj.weight"), n, c.H * c.Dv, c.d);
}

}  // namespace natsl::testing
