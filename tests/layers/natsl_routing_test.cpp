// The routing of a NAtS-L layer (layers/natsl_attention.h): its Gumbel noise seeds and its routing-sparsity
// controls. The layer's forward and gradients: natsl_attention_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "autograd/ops_natsl.h"
#include "core/config_key_error.h"
#include "core/error.h"
#include "layers/model/causal_lm.h"
#include "layers/natsl_attention.h"
#include "tests/layers/reference_layer.h"

// The Gumbel router noise comes from the run seed: the same seed draws the same noise, another seed other
// noise, every layer its own stream; and a CausalLM's NAtS-L layers are all found by natsl_layers.
using namespace natsl;
using namespace natsl::testing;

namespace {

ModelConfig gumbel_config() {
  ModelConfig c = tiny_natsl_config();
  c.num_layers = 3;
  c.layers = {"natsl", "gdn", "natsl"};
  c.nats_sample = "gumbel";
  return c;
}

// The softmax mask (1 where a chunk is softmax-labelled) of one forward of `layer` on x, in training or evaluation.
std::vector<double> softmax_labels(NatslAttention& layer, const Tensor& x, bool train) {
  if (train) layer.train();
  else layer.eval();
  layer.forward(x);
  return layer.last_mask_softmax().to(DType::f64).to_vector<double>();
}

// The softmax labels of one training forward of `layer` on x after seeding its noise with `run_seed`.
std::vector<double> labels_with_seed(NatslAttention& layer, const Tensor& x, uint64_t run_seed) {
  layer.seed_noise(run_seed);
  return softmax_labels(layer, x, /*train=*/true);
}

TEST(NatslGumbelSeed, SameSeedSameNoiseOtherSeedOtherNoise) {
  const ModelConfig c = gumbel_config();
  NatslAttention layer(c, 0);
  randomize(layer, 3, 0.01);  // small router weights: the noise decides most labels
  // B = 4, T = 640: 4 x 10 chunks x 2 router heads = 80 labels, 72 of them sampled (the last chunk is forced).
  const Tensor x = randn({4, 640, c.hidden_size}, 5, DType::f64, 0.5);
  const std::vector<double> a = labels_with_seed(layer, x, 1);
  EXPECT_EQ(layer.noise_generator().seed, router_noise_seed(1, 0));
  EXPECT_GT(layer.noise_generator().offset, 0u);
  EXPECT_EQ(labels_with_seed(layer, x, 1), a) << "the same seed must draw the same noise";
  const std::vector<double> b = labels_with_seed(layer, x, 2);
  size_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
  EXPECT_GT(differ, 8u) << "seeds 1 and 2 drew (almost) the same noise";
  // Evaluation draws none, whatever the seed.
  layer.eval();
  layer.seed_noise(1);
  layer.forward(x);
  const Tensor m1 = layer.last_mask_softmax().to(DType::f64);
  layer.seed_noise(2);
  layer.forward(x);
  EXPECT_EQ(layer.last_mask_softmax().to(DType::f64).to_vector<double>(), m1.to_vector<double>());
}

TEST(NatslGumbelSeed, KeysDifferAcrossSeedsAndLayers) {
  std::set<uint64_t> keys;
  for (uint64_t seed : {0, 1, 2, 1000})
    for (int64_t layer : {0, 1, 2, 47}) keys.insert(router_noise_seed(seed, layer));
  EXPECT_EQ(keys.size(), 16u);
}

TEST(NatslGumbelSeed, NatslLayersFindsEveryNatslMixerByName) {
  CausalLM model(gumbel_config());
  auto layers = natsl_layers(model);
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0].first, "model.layers.0.attn");
  EXPECT_EQ(layers[1].first, "model.layers.2.attn");
  EXPECT_NE(layers[0].second->noise_generator().seed, layers[1].second->noise_generator().seed);
}

// The routing-sparsity controls of a NAtS-L layer (model.nats_routing, the softmax-fraction penalty and
// target, the Gumbel temperature schedule): the masks each fixed routing gives, the top-k budget against a
// host selection written here, the penalty's value and the direction of its gradient, the schedules, and
// one clear error for each inconsistent option. Whether training reaches the targets:
// tests/trainers/routing_sparsity_test.cpp.
ModelConfig routing_config(const std::string& routing) {
  ModelConfig c = tiny_natsl_config();
  c.num_layers = 2;
  c.layers = {"natsl", "natsl"};
  c.nats_routing = routing;
  return c;
}

double mean_of(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size()); }

// B = 8, T = 64 * 20: 8 x 20 chunks x 2 router heads = 320 labels.
constexpr int64_t kB = 8, kNC = 20, kHr = 2;
Tensor routing_input(const ModelConfig& c) { return randn({kB, 64 * kNC, c.hidden_size}, 5, DType::f64, 0.5); }

TEST(NatslRoutingControls, FixedRoutingsGiveTheirMasks) {
  for (const char* kind : {"all_softmax", "all_gdn"}) {
    const ModelConfig c = routing_config(kind);
    NatslAttention layer(c, 0);
    layer.to(DType::f64);
    const Tensor x = routing_input(c);
    for (bool train : {true, false}) {
      const std::vector<double> m = softmax_labels(layer, x, train);
      EXPECT_EQ(mean_of(m), std::string(kind) == "all_softmax" ? 1.0 : 0.0) << kind;
      const std::vector<double> g = layer.last_mask_gdn().to(DType::f64).to_vector<double>();
      for (size_t i = 0; i < m.size(); ++i) ASSERT_EQ(m[i] + g[i], 1.0) << kind << " label " << i;
    }
  }
  ModelConfig c = routing_config("every_nth");
  c.nats_routing_every = 3;
  NatslAttention layer(c, 0);
  layer.to(DType::f64);
  const std::vector<double> m = softmax_labels(layer, routing_input(c), true);
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t ch = 0; ch < kNC; ++ch)
      for (int64_t h = 0; h < kHr; ++h)
        ASSERT_EQ(m[size_t((b * kNC + ch) * kHr + h)], ch % 3 == 0 ? 1.0 : 0.0) << "chunk " << ch;
}

TEST(NatslRoutingControls, RandomRoutingHasItsFractionAndEvaluatesTheSameEveryTime) {
  ModelConfig c = routing_config("random");
  c.nats_routing_fraction = 0.3;
  NatslAttention layer(c, 0);
  layer.to(DType::f64);
  layer.seed_noise(7);
  const Tensor x = routing_input(c);
  const std::vector<double> a = softmax_labels(layer, x, true), b = softmax_labels(layer, x, true);
  // 320 Bernoulli(0.3) labels: standard error 0.026; 4 of them.
  EXPECT_NEAR(mean_of(a), 0.3, 0.105);
  EXPECT_NEAR(mean_of(b), 0.3, 0.105);
  EXPECT_NE(a, b) << "two training forwards drew the same routing";
  const std::vector<double> e1 = softmax_labels(layer, x, false), e2 = softmax_labels(layer, x, false);
  EXPECT_EQ(e1, e2) << "evaluation must see the same routing every time";
  EXPECT_NEAR(mean_of(e1), 0.3, 0.105);
}

// Top-k: per (b, r) row, exactly k of the NC - 1 routable chunks are softmax, and they are the ones of highest
// softmax probability (checked against a selection written here); the backward is router_choice's with these
// masks, so where top-k and argmax agree the two gradients are identical.
TEST(NatslRoutingControls, TopkKeepsTheKMostProbableRoutableChunks) {
  const int64_t B = 3, NC = 9, Hr = 2;
  EXPECT_EQ(router_topk_count(NC, 0.25), 2);  // round(0.25 * 8)
  EXPECT_EQ(router_topk_count(NC, 0.0), 0);
  EXPECT_EQ(router_topk_count(NC, 1.0), 8);
  EXPECT_EQ(router_topk_count(1, 0.5), 0);
  const Tensor logits = randn({B, NC, Hr, 2}, 11, DType::f64, 1.0);
  kernels::RouterChoiceArgs args;
  args.force_last_both = true;
  const RouterChoice r = router_choice_topk(logits, args, 0.25);
  const std::vector<double> l = logits.to_vector<double>(), m = r.mask_softmax.to_vector<double>();
  const std::vector<double> g = r.mask_gdn.to_vector<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hr; ++h) {
      std::vector<std::pair<double, int64_t>> score;  // softmax probability rises with l0 - l1
      for (int64_t c = 0; c + 1 < NC; ++c) {
        const size_t at = size_t(((b * NC + c) * Hr + h) * 2);
        score.push_back({l[at] - l[at + 1], c});
      }
      std::sort(score.begin(), score.end(), [](auto x, auto y) { return x.first > y.first; });
      for (size_t i = 0; i < score.size(); ++i) {
        const size_t at = size_t((b * NC + score[i].second) * Hr + h);
        EXPECT_EQ(m[at], i < 2 ? 1.0 : 0.0) << "b " << b << " h " << h << " rank " << i;
        EXPECT_EQ(g[at], 1.0 - m[at]);
      }
      const size_t last = size_t((b * NC + NC - 1) * Hr + h);
      EXPECT_EQ(m[last], 1.0);  // forced to both in training
      EXPECT_EQ(g[last], 1.0);
    }

  // Logits whose argmax picks exactly the chunks 0 and 1 of every row: top-k with k = 2 picks the same, and
  // the gradients match router_choice's.
  std::vector<double> agree(size_t(B * NC * Hr * 2));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < NC; ++c)
      for (int64_t h = 0; h < Hr; ++h) {
        const size_t at = size_t(((b * NC + c) * Hr + h) * 2);
        agree[at] = c < 2 ? 1.0 + 0.1 * double(c + h) : -1.0 - 0.1 * double(c);
        agree[at + 1] = 0.05 * double(b);
      }
  std::vector<double> grads[2];
  for (int which = 0; which < 2; ++which) {
    Tensor lg = Tensor::from_vector(agree, {B, NC, Hr, 2}, DType::f64);
    lg.set_requires_grad(true);
    const RouterChoice rc = which == 0 ? router_choice(lg, args) : router_choice_topk(lg, args, 0.25);
    const Tensor w = randn({B, NC, Hr}, 3, DType::f64, 1.0);
    add(sum(mul(rc.mask_softmax, w)), sum(mul(rc.mask_gdn, mul_scalar(w, -0.5)))).backward();
    grads[which] = lg.grad().to_vector<double>();
  }
  EXPECT_EQ(grads[0], grads[1]);
}

// The penalty's value is lambda f + mu (f - t)^2 with f the routed softmax fraction, and its gradient moves
// the router toward GDN when f is above the target (d/d logit_softmax >= 0 on every softmax-labelled chunk).
TEST(NatslRoutingControls, PenaltyValueAndGradientDirection) {
  ModelConfig c = routing_config("learned");
  c.nats_frac_penalty = 0.5;
  c.nats_frac_target = {0.0};
  c.nats_frac_target_coef = 2.0;
  NatslAttention layer(c, 0);
  randomize(layer, 3, 0.3);
  const Tensor x = routing_input(c);
  layer.train();
  layer.forward(x);
  const std::vector<double> m = layer.last_mask_softmax().to(DType::f64).to_vector<double>();
  double f = 0;
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t ch = 0; ch + 1 < kNC; ++ch)
      for (int64_t h = 0; h < kHr; ++h) f += m[size_t((b * kNC + ch) * kHr + h)];
  f /= double(kB * (kNC - 1) * kHr);
  ASSERT_GT(f, 0.05) << "the random router should label some chunks softmax";
  ASSERT_TRUE(layer.aux_loss().defined());
  EXPECT_NEAR(layer.aux_loss().item(), 0.5 * f + 2.0 * f * f, 1e-12);
  std::map<std::string, double> stats;
  layer.collect_stats(stats);
  EXPECT_NEAR(stats.at("routed_frac"), f, 1e-12);
  EXPECT_NEAR(stats.at("router_penalty"), 0.5 * f + 2.0 * f * f, 1e-12);
  // The penalty reaches the router weight W_r.
  layer.aux_loss().backward();
  const Tensor& w = *layer.find_parameter("nats_layer.weight");
  ASSERT_TRUE(w.grad().defined());
  double gn = 0;
  for (double v : w.grad().to_vector<double>()) gn += v * v;
  EXPECT_GT(gn, 0.0) << "the penalty gave the router no gradient";

  // Its direction, on the logits: with f above the target, every softmax-labelled routable chunk gets
  // d/d logit_softmax = p0 p1 g > 0 and d/d logit_gdn < 0 (descent lowers its softmax probability); GDN-labelled
  // chunks and the forced last chunk get none (only the chosen branch's mask gradient counts).
  const int64_t NC = 6;
  Tensor logits = randn({2, NC, 2, 2}, 17, DType::f64, 1.0);
  logits.set_requires_grad(true);
  kernels::RouterChoiceArgs args;
  const RouterChoice rc = router_choice(logits, args);
  const Tensor fr = mean(slice(rc.mask_softmax, 1, 0, NC - 1));
  add(mul_scalar(fr, 0.5), mul_scalar(square(fr), 2.0)).backward();
  const std::vector<double> g = logits.grad().to_vector<double>(), lab = rc.mask_softmax.to_vector<double>();
  int positive = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t ch = 0; ch < NC; ++ch)
      for (int64_t h = 0; h < 2; ++h) {
        const size_t i = size_t((b * NC + ch) * 2 + h);
        if (ch + 1 < NC && lab[i] == 1.0) {
          EXPECT_GT(g[2 * i], 0.0) << "chunk " << ch;
          EXPECT_LT(g[2 * i + 1], 0.0) << "chunk " << ch;
          ++positive;
        } else {
          EXPECT_EQ(g[2 * i], 0.0) << "chunk " << ch;
          EXPECT_EQ(g[2 * i + 1], 0.0) << "chunk " << ch;
        }
      }
  EXPECT_GT(positive, 2);
}

// A target above a layer whose router labels every routable chunk GDN still pulls it up: the target's gradient
// reaches every routable chunk through the soft fraction (not only the softmax-labelled ones, which here are
// none), its value stays mu (f - t)^2, and a small descent step of W_r alone raises the soft fraction.
TEST(NatslRoutingControls, TargetPullsAnAllGdnLayerBackUp) {
  ModelConfig c = routing_config("learned");
  c.nats_frac_target = {0.5};
  c.nats_frac_target_coef = 3.0;
  c.nats_frac_warmup_steps = 0;
  NatslAttention layer(c, 0);
  randomize(layer, 3, 0.3);
  // Inputs near 1 in every coordinate and a router whose softmax logit is -a sum(x) and GDN logit +a sum(x):
  // every chunk's margin is about -2 a d < 0 (GDN), its softmax probability small but not 0.
  const int64_t d = c.hidden_size, Hr = kHr;
  const Tensor x = add_scalar(randn({kB, 64 * kNC, d}, 5, DType::f64, 0.1), 1.0);
  const double a = 1.0 / double(d);
  std::vector<double> wr(size_t(2 * Hr * d));
  for (int64_t r = 0; r < 2 * Hr; ++r)
    for (int64_t j = 0; j < d; ++j) wr[size_t(r * d + j)] = r % 2 == 0 ? -a : a;
  Tensor& w = *layer.find_parameter("nats_layer.weight");
  w.copy_(Tensor::from_vector(wr, {2 * Hr, d}, DType::f64));
  layer.train();
  auto soft_fraction = [&] {  // mean over routable chunks of sigmoid(margin), from the layer's own pooling
    const Tensor z = reshape(linear(chunk_mean_pool(x, 64), w.detach()), {kB, kNC, Hr, 2});
    const std::vector<double> v = z.to_vector<double>();
    double s = 0;
    for (int64_t b = 0; b < kB; ++b)
      for (int64_t ch = 0; ch + 1 < kNC; ++ch)
        for (int64_t h = 0; h < Hr; ++h) {
          const size_t i = size_t(((b * kNC + ch) * Hr + h) * 2);
          s += 1.0 / (1.0 + std::exp(-(v[i] - v[i + 1])));
        }
    return s / double(kB * (kNC - 1) * Hr);
  };
  layer.forward(x);
  const std::vector<double> m = layer.last_mask_softmax().to(DType::f64).to_vector<double>();
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t ch = 0; ch + 1 < kNC; ++ch)
      for (int64_t h = 0; h < Hr; ++h) ASSERT_EQ(m[size_t((b * kNC + ch) * Hr + h)], 0.0) << "chunk " << ch;
  EXPECT_NEAR(layer.aux_loss().item(), 3.0 * 0.25, 1e-12);
  const double before = soft_fraction();
  ASSERT_GT(before, 1e-3);
  ASSERT_LT(before, 0.2);
  layer.aux_loss().backward();
  ASSERT_TRUE(w.grad().defined());
  const std::vector<double> g = w.grad().to_vector<double>();
  double gn = 0;
  for (double v : g) gn += v * v;
  ASSERT_GT(gn, 0.0) << "an all-GDN layer got no pull towards its target";
  std::vector<double> stepped = wr;
  for (size_t i = 0; i < stepped.size(); ++i) stepped[i] -= 0.1 * g[i] / std::sqrt(gn);
  w.copy_(Tensor::from_vector(stepped, {2 * Hr, d}, DType::f64));
  EXPECT_GT(soft_fraction(), before);
}

TEST(NatslRoutingControls, GumbelTemperatureSchedules) {
  ModelConfig c = routing_config("learned");
  c.nats_sample = "gumbel";
  c.gumbel_tau = 2.0;
  c.gumbel_tau_end = 0.5;
  for (const char* schedule : {"constant", "linear", "exp"}) {
    c.gumbel_tau_schedule = schedule;
    NatslAttention layer(c, 0);
    const std::string s = schedule;
    layer.set_progress(0, 101);
    EXPECT_DOUBLE_EQ(layer.tau(), 2.0) << s;
    layer.set_progress(50, 101);
    EXPECT_NEAR(layer.tau(), s == "constant" ? 2.0 : s == "linear" ? 1.25 : 1.0, 1e-12) << s;
    layer.set_progress(100, 101);
    EXPECT_NEAR(layer.tau(), s == "constant" ? 2.0 : 0.5, 1e-12) << s;
  }
}

void expect_refused(ModelConfig c, const std::string& key) {
  try {
    validate_model_config(c);
    ADD_FAILURE() << "accepted a config that " << key << " should refuse";
  } catch (const ConfigKeyError& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    EXPECT_EQ(e.key().rfind("model.", 0), 0u) << e.key();
  }
}

TEST(NatslRoutingControls, InconsistentOptionsAreRefusedNamingTheKey) {
  ModelConfig c = routing_config("topk");
  c.nats_frac_penalty = 0.1;
  expect_refused(c, "model.nats_frac_penalty");
  c = routing_config("random");
  c.nats_frac_target = {0.2};
  expect_refused(c, "model.nats_routing");
  c = routing_config("learned");
  c.nats_frac_target = {0.1, 0.2, 0.3};  // two natsl layers
  expect_refused(c, "model.nats_frac_target");
  c = routing_config("learned");
  c.nats_frac_target = {1.5};
  expect_refused(c, "model.nats_frac_target");
  c = routing_config("learned");
  c.gumbel_tau_schedule = "linear";  // argmax routing has no temperature
  expect_refused(c, "model.gumbel_tau_schedule");
  c = routing_config("sometimes");
  expect_refused(c, "model.nats_routing");
  c = routing_config("every_nth");
  c.nats_routing_every = 0;
  expect_refused(c, "model.nats_routing_every");
}

}  // namespace
