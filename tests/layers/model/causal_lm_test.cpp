// Whole models (layers/model/causal_lm.h): the GPU against the CPU (ModelCuda, skipped without a GPU), then NAtS-L
// in a model.
//
// Whole models on the GPU against the same models on the CPU (f32): the loss and every parameter gradient
// of an attention model, a GDN model and a NAtS-L model agree. This exercises every CUDA kernel a training
// step uses, wired through autograd, against the CPU references.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "data/batch.h"
#include "layers/attention_core.h"
#include "layers/model/causal_lm.h"
#include "layers/mixer.h"
#include "layers/model/model_size.h"
#include "layers/natsl_attention.h"
#include "tests/layers/reference_model.h"
#include "tests/test_util.h"
#include "trainers/config.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
ModelConfig small_config(const std::vector<std::string>& layers) {
  ModelConfig c = sized_model({.vocab = 97, .hidden = 64, .intermediate = 96}, layers);
  // attn: Dk = 32;  natsl: d_a = H K / Ha = 64, d_av = 128
  set_attn_heads(c, {.heads = 2, .head_dim = 0, .value_dim = 0, .qk_norm = true, .rope = true});
  set_gdn_heads(c, {.heads = 1, .head_dim = 64, .expand_v = 2.0});
  return c;
}

Batch random_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Tensor r = natsl::testing::rand_uniform({B, T + 1}, seed, 0, double(V) - 1e-9);
  auto v = r.to_vector<double>();
  std::vector<int32_t> in, tg;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      in.push_back(int32_t(v[size_t(b * (T + 1) + t)]));
      tg.push_back(t % 7 == 3 ? int32_t(kIgnoreIndex) : int32_t(v[size_t(b * (T + 1) + t + 1)]));
    }
  return {Tensor::from_vector(in, {B, T}), Tensor::from_vector(tg, {B, T})};
}

void expect_gpu_matches_cpu(const std::vector<std::string>& layers, int64_t T) {
  ModelConfig c = small_config(layers);
  CausalLM cpu(c), gpu(c);
  Generator gen(11);
  cpu.init_parameters(gen);
  gpu.load_state_dict(cpu.state_dict());
  gpu.to(Device::cuda(0));
  Batch b = random_batch(2, T, c.vocab_size, 5);
  Tensor lc = cpu.loss(b), lg = gpu.loss(b);
  EXPECT_NEAR(lg.item(), lc.item(), 2e-5 * std::abs(lc.item())) << "loss";
  lc.backward();
  lg.backward();
  auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
  ASSERT_EQ(pc.size(), pg.size());
  for (size_t i = 0; i < pc.size(); ++i) {
    ASSERT_TRUE(pc[i].tensor->grad().defined()) << pc[i].name;
    ASSERT_TRUE(pg[i].tensor->grad().defined()) << pg[i].name;
    auto s = natsl::testing::compare(pg[i].tensor->grad(), pc[i].tensor->grad());
    EXPECT_TRUE(s.finite) << pc[i].name;
    EXPECT_LE(s.rel_rms, 2e-3) << pc[i].name;
  }
}
}  // namespace

TEST(ModelCuda, AttentionCoreKernelMatchesComposedPath) {
  NATSL_REQUIRE_GPU();
  for (int64_t T : {1, 63, 130}) {
    Tensor q = natsl::testing::randn({2, T, 3, 64}, 1, DType::f32);
    Tensor k = natsl::testing::randn({2, T, 3, 64}, 2, DType::f32);
    Tensor v = natsl::testing::randn({2, T, 3, 128}, 3, DType::f32);
    Tensor ref = attention_core(q, k, v, true);
    Tensor got = attention_core(q.to(Device::cuda(0)), k.to(Device::cuda(0)), v.to(Device::cuda(0)), true);
    EXPECT_CLOSE(got, ref, 1e-5, 1e-4);
  }
}

TEST(ModelCuda, AttentionModelGpuMatchesCpu) {
  NATSL_REQUIRE_GPU();
  expect_gpu_matches_cpu({"attn", "attn"}, 130);
}

TEST(ModelCuda, GdnModelGpuMatchesCpu) {
  NATSL_REQUIRE_GPU();
  expect_gpu_matches_cpu({"gdn", "attn"}, 130);
}

TEST(ModelCuda, NatslModelGpuMatchesCpu) {
  NATSL_REQUIRE_GPU();
  expect_gpu_matches_cpu({"gdn", "natsl"}, 200);
}

// NAtS-L in a model: the closed-form parameter count (per layer and for the 340M preset, natsl-layer.md
// §3.6 and §5), a tiny GDN + NAtS-L language model end to end, and every shipped preset config loading
// through the trainer's config loader.

namespace {

// The reference 340M model (natsl-layer.md §2.1, §7.1), built in code.
ModelConfig reference_340m() {
  ModelConfig c = sized_model({.vocab = 32000, .hidden = 1024, .intermediate = 0}, 21);
  c.default_mixer = "gdn";
  c.natsl_layers = {3, 7, 11, 15, 19, 20};
  set_gdn_heads(c, {.heads = 6, .head_dim = 128, .expand_v = 2.0});
  set_attn_heads(c, {.heads = 12, .head_dim = 64, .value_dim = 128, .qk_norm = true, .rope = false});
  c.hidden_ratio = 4.0;
  c.norm_eps = 1e-6;
  return c;
}

std::string config_path(const char* name) { return std::string(NATSL_SOURCE_DIR) + "/configs/" + name; }

}  // namespace

TEST(NatslModel, LayerParameterCountClosedForm) {
  ModelConfig c = reference_340m();
  // natsl-layer.md §3.6: 6,347,148 for NAtS-L against 6,316,300 for a plain GDN layer of the same width.
  EXPECT_EQ(NatslAttention::num_params(c), 6347148);
  EXPECT_EQ(mixer_spec("gdn").num_params(c), 6316300);
  EXPECT_EQ(mixer_spec("natsl").num_params(c), 6347148);
  // The built module agrees, for the 340M shapes and for small variants (no qk norm, no conv, G = 1, 3).
  NatslAttention layer(c, 3);
  EXPECT_EQ(layer.num_parameters(), 6347148);
  ModelConfig s;
  s.hidden_size = 10;
  s.num_heads = 2;
  s.head_dim = 6;
  s.expand_v = 2.0;
  for (int64_t Ha : {2, 4, 6})
    for (bool qk : {true, false})
      for (bool conv : {true, false}) {
        s.num_attn_heads = Ha;
        s.attn_qk_norm = qk;
        s.use_short_conv = conv;
        EXPECT_EQ(NatslAttention(s, 0).num_parameters(), NatslAttention::num_params(s)) << Ha << qk << conv;
      }
}

TEST(NatslModel, Reference340mParameterTotals) {
  ModelConfig c = reference_340m();
  EXPECT_EQ(c.mlp_intermediate(), 2816);
  // natsl-layer.md §5: 380.1M total, 314.5M without the two embedding matrices.
  const int64_t total = count_parameters(c);
  EXPECT_NEAR(double(total) / 1e6, 380.1, 0.05);
  EXPECT_NEAR(double(total - 2 * 32000 * 1024) / 1e6, 314.5, 0.05);
  EXPECT_EQ(total, 380073212);  // 15 GDN blocks, 6 NAtS-L blocks, MLPs, norms, two 32000 x 1024 matrices
}

TEST(NatslModel, TinyHybridLanguageModelTrainsOneStep) {
  ModelConfig c = sized_model({.vocab = 13, .hidden = 8, .intermediate = 12}, {"gdn", "natsl", "natsl"});
  set_gdn_heads(c, {.heads = 2, .head_dim = 4, .expand_v = 2.0});
  set_attn_heads(c, {.heads = 4, .head_dim = 0, .value_dim = 0, .qk_norm = true, .rope = true});
  CausalLM lm(c);
  lm.to(DType::f64);
  randomize(lm, 3, 0.3);
  const int64_t B = 2, T = 150;
  std::vector<int32_t> ids(size_t(B * T)), tg(size_t(B * T));
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int32_t((i * 7 + 3) % 13);
    tg[i] = i % 11 == 0 ? -100 : int32_t((i * 5 + 1) % 13);
  }
  Batch b;
  b.inputs = Tensor::from_vector(ids, {B, T});
  b.targets = Tensor::from_vector(tg, {B, T});
  Tensor loss = lm.loss(b);
  ASSERT_TRUE(std::isfinite(loss.item()));
  EXPECT_NEAR(loss.item(), std::log(13.0), 1.5);
  loss.backward();
  for (const ParameterRef& p : lm.named_parameters()) {
    ASSERT_TRUE(p.tensor->grad().defined()) << p.name;
    double norm = 0;
    for (double g : p.tensor->grad().to_vector<double>()) norm += g * g;
    EXPECT_TRUE(std::isfinite(norm)) << p.name;
    EXPECT_GT(norm, 0.0) << p.name << " got no gradient";
  }
  std::map<std::string, double> stats;
  lm.collect_stats(stats);
  EXPECT_EQ(stats.count("layers.0.attn_frac"), 0u);
  for (const char* key : {"layers.1.attn_frac", "layers.2.attn_frac"}) {
    ASSERT_EQ(stats.count(key), 1u) << key;
    EXPECT_GE(stats[key], 1.0 / 3.0 - 1e-12);  // at least the forced last of 3 chunks
    EXPECT_LE(stats[key], 1.0);
  }
  EXPECT_EQ(lm.num_parameters(), count_parameters(c));
}

// Every preset loads through the trainer's loader and builds; the 340M presets have the reference sizes.
TEST(NatslModel, PresetConfigsLoadAndHaveTheReferenceSizes) {
  for (const char* name : {"natsl-tiny.yaml", "gdn-tiny.yaml"}) {
    SCOPED_TRACE(name);
    RunConfig cfg = load_config(config_path(name));
    EXPECT_EQ(cfg.train.device, "cpu");
    EXPECT_EQ(cfg.data.source, "mqar");
    CausalLM lm(cfg.model);
    EXPECT_EQ(lm.num_parameters(), count_parameters(cfg.model));
  }
  {
    RunConfig cfg = load_config(config_path("natsl-tiny.yaml"));
    EXPECT_GE(cfg.train.seq_len, 2 * cfg.model.nats_block_size);  // the router has earlier chunks to choose
    int natsl = 0;
    for (const std::string& k : cfg.model.mixer_kinds()) natsl += k == "natsl";
    EXPECT_GE(natsl, 1);
  }
  const std::vector<std::string> natsl_kinds = [] {
    std::vector<std::string> k(21, "gdn");
    for (int i : {3, 7, 11, 15, 19, 20}) k[size_t(i)] = "natsl";
    return k;
  }();
  {
    RunConfig cfg = load_config(config_path("natsl-340m.yaml"));
    const ModelConfig& m = cfg.model;
    EXPECT_EQ(m.mixer_kinds(), natsl_kinds);
    EXPECT_EQ(count_parameters(m), count_parameters(reference_340m()));
    EXPECT_EQ(m.mlp_intermediate(), 2816);
    EXPECT_EQ(m.nats_sample, "argmax");
    EXPECT_FALSE(m.tie_word_embeddings);
    // The recipe of natsl-layer.md §7.2.
    const TrainConfig& t = cfg.train;
    EXPECT_EQ(t.seq_len, 4096);
    EXPECT_EQ(t.batch_size * t.grad_accum * t.seq_len, 524288);
    EXPECT_EQ(t.steps, 20480);
    EXPECT_EQ(t.warmup_steps, 1024);
    EXPECT_DOUBLE_EQ(t.lr, 3e-4);
    EXPECT_DOUBLE_EQ(t.min_lr_ratio, 0.1);
    EXPECT_EQ(t.schedule, "cosine");
    EXPECT_EQ(t.betas, (std::vector<double>{0.9, 0.95}));
    EXPECT_DOUBLE_EQ(t.eps, 1e-15);
    EXPECT_DOUBLE_EQ(t.weight_decay, 0.1);
    EXPECT_DOUBLE_EQ(t.clip_grad_norm, 1.0);
    EXPECT_TRUE(t.skip_nonfinite);
    EXPECT_EQ(t.precision, "bf16");
  }
  {
    RunConfig cfg = load_config(config_path("gdn-340m.yaml"));
    EXPECT_EQ(cfg.model.mixer_kinds(), std::vector<std::string>(21, "gdn"));
    // Six NAtS-L mixers replaced by GDN ones.
    EXPECT_EQ(count_parameters(cfg.model), 380073212 - 6 * (6347148 - 6316300));
  }
  {
    RunConfig cfg = load_config(config_path("hybrid-340m.yaml"));
    std::vector<std::string> kinds = natsl_kinds;
    for (std::string& k : kinds)
      if (k == "natsl") k = "attn";
    EXPECT_EQ(cfg.model.mixer_kinds(), kinds);
    const ModelConfig& m = cfg.model;
    EXPECT_EQ(count_parameters(m), 380073212 - 6 * (6347148 - mixer_spec("attn").num_params(m)));
    EXPECT_TRUE(m.attn_rope);
  }
}

// configs/natsl-760m.yaml: the reference's natsl_760M.json (docs/natsl-layer.md §2.1, §7.1) with the 340M recipe.
TEST(NatslModel, Preset760mHasTheReferenceSizesAndRecipe) {
  const RunConfig big = load_config(config_path("natsl-760m.yaml"));
  const RunConfig small = load_config(config_path("natsl-340m.yaml"));
  const ModelConfig& m = big.model;
  EXPECT_EQ(m.mixer_kinds(), small.model.mixer_kinds());
  EXPECT_EQ(m.hidden_size, 1536);
  EXPECT_EQ(m.head_dim, 192);
  EXPECT_EQ(m.num_attn_heads, 18);
  EXPECT_EQ(m.mlp_intermediate(), 4096);
  // The softmax heads are 64/128 wide as in 340M, three per router head (natsl-layer.md §2.3).
  EXPECT_EQ(m.attn_head_dim, 64);
  EXPECT_EQ(m.attn_value_dim, 128);
  EXPECT_EQ(int64_t(double(m.num_heads * m.head_dim) * m.expand_v), m.num_attn_heads * m.attn_value_dim);
  // natsl-layer.md §5: 793.1M with both embedding matrices, 694.8M without (rounded to 0.1M there).
  const double total = double(count_parameters(m)), emb = 2.0 * double(m.vocab_size * m.hidden_size);
  EXPECT_NEAR(total / 1e6, 793.1, 0.05);
  EXPECT_NEAR((total - emb) / 1e6, 694.8, 0.05);
  // Everything else (recipe, data, tokenizer) is the 340M preset's.
  RunConfig same = big;
  same.model = small.model;
  same.train.out_dir = small.train.out_dir;
  EXPECT_EQ(config_to_yaml(same), config_to_yaml(small));
}
