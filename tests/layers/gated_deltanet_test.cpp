// The GatedDeltaNet mixer: gradients of the whole layer (all parameters, the input) against finite
// differences in f64; the forward against the layer written out by hand from the token recurrence; the
// closed-form parameter count; a GDN language model end to end.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "kernels/gdn.h"
#include "layers/model/causal_lm.h"
#include "data/batch.h"
#include "layers/gated_deltanet.h"
#include "tests/layers/reference_model.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
ModelConfig gdn_config() {
  ModelConfig c = sized_model({.vocab = 11, .hidden = 6, .intermediate = 5}, 1);
  c.default_mixer = "gdn";
  set_gdn_heads(c, {.heads = 2, .head_dim = 3, .expand_v = 2.0});
  return c;
}
}  // namespace

TEST(GatedDeltaNetLayer, GradcheckAllParameters) {
  ModelConfig c = gdn_config();
  for (bool conv : {true, false}) {
    c.use_short_conv = conv;
    GatedDeltaNet layer(c, 0);
    randomize(layer, 5);
    Tensor x = randn({1, 67, 6}, 6, DType::f64, 0.5).set_requires_grad(true);
    std::vector<Tensor> inputs = {x};
    for (const ParameterRef& p : layer.named_parameters()) inputs.push_back(*p.tensor);
    GradcheckResult r = gradcheck([&](const std::vector<Tensor>& in) { return layer.forward(in[0]); }, inputs);
    EXPECT_TRUE(r.ok) << (conv ? "conv: " : "no conv: ") << r.message;
  }
}

TEST(GatedDeltaNetLayer, ForwardMatchesHandWrittenRecurrence) {
  // Without conv and gate the layer is: q,k = l2norm(silu(x W)), v = silu(x Wv), beta = sigmoid(x Wb),
  // g = -exp(A_log) softplus(x Wa + dt_bias), o = recurrence, y = rmsnorm_V(o) w, out = y Wo.
  ModelConfig c = gdn_config();
  c.use_short_conv = false;
  c.use_gate = false;
  c.num_heads = 1;
  GatedDeltaNet layer(c, 0);
  randomize(layer, 7);
  const int64_t T = 70, d = 6, K = 3, V = 6;
  Tensor x = randn({1, T, d}, 8, DType::f64, 0.5);
  auto xv = x.to_vector<double>();
  auto W = [&](const std::string& n) { return layer.find_parameter(n)->to_vector<double>(); };
  auto wq = W("q_proj.weight"), wk = W("k_proj.weight"), wv = W("v_proj.weight"), wa = W("a_proj.weight"),
       wb = W("b_proj.weight"), wo = W("o_proj.weight"), alog = W("A_log"), dtb = W("dt_bias"),
       wn = W("o_norm.weight");
  auto silu = [](double z) { return z / (1 + std::exp(-z)); };
  std::vector<double> h(size_t(K * V), 0.0), expect(size_t(T * d));
  for (int64_t t = 0; t < T; ++t) {
    const double* xt = &xv[size_t(t * d)];
    auto proj = [&](const std::vector<double>& w, int64_t r) {
      double s = 0;
      for (int64_t j = 0; j < d; ++j) s += w[size_t(r * d + j)] * xt[j];
      return s;
    };
    std::vector<double> q(K), k(K), v(V);
    double nq = 0, nk = 0;
    for (int64_t i = 0; i < K; ++i) {
      q[i] = silu(proj(wq, i));
      k[i] = silu(proj(wk, i));
      nq += q[i] * q[i];
      nk += k[i] * k[i];
    }
    for (int64_t i = 0; i < K; ++i) {
      q[i] /= std::sqrt(nq + 1e-6);
      k[i] /= std::sqrt(nk + 1e-6);
    }
    for (int64_t i = 0; i < V; ++i) v[i] = silu(proj(wv, i));
    double beta = 1 / (1 + std::exp(-proj(wb, 0)));
    double a = proj(wa, 0) + dtb[0];
    double g = -std::exp(alog[0]) * (a > 20 ? a : std::log1p(std::exp(a)));
    for (double& e : h) e *= std::exp(g);
    std::vector<double> o(V, 0.0);
    for (int64_t j = 0; j < V; ++j) {
      double hk = 0;
      for (int64_t i = 0; i < K; ++i) hk += h[size_t(i * V + j)] * k[i];
      double u = beta * (v[j] - hk);
      for (int64_t i = 0; i < K; ++i) h[size_t(i * V + j)] += k[i] * u;
    }
    for (int64_t j = 0; j < V; ++j) {
      for (int64_t i = 0; i < K; ++i) o[j] += h[size_t(i * V + j)] * q[i];
      o[j] /= std::sqrt(double(K));
    }
    double ms = 0;
    for (double e : o) ms += e * e / double(V);
    for (int64_t j = 0; j < V; ++j) o[j] = o[j] / std::sqrt(ms + c.norm_eps) * wn[j];
    for (int64_t r = 0; r < d; ++r) {
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += wo[size_t(r * V + j)] * o[j];
      expect[size_t(t * d + r)] = s;
    }
  }
  auto got = layer.forward(x).to_vector<double>();
  ASSERT_EQ(got.size(), expect.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expect[i], 1e-12) << i;
}

TEST(GatedDeltaNetLayer, ParameterCountAndNames) {
  ModelConfig c = gdn_config();
  GatedDeltaNet layer(c, 0);
  EXPECT_EQ(layer.num_parameters(), GatedDeltaNet::num_params(c));
  EXPECT_NE(layer.find_parameter("A_log"), nullptr);
  EXPECT_NE(layer.find_parameter("q_conv1d.weight"), nullptr);
  bool a_log_no_decay = false;
  for (const ParameterRef& p : layer.named_parameters())
    if (p.name == "A_log" || p.name == "dt_bias") a_log_no_decay = p.meta->no_decay;
  EXPECT_TRUE(a_log_no_decay);
  // A = exp(A_log) in (0, 16]; softplus(dt_bias) in [1e-4, 0.1]
  Generator gen(3);
  layer.init_parameters(gen);
  for (double a : layer.find_parameter("A_log")->to_vector<double>()) EXPECT_LE(std::exp(a), 16.0);
  for (double b : layer.find_parameter("dt_bias")->to_vector<double>()) {
    double dt = std::log1p(std::exp(b));
    EXPECT_GE(dt, 0.99e-4);
    EXPECT_LE(dt, 0.1 + 1e-9);
  }
}

TEST(GatedDeltaNetLayer, GdnLanguageModelBuildsAndCountsParameters) {
  ModelConfig c = gdn_config();
  c.num_layers = 3;
  c.attn_layers = {2};
  c.num_attn_heads = 2;
  c.attn_head_dim = 2;
  EXPECT_EQ(c.mixer_kinds(), (std::vector<std::string>{"gdn", "gdn", "attn"}));
  CausalLM lm(c);
  lm.to(DType::f64);
  randomize(lm, 9, 0.2);
  Batch b;
  b.inputs = Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
  b.targets = Tensor::from_vector(std::vector<int32_t>{2, 3, 4, -100, 6, 7, 8, 9}, {2, 4});
  Tensor loss = lm.loss(b);
  EXPECT_TRUE(std::isfinite(loss.item()));
  loss.backward();
  Tensor* alog = lm.find_parameter("model.layers.0.attn.A_log");
  ASSERT_NE(alog, nullptr);
  ASSERT_TRUE(alog->grad().defined());
}
