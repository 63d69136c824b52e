#pragma once
// The NAtS-L layer (natsl-layer.md §3) written out in f64 from plain loops and the dense oracle of
// tests/kernels/oracle.h: projections, short convs, gates, router, dense masked attention, token-recurrent GDN
// with the state-write mask, output mixing, o_proj. Reads the parameters of a NatslAttention by name.
#include <cmath>
#include <string>

#include "layers/natsl_attention.h"
#include "tests/layers/reference_model.h"
#include "tests/kernels/oracle.h"

namespace natsl::testing {

// A one-layer NAtS-L model small enough for the f64 reference layer: GDN K = 4, V = 8; attention G = 2 with
// d_a = 2, d_av = 4; no RoPE.
inline ModelConfig tiny_natsl_config() {
  ModelConfig c = sized_model({.vocab = 11, .hidden = 6, .intermediate = 5}, 1);
  c.default_mixer = "natsl";
  set_gdn_heads(c, {.heads = 2, .head_dim = 4, .expand_v = 2.0});  // V = 8
  // G = 2: d_a = 2, d_av = 4
  set_attn_heads(c, {.heads = 4, .head_dim = 0, .value_dim = 0, .qk_norm = true, .rope = false});
  return c;
}

struct ReferenceLayerOut {
  Tensor out;                      // [B, T, d]
  oracle::RouterOut router;        // pooled, logits, probs, masks
};

// Causal depthwise conv of rows [B, T, Cn] with weight [Cn, W], then SiLU.
inline Vec ref_conv_silu(const Vec& u, const Vec& w, int64_t B, int64_t T, int64_t Cn, int64_t W) {
  Vec y(u.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < Cn; ++c) {
        double s = 0;
        for (int64_t j = 0; j < W; ++j) {
          const int64_t src = t - W + 1 + j;
          if (src >= 0) s += w[size_t(c * W + j)] * u[size_t((b * T + src) * Cn + c)];
        }
        y[size_t((b * T + t) * Cn + c)] = ref_silu(s);
      }
  return y;
}

// Rows of length D divided by sqrt(sum of squares + 1e-6) (FLA's l2norm).
inline Vec ref_l2norm(const Vec& x, int64_t D) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / size_t(D); ++r) {
    double ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += x[r * size_t(D) + size_t(j)] * x[r * size_t(D) + size_t(j)];
    for (int64_t j = 0; j < D; ++j) y[r * size_t(D) + size_t(j)] = x[r * size_t(D) + size_t(j)] / std::sqrt(ss + 1e-6);
  }
  return y;
}

// attn_mult [B, NC, Hr]: optional multipliers of each selected chunk's softmax weights (router-gradient
// checks); gdn_mask [B, NC, H]: optional replacement of the router's state-write mask (continuous allowed).
inline ReferenceLayerOut reference_layer(const NatslAttention& layer, const ModelConfig& c, const Tensor& x,
                                         bool training, const Tensor& attn_mult = Tensor(),
                                         const Tensor& gdn_mask = Tensor(), double tau = 1.0, bool gumbel = false,
                                         uint64_t seed = 0, uint64_t offset = 0) {
  const NatslDims& n = layer.ndims();
  const int64_t B = x.size(0), T = x.size(1), d = x.size(2), N = B * T;
  const int64_t H = n.gdn.heads, K = n.gdn.key_dim, V = n.gdn.value_dim, Ha = n.attn_heads;
  const int64_t Da = n.attn_head_dim, Dav = n.attn_value_dim, C = n.chunk, W = c.conv_size;
  const Vec xv = x.to_vector<double>();
  auto P = [&](const std::string& name) { return param(layer, name); };
  auto act = [&](const std::string& proj, const std::string& conv, int64_t width) {
    Vec p = ref_linear(xv, P(proj + ".weight"), N, d, width);
    if (c.use_short_conv) return ref_conv_silu(p, P(conv + ".weight"), B, T, width, W);
    for (double& e : p) e = ref_silu(e);
    return p;
  };
  const Vec q = act("q_proj", "q_conv1d", H * K), k = act("k_proj", "k_conv1d", H * K);
  const Vec v = act("v_proj", "v_conv1d", H * V);

  // GDN gates
  const Vec bl = ref_linear(xv, P("b_proj.weight"), N, d, H), al = ref_linear(xv, P("a_proj.weight"), N, d, H);
  const Vec A_log = P("A_log"), dt_bias = P("dt_bias");
  Vec beta(size_t(N * H)), g(size_t(N * H));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t h = 0; h < H; ++h) {
      const size_t at = size_t(i * H + h);
      beta[at] = 1 / (1 + std::exp(-bl[at]));
      const double a = al[at] + dt_bias[size_t(h)];
      g[at] = -std::exp(A_log[size_t(h)]) * (a > 30 ? a : std::log1p(std::exp(a)));
    }

  ReferenceLayerOut r;
  r.router = oracle::router_fwd(x, tensor(P("nats_layer.weight"), {2 * H, d}), C, training, tau, gumbel, seed, offset);

  // softmax branch
  Vec qa = q, ka = k;
  if (c.attn_qk_norm) {
    qa = ref_rmsnorm(q, P("q_norm.weight"), Da, c.norm_eps);
    ka = ref_rmsnorm(k, P("k_norm.weight"), Da, c.norm_eps);
  }
  const Tensor oa = oracle::attention_fwd(tensor(qa, {B, T, Ha, Da}), tensor(ka, {B, T, Ha, Da}),
                                          tensor(v, {B, T, Ha, Dav}), r.router.mask_softmax, C,
                                          1 / std::sqrt(double(Da)), attn_mult)
                        .o;
  // GDN branch
  const Tensor og = oracle::gdn_fwd(tensor(ref_l2norm(q, K), {B, T, H, K}), tensor(ref_l2norm(k, K), {B, T, H, K}),
                                    tensor(v, {B, T, H, V}), tensor(g, {B, T, H}), tensor(beta, {B, T, H}),
                                    gdn_mask.defined() ? gdn_mask : r.router.mask_gdn, C, 1 / std::sqrt(double(K)))
                        .o;
  // mixing, o_proj
  const Vec wl = ref_linear(q, P("nats_out_weights_layer.weight"), N, H * K, 2 * Ha);
  const Vec z = ref_linear(xv, P("g_proj.weight"), N, d, H * V);
  const Tensor y = oracle::mix_fwd(og.view({B, T, Ha, Dav}), oa, tensor(wl, {B, T, Ha, 2}), tensor(z, {B, T, Ha, Dav}),
                                   tensor(P("o_norm.weight1"), {Dav}), tensor(P("o_norm.weight2"), {Dav}), c.norm_eps);
  r.out = tensor(ref_linear(y.to_vector<double>(), P("o_proj.weight"), N, H * V, d), {B, T, d});
  return r;
}

}  // namespace natsl::testing
