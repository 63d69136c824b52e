// The NAtS-L layer (layers/natsl_attention.h): against the reference layer on the CPU, and on the GPU against
// the CPU (NatslCudaLayer, skipped without a GPU). Its Gumbel seeds and routing controls:
// natsl_routing_test.cpp.
//
// The NatslAttention mixer in f64 against the layer written out from the dense oracle (reference_layer.h):
// forward for forced selections (all softmax, all GDN, per-chunk-and-head patterns, random), training and
// evaluation; gradcheck of every parameter; the router weight's straight-through gradient and the router's
// share of dx against finite differences of continuous chunk multipliers; the reference-backward switch; the
// Gumbel option's noise stream; the attn_frac statistic.
#include <gtest/gtest.h>

#include <functional>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>

#include "autograd/engine.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/ops_natsl.h"
#include "core/config_key_error.h"
#include "core/error.h"
#include "data/batch.h"
#include "layers/model/causal_lm.h"
#include "layers/natsl_attention.h"
#include "tests/layers/reference_model.h"
#include "tests/layers/reference_layer.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

constexpr int64_t kC = 64;

ModelConfig tiny_config() { return tiny_natsl_config(); }

// Label patterns: per (b, chunk, router head), +1 = softmax, -1 = GDN.
enum class Pattern { AllSoftmax, AllGdn, Mixed, Random };

double label(Pattern p, int64_t b, int64_t chunk, int64_t h) {
  switch (p) {
    case Pattern::AllSoftmax: return 1;
    case Pattern::AllGdn: return -1;
    case Pattern::Mixed: return ((b + chunk + 2 * h) % 3 == 0) ? 1 : -1;  // differs per head and chunk
    case Pattern::Random: return 0;
  }
  return 0;
}

// A layer with random parameters and an input whose router labels follow `p`: feature h of x carries
// +-2 over each chunk and the router weight reads it (op 0 +1, op 1 -1), so the logit margin is about 4.
// Random: the router weight stays random and x carries no offset.
struct LayerSetup {
  ModelConfig c;
  std::shared_ptr<NatslAttention> layer;
  Tensor x;
};
LayerSetup make_setup(Pattern p, int64_t B = 2, int64_t T = 130, uint64_t seed = 1, ModelConfig c = tiny_config()) {
  LayerSetup s{c, std::make_shared<NatslAttention>(c, 0), Tensor()};
  randomize(*s.layer, seed * 10);
  const int64_t d = c.hidden_size, H = c.num_heads;
  s.x = randn({B, T, d}, seed * 10 + 7, DType::f64, 0.5);
  if (p != Pattern::Random) {
    Tensor* wr = s.layer->find_parameter("nats_layer.weight");
    Vec w = wr->to_vector<double>();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t e = 0; e < d; ++e) {
        w[size_t((2 * h) * d + e)] = e == h ? 1.0 : 0.05 * w[size_t((2 * h) * d + e)];
        w[size_t((2 * h + 1) * d + e)] = e == h ? -1.0 : 0.05 * w[size_t((2 * h + 1) * d + e)];
      }
    wr->copy_(tensor(w, {2 * H, d}));
    double* xp = s.x.data<double>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) xp[(b * T + t) * d + h] += 2.0 * label(p, b, t / kC, h);
  }
  return s;
}

// The layer's masks must be the pattern's (the last chunk forced to both in training).
void expect_labels(const LayerSetup& s, Pattern p, bool training) {
  if (p == Pattern::Random) return;
  const Tensor& ms = s.layer->last_mask_softmax();
  const Tensor& mg = s.layer->last_mask_gdn();
  const int64_t B = ms.size(0), NC = ms.size(1), Hr = ms.size(2);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < NC; ++n)
      for (int64_t h = 0; h < Hr; ++h) {
        const bool both = training && n == NC - 1;
        const bool sm = label(p, b, n, h) > 0;
        const int64_t at = (b * NC + n) * Hr + h;
        EXPECT_EQ(ms.data<double>()[at], (sm || both) ? 1.0 : 0.0) << b << " " << n << " " << h;
        EXPECT_EQ(mg.data<double>()[at], (!sm || both) ? 1.0 : 0.0) << b << " " << n << " " << h;
      }
}

void expect_forward_matches(Pattern p, int64_t B, int64_t T, bool training, ModelConfig c = tiny_config()) {
  LayerSetup s = make_setup(p, B, T, uint64_t(T) + 3, c);
  s.layer->train(training);
  Tensor got = s.layer->forward(s.x);
  expect_labels(s, p, training);
  ReferenceLayerOut ref = reference_layer(*s.layer, s.c, s.x, training);
  EXPECT_CLOSE(got, ref.out, 1e-11, 1e-12);
  EXPECT_CLOSE(s.layer->last_mask_softmax(), ref.router.mask_softmax, 0, 0);
  EXPECT_CLOSE(s.layer->last_mask_gdn(), ref.router.mask_gdn, 0, 0);
}

}  // namespace

TEST(NatslLayer, ForwardAllSoftmaxMatchesOracle) { expect_forward_matches(Pattern::AllSoftmax, 2, 130, true); }
TEST(NatslLayer, ForwardAllGdnMatchesOracle) { expect_forward_matches(Pattern::AllGdn, 2, 150, true); }
TEST(NatslLayer, ForwardPerHeadPatternMatchesOracle) { expect_forward_matches(Pattern::Mixed, 2, 200, true); }
TEST(NatslLayer, ForwardRandomRouterMatchesOracle) { expect_forward_matches(Pattern::Random, 3, 190, true); }
TEST(NatslLayer, ForwardShortAndExactLengths) {
  expect_forward_matches(Pattern::Mixed, 1, 37, true);   // one partial chunk
  expect_forward_matches(Pattern::Mixed, 1, 128, true);  // exact multiple of 64
}
TEST(NatslLayer, EvalForwardDoesNotForceTheLastChunk) {
  expect_forward_matches(Pattern::Mixed, 2, 150, false);
  expect_forward_matches(Pattern::AllGdn, 1, 100, false);
}
TEST(NatslLayer, ForwardVariants) {
  ModelConfig c = tiny_config();
  c.use_short_conv = false;
  c.attn_qk_norm = false;
  expect_forward_matches(Pattern::Mixed, 1, 140, true, c);
  c = tiny_config();
  c.num_attn_heads = 2;  // G = 1
  expect_forward_matches(Pattern::Mixed, 1, 140, true, c);
}

// Every parameter but the router weight by finite differences of the layer itself (the labels do not move
// under the small perturbations; the router weight has no finite-difference gradient, see below).
TEST(NatslLayer, GradcheckAllParameters) {
  for (Pattern p : {Pattern::Mixed, Pattern::Random}) {
    LayerSetup s = make_setup(p, 2, 130, 11);
    s.layer->find_parameter("nats_layer.weight")->set_requires_grad(false);
    std::vector<Tensor> inputs;
    for (const ParameterRef& r : s.layer->named_parameters()) inputs.push_back(*r.tensor);
    GradcheckResult r = gradcheck([&](const std::vector<Tensor>&) { return s.layer->forward(s.x); }, inputs);
    EXPECT_TRUE(r.ok) << r.message;
  }
}

// The router weight's gradient is the straight-through estimate (natsl-layer.md §3.2, §4.2):
//   dm[softmax] = dL/d(multiplier of the chunk's softmax weights for later queries), selected chunks only,
//   dm[GDN]     = dL/d(the chunk's state-write mask), GDN-labelled chunks only, last chunk dropped,
//   ds = p (dm - <dm, p>),  dW_r = sum_{b, c} ds pooled^T,  and x receives W_r^T ds / (tokens in the chunk).
// dm comes from finite differences of the oracle layer; everything else of dx from finite differences of x.
TEST(NatslLayer, RouterStraightThroughGradient) {
  for (Pattern p : {Pattern::Mixed, Pattern::Random}) {
    SCOPED_TRACE(int(p));
    LayerSetup s = make_setup(p, 2, 150, 21);
    const ModelConfig& c = s.c;
    const int64_t B = s.x.size(0), T = s.x.size(1), d = c.hidden_size, Hr = c.num_heads, NC = (T + kC - 1) / kC;
    Tensor x = s.x.clone().set_requires_grad(true);
    Tensor out = s.layer->forward(x);
    const Tensor R = randn(out.shape(), 99);
    out.backward(R);
    const Tensor dW = s.layer->find_parameter("nats_layer.weight")->grad();
    const Tensor dx = x.grad();

    const ReferenceLayerOut base = reference_layer(*s.layer, c, s.x, true);
    auto loss_with = [&](const Tensor& mult, const Tensor& gmask) {
      return oracle::inner(reference_layer(*s.layer, c, s.x, true, mult, gmask).out, R);
    };
    Tensor mult = Tensor::full({B, NC, Hr}, 1.0, DType::f64);
    Tensor gmask = base.router.mask_gdn.clone();
    const Tensor dm_a = oracle::finite_difference([&] { return loss_with(mult, gmask); }, mult);
    const Tensor dm_g = oracle::finite_difference([&] { return loss_with(mult, gmask); }, gmask);

    const Vec wr = param(*s.layer, "nats_layer.weight");
    const double* probs = base.router.probs.data<double>();
    const double* ms = base.router.mask_softmax.data<double>();
    const double* mg = base.router.mask_gdn.data<double>();
    const double* pooled = base.router.pooled.data<double>();
    Vec dW_expect(size_t(2 * Hr * d), 0.0), dx_router(size_t(B * T * d), 0.0);
    bool any_nonzero = false;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < NC; ++n)
        for (int64_t h = 0; h < Hr; ++h) {
          const int64_t row = (b * NC + n) * Hr + h;
          const bool last = n == NC - 1;
          const double m0 = last || ms[row] < 0.5 ? 0 : dm_a.data<double>()[row];
          const double m1 = last || mg[row] < 0.5 ? 0 : dm_g.data<double>()[row];
          const double p0 = probs[2 * row], p1 = probs[2 * row + 1], mean = p0 * m0 + p1 * m1;
          const double ds[2] = {p0 * (m0 - mean), p1 * (m1 - mean)};
          any_nonzero = any_nonzero || std::abs(ds[0]) > 1e-8;
          const int64_t t0 = n * kC, t1 = std::min(T, t0 + kC);
          for (int op = 0; op < 2; ++op)
            for (int64_t e = 0; e < d; ++e) {
              dW_expect[size_t((2 * h + op) * d + e)] += ds[op] * pooled[(b * NC + n) * d + e];
              for (int64_t t = t0; t < t1; ++t)
                dx_router[size_t((b * T + t) * d + e)] += wr[size_t((2 * h + op) * d + e)] * ds[op] / double(t1 - t0);
            }
        }
    EXPECT_TRUE(any_nonzero) << "the router gradient should not vanish";
    EXPECT_CLOSE(dW, tensor(dW_expect, {2 * Hr, d}), 1e-6, 1e-7);

    // dx = (finite differences of x with the labels held) + the router's share.
    for (uint64_t dir = 0; dir < 3; ++dir) {
      const Tensor u = randn(s.x.shape(), 300 + dir);
      Tensor xp = s.x.clone();
      const double fd = oracle::directional_difference(
          [&] { return oracle::inner(reference_layer(*s.layer, c, xp, true).out, R); }, xp, u);
      const double router_part = oracle::inner(tensor(dx_router, s.x.shape()), u);
      EXPECT_NEAR(oracle::inner(dx, u), fd + router_part, 1e-6 * (1 + std::abs(fd)));
    }
  }
}

// reference_attn_backward: same forward, same router and gate gradients; the softmax branch's q/k/v
// gradients lose their own-chunk terms. With one chunk (T <= 64), or with no earlier softmax chunk, every
// softmax pair is own-chunk: the softmax-only parameters (q_norm, k_norm) then get exactly zero gradient.
TEST(NatslLayer, ReferenceAttnBackwardDropsOnlyOwnChunkTerms) {
  auto grads = [](LayerSetup& s, bool reference) {
    s.c.reference_attn_backward = reference;
    auto layer = std::make_shared<NatslAttention>(s.c, 0);
    layer->to(DType::f64);
    layer->load_state_dict(s.layer->state_dict());
    Tensor out = layer->forward(s.x);
    out.backward(randn(out.shape(), 5));
    std::map<std::string, Tensor> g;
    for (const ParameterRef& p : layer->named_parameters()) g[p.name] = p.tensor->grad();
    g["out"] = out.detach();
    return g;
  };
  const std::vector<std::string> untouched = {"out",           "nats_layer.weight", "a_proj.weight", "b_proj.weight",
                                              "A_log",         "dt_bias",           "g_proj.weight", "o_proj.weight",
                                              "o_norm.weight1", "o_norm.weight2", "nats_out_weights_layer.weight"};
  {
    LayerSetup s = make_setup(Pattern::Mixed, 2, 200, 31);
    auto exact = grads(s, false), ref = grads(s, true);
    for (const std::string& n : untouched) {
      SCOPED_TRACE(n);
      EXPECT_CLOSE(ref[n], exact[n], 1e-13, 1e-13);
    }
    for (const char* n : {"q_norm.weight", "k_norm.weight", "q_proj.weight", "v_conv1d.weight"}) {
      const ErrorStats e = compare(ref[n], exact[n]);
      EXPECT_GT(e.rel_rms, 1e-3) << n << " should change";
    }
    EXPECT_GT(compare(ref["q_norm.weight"], Tensor::zeros({2}, DType::f64)).max_abs, 1e-8);
  }
  for (auto [p, T] : {std::pair{Pattern::Mixed, int64_t(50)}, std::pair{Pattern::AllGdn, int64_t(150)}}) {
    LayerSetup s = make_setup(p, 1, T, 41);
    auto exact = grads(s, false), ref = grads(s, true);
    for (const std::string& n : untouched) {
      SCOPED_TRACE(n);
      EXPECT_CLOSE(ref[n], exact[n], 1e-13, 1e-13);
    }
    EXPECT_EQ(compare(ref["q_norm.weight"], Tensor::zeros({2}, DType::f64)).max_abs, 0.0);
    EXPECT_EQ(compare(ref["k_norm.weight"], Tensor::zeros({2}, DType::f64)).max_abs, 0.0);
    EXPECT_GT(compare(exact["q_norm.weight"], Tensor::zeros({2}, DType::f64)).max_abs, 1e-8);
  }
}

// Gumbel: the noise is Philox(seed, offset) with the offset advanced by each training forward; restoring the
// generator replays the same labels; evaluation samples no noise.
TEST(NatslLayer, GumbelNoiseIsReproducibleAndOffInEval) {
  ModelConfig c = tiny_config();
  c.nats_sample = "gumbel";
  c.gumbel_tau = 0.7;
  LayerSetup s = make_setup(Pattern::Random, 2, 300, 51, c);
  const Generator g0 = s.layer->noise_generator();
  Tensor out1 = s.layer->forward(s.x);
  const Tensor m1 = s.layer->last_mask_softmax();
  ReferenceLayerOut ref = reference_layer(*s.layer, c, s.x, true, Tensor(), Tensor(), c.gumbel_tau, true, g0.seed,
                                          g0.offset);
  EXPECT_CLOSE(out1, ref.out, 1e-11, 1e-12);
  EXPECT_CLOSE(m1, ref.router.mask_softmax, 0, 0);
  const Generator g1 = s.layer->noise_generator();
  EXPECT_GT(g1.offset, g0.offset);
  EXPECT_EQ(g1.seed, g0.seed);
  // A second call draws fresh noise (some of the 2 * 5 * 2 labels change with overwhelming probability).
  s.layer->forward(s.x);
  EXPECT_GT(compare(s.layer->last_mask_softmax(), m1).max_abs, 0.5);
  // Replaying from the saved generator gives the first call's output exactly.
  s.layer->set_noise_generator(g0);
  EXPECT_CLOSE(s.layer->forward(s.x), out1, 0, 0);
  // Evaluation: plain argmax, no offset advance.
  s.layer->eval();
  const Generator before = s.layer->noise_generator();
  Tensor out_eval = s.layer->forward(s.x);
  EXPECT_EQ(s.layer->noise_generator().offset, before.offset);
  EXPECT_CLOSE(out_eval, reference_layer(*s.layer, c, s.x, false).out, 1e-11, 1e-12);
  // Layers draw from different streams.
  EXPECT_NE(NatslAttention(c, 1).noise_generator().seed, g0.seed);
}

TEST(NatslLayer, AttnFracCountsTheForcedLastChunkAndOnlyTraining) {
  LayerSetup s = make_setup(Pattern::Mixed, 2, 200, 61);  // NC = 4, Hr = 2
  std::map<std::string, double> st;
  s.layer->collect_stats(st);
  EXPECT_TRUE(st.empty()) << "no training forward yet";
  s.layer->forward(s.x);
  double expect = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t h = 0; h < 2; ++h) expect += (n == 3 || label(Pattern::Mixed, b, n, h) > 0) ? 1 : 0;
  expect /= 16;
  s.layer->collect_stats(st);
  ASSERT_EQ(st.count("attn_frac"), 1u);
  EXPECT_DOUBLE_EQ(st["attn_frac"], expect);
  // An evaluation forward (different labels: all GDN) leaves the statistic alone.
  LayerSetup s2 = make_setup(Pattern::AllGdn, 2, 200, 61);
  s.layer->eval();
  s.layer->forward(s2.x);
  st.clear();
  s.layer->collect_stats(st);
  EXPECT_DOUBLE_EQ(st["attn_frac"], expect);
  s.layer->train();
  s.layer->forward(s2.x);
  st.clear();
  s.layer->collect_stats(st);
  EXPECT_DOUBLE_EQ(st["attn_frac"], 2.0 / 8.0);  // only the forced last chunk
}

// What natsl layers cannot run is refused by the model's one check (validate_model_config, reaching
// check_natsl_config through the mixer registry): the message names the option, key() the config key the
// loader turns into FILE:LINE. The layer itself then only guards its divisions.
TEST(NatslLayer, RejectsInconsistentConfigs) {
  auto rejects = [](auto edit, const char* named, const char* key) {
    ModelConfig c = tiny_config();
    edit(c);
    try {
      validate_model_config(c);
      ADD_FAILURE() << "accepted a bad " << key;
    } catch (const ConfigKeyError& e) {
      EXPECT_NE(std::string(e.what()).find(named), std::string::npos) << e.what();
      EXPECT_EQ(e.key(), key) << e.what();
    }
  };
  rejects([](ModelConfig& c) { c.num_attn_heads = 3; }, "num_attn_heads", "model.num_attn_heads");
  rejects([](ModelConfig& c) { c.num_attn_heads = 16; }, "head_dim", "model.num_attn_heads");
  rejects([](ModelConfig& c) { c.attn_head_dim = 4; }, "attn_head_dim", "model.attn_head_dim");
  rejects([](ModelConfig& c) { c.attn_value_dim = 8; }, "attn_value_dim", "model.attn_value_dim");
  rejects([](ModelConfig& c) { c.num_nats_heads = 1; }, "num_nats_heads", "model.num_nats_heads");
  rejects([](ModelConfig& c) { c.nats_block_size = 32; }, "nats_block_size", "model.nats_block_size");
  rejects([](ModelConfig& c) { c.use_gate = false; }, "use_gate", "model.use_gate");
  rejects([](ModelConfig& c) { c.nats_sample = "gumble"; }, "nats_sample", "model.nats_sample");
  rejects([](ModelConfig& c) { c.gumbel_tau = 0; }, "gumbel_tau", "model.gumbel_tau");
  rejects([](ModelConfig& c) { c.expand_v = 0.1; }, "expand_v", "model.expand_v");  // the GDN half's check
  // A model without natsl layers does not read these options.
  ModelConfig gdn = tiny_config();
  gdn.default_mixer = "gdn";
  gdn.nats_block_size = 32;
  gdn.use_gate = false;
  EXPECT_NO_THROW(validate_model_config(gdn));
  // Constructed without the check, the layer still refuses a chunk it cannot run (an internal error).
  ModelConfig bad = tiny_config();
  bad.nats_block_size = 32;
  EXPECT_THROW(NatslAttention(bad, 0), Error);
}

// The whole NatslAttention layer on the GPU (router, sparse attention, masked GDN, mixing kernels, cuBLAS
// projections) against the same layer on the CPU in f64: output, every parameter gradient (the router
// weight's straight-through one included), the labels and attn_frac; f32 and bf16, at GPU-kernel head sizes
// (d_a 64, d_av 128; GDN K 128, V 256) with T not a multiple of 64. Also a GDN + NAtS-L language model's
// loss and backward on the GPU.

namespace {

const Device kGpu = Device::cuda(0);

ModelConfig gpu_config() {
  ModelConfig c = sized_model({.vocab = 50, .hidden = 96, .intermediate = 64}, 1);
  set_gdn_heads(c, {.heads = 2, .head_dim = 128, .expand_v = 2.0});  // K 128, V 256
  set_attn_heads(c, {.heads = 4, .head_dim = 64, .value_dim = 128, .qk_norm = true, .rope = false});
  return c;
}

// Labels decided by the input: feature h carries +-1.5 per chunk and router head h reads it.
double label(int64_t b, int64_t chunk, int64_t h) { return (b + chunk + h) % 3 == 0 ? 1 : -1; }

struct Pair {
  std::shared_ptr<NatslAttention> cpu, gpu;
  Tensor x64;
};
Pair make_pair(const ModelConfig& c, DType gpu_dtype, int64_t B, int64_t T) {
  Pair p{std::make_shared<NatslAttention>(c, 0), std::make_shared<NatslAttention>(c, 0), Tensor()};
  randomize(*p.cpu, 17, 0.08);
  const int64_t d = c.hidden_size, H = c.num_heads;
  // A_log / dt_bias as at init (decays in a realistic range), norm weights near 1.
  for (const ParameterRef& r : p.cpu->named_parameters()) {
    Vec v = r.tensor->to_vector<double>();
    if (r.name == "A_log") for (double& e : v) e = std::log(1.0 + 4.0 * std::abs(e) / 0.08);
    if (r.name == "dt_bias") for (double& e : v) e = -3.0 + e;
    if (r.name.find("norm") != std::string::npos) for (double& e : v) e += 1.0;
    if (r.name == "nats_layer.weight")
      for (int64_t o = 0; o < 2 * H; ++o)
        for (int64_t e = 0; e < d; ++e) v[size_t(o * d + e)] = e == o / 2 ? (o % 2 == 0 ? 1.0 : -1.0) : 0.1 * v[size_t(o * d + e)];
    r.tensor->copy_(tensor(v, r.meta->shape));
  }
  p.x64 = randn({B, T, d}, 23, DType::f64, 1.0);
  double* xp = p.x64.data<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) xp[(b * T + t) * d + h] += 1.5 * label(b, t / 64, h);
  p.gpu->load_state_dict(p.cpu->state_dict());
  p.gpu->to(gpu_dtype);
  p.gpu->to(kGpu);
  return p;
}

void expect_rel(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(got.defined());
  const ErrorStats e = compare(got.to(kCPU).to(DType::f64), ref);
  EXPECT_TRUE(e.finite);
  EXPECT_LE(e.rel_rms, tol);
}

void expect_layer_matches(DType dt, double tol, bool reference_backward) {
  ModelConfig c = gpu_config();
  c.reference_attn_backward = reference_backward;
  const int64_t B = 2, T = 200;
  Pair p = make_pair(c, dt, B, T);
  const Tensor R = randn({B, T, c.hidden_size}, 29, DType::f64);

  Tensor out64 = p.cpu->forward(p.x64);
  out64.backward(R);
  Tensor xg = p.x64.to(dt).to(kGpu).set_requires_grad(true);
  Tensor out = p.gpu->forward(xg);
  out.backward(R.to(dt).to(kGpu));

  EXPECT_EQ(compare(p.gpu->last_mask_softmax().to(kCPU).to(DType::f64), p.cpu->last_mask_softmax()).max_abs, 0.0);
  EXPECT_EQ(compare(p.gpu->last_mask_gdn().to(kCPU).to(DType::f64), p.cpu->last_mask_gdn()).max_abs, 0.0);
  std::map<std::string, double> s64, sg;
  p.cpu->collect_stats(s64);
  p.gpu->collect_stats(sg);
  EXPECT_DOUBLE_EQ(sg["attn_frac"], s64["attn_frac"]);

  expect_rel(out, out64, tol, "out");
  std::map<std::string, Tensor> g64;
  for (const ParameterRef& r : p.cpu->named_parameters()) g64[r.name] = r.tensor->grad();
  for (const ParameterRef& r : p.gpu->named_parameters()) expect_rel(r.tensor->grad(), g64[r.name], 2 * tol, r.name);
}

}  // namespace

TEST(NatslCudaLayer, F32MatchesCpuF64) {
  NATSL_REQUIRE_GPU();
  expect_layer_matches(DType::f32, 5e-3, false);  // TF32-level matmuls
}
TEST(NatslCudaLayer, F32ReferenceBackwardMatchesCpuF64) {
  NATSL_REQUIRE_GPU();
  expect_layer_matches(DType::f32, 5e-3, true);
}
TEST(NatslCudaLayer, Bf16MatchesCpuF64) {
  NATSL_REQUIRE_GPU();
  expect_layer_matches(DType::bf16, 4e-2, false);
}

TEST(NatslCudaLayer, HybridLanguageModelLossAndBackward) {
  NATSL_REQUIRE_GPU();
  ModelConfig c = gpu_config();
  c.num_layers = 2;
  c.layers = {"gdn", "natsl"};
  CausalLM cpu(c), gpu(c);
  Generator gen(5);
  cpu.init_parameters(gen);
  gpu.load_state_dict(cpu.state_dict());
  gpu.to(kGpu);
  const int64_t B = 2, T = 150;
  std::vector<int32_t> ids(size_t(B * T)), tg(size_t(B * T));
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int32_t((i * 7 + 3) % 50);
    tg[i] = int32_t((i * 11 + 1) % 50);
  }
  Batch b;
  b.inputs = Tensor::from_vector(ids, {B, T});
  b.targets = Tensor::from_vector(tg, {B, T});
  Tensor l_cpu = cpu.loss(b), l_gpu = gpu.loss(b);
  EXPECT_NEAR(l_gpu.item(), l_cpu.item(), 1e-3);
  l_cpu.backward();
  l_gpu.backward();
  for (const ParameterRef& r : gpu.named_parameters()) {
    const Tensor* ref = cpu.find_parameter(r.name);
    expect_rel(r.tensor->grad(), ref->grad().to(DType::f64), 2e-2, r.name);
  }
}

// What keeps train.cuda_graph from replaying a NAtS-L layer (trainers/trainer_graph.cpp): host values made anew
// each step. Never for noise and host-made routings; a target's warm-up only until its weight reaches 1.
TEST(NatslLayer, GraphBlockerNamesWhatAReplayWouldRepeat) {
  auto blocker = [](const std::function<void(ModelConfig&)>& edit, int64_t step, bool* never) {
    ModelConfig c = tiny_config();
    edit(c);
    return NatslAttention(c, 0).graph_blocker(step, never);
  };
  bool never = true;
  EXPECT_EQ(blocker([](ModelConfig&) {}, 0, &never), "");
  EXPECT_FALSE(never);
  EXPECT_NE(blocker([](ModelConfig& c) { c.nats_sample = "gumbel"; }, 5, &never).find("gumbel"), std::string::npos);
  EXPECT_TRUE(never);
  EXPECT_NE(blocker([](ModelConfig& c) { c.nats_routing = "random"; }, 5, &never).find("random"), std::string::npos);
  EXPECT_TRUE(never);
  EXPECT_NE(blocker([](ModelConfig& c) { c.nats_routing = "topk"; }, 5, &never).find("topk"), std::string::npos);
  EXPECT_TRUE(never);
  auto warmup = [](ModelConfig& c) {
    c.nats_frac_target = {0.5};
    c.nats_frac_warmup_steps = 10;
  };
  EXPECT_NE(blocker(warmup, 3, &never).find("warms up until step 10"), std::string::npos);
  EXPECT_FALSE(never);
  EXPECT_EQ(blocker(warmup, 9, &never), "");  // step 10's weight is min(1, 10 / 10) = 1: constant from here
  EXPECT_EQ(blocker([](ModelConfig& c) { c.nats_frac_target = {0.5}; }, 0, &never), "");
}
