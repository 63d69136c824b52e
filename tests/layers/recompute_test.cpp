// train.recompute on whole models (CPU): for every model kind (attn, gdn, natsl with learned argmax routing,
// natsl with Gumbel sampling and a sparsity penalty, random routing, a hybrid) and every recompute setting,
// two training steps give the same loss, the same aux loss, the same gradient of every parameter, the same
// routing statistics and the same noise-stream offsets as without recomputation, bit for bit (the same CPU
// kernels run on the same data in the same order; only the first forward runs without history). Then the
// peak activation memory of a forward + backward with recompute: [block] against none.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "autograd/ops.h"
#include "core/allocator.h"
#include "data/batch.h"
#include "layers/model/causal_lm.h"
#include "layers/natsl_attention.h"
#include "layers/recompute.h"
#include "tests/layers/model/model_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

struct ModelCase {
  const char* name;
  std::vector<std::string> layers;
  std::string sample = "argmax";
  std::string routing = "learned";
  double penalty = 0.0;
  std::vector<double> target;
};

ModelConfig config_of(const ModelCase& mc) {
  ModelConfig c = sized_model({.vocab = 37, .hidden = 16, .intermediate = 24}, mc.layers);
  set_gdn_heads(c, {.heads = 2, .head_dim = 8, .expand_v = 2.0});
  set_attn_heads(c, {.heads = 4, .head_dim = 0, .value_dim = 0, .qk_norm = true, .rope = true});
  c.nats_sample = mc.sample;
  c.nats_routing = mc.routing;
  c.nats_frac_penalty = mc.penalty;
  c.nats_frac_target = mc.target;
  c.gumbel_tau = 0.7;
  return c;
}

Batch batch_of(int64_t B, int64_t T, int64_t V, int step) {
  std::vector<int32_t> ids(size_t(B * T)), tg(size_t(B * T));
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int32_t((i * 7 + 3 + size_t(step) * 5) % size_t(V));
    tg[i] = i % 13 == 0 ? -100 : int32_t((i * 5 + 1 + size_t(step)) % size_t(V));
  }
  Batch b;
  b.inputs = Tensor::from_vector(ids, {B, T});
  b.targets = Tensor::from_vector(tg, {B, T});
  return b;
}

std::shared_ptr<CausalLM> build(const ModelConfig& c, DType dt, const std::vector<std::string>& recompute) {
  auto lm = std::make_shared<CausalLM>(c);
  Generator gen(5);
  lm->init_parameters(gen);
  if (dt != DType::f32) lm->to(dt);
  for (auto& [name, layer] : natsl_layers(*lm)) layer->seed_noise(17);
  // "keep:X" entries of a setting are train.recompute_keep's, the others train.recompute's.
  std::vector<std::string> kinds, keep;
  for (const std::string& r : recompute) (r.rfind("keep:", 0) == 0 ? keep : kinds).push_back(r.substr(r.rfind("keep:", 0) == 0 ? 5 : 0));
  lm->set_recompute(RecomputePolicy::parse(kinds, keep));
  lm->train();
  return lm;
}

struct StepRecord {
  double loss = 0, aux = 0;
  std::map<std::string, std::vector<double>> grads;
  std::map<std::string, double> stats;
  std::vector<uint64_t> offsets;
};

// Two steps (forward, backward of loss + aux), gradients accumulated over both, as grad_accum = 2 does.
std::vector<StepRecord> run(const ModelCase& mc, DType dt, const std::vector<std::string>& recompute) {
  const ModelConfig c = config_of(mc);
  auto lm = build(c, dt, recompute);
  std::vector<StepRecord> out;
  for (int step = 0; step < 2; ++step) {
    StepRecord r;
    Tensor loss = lm->loss(batch_of(2, 150, c.vocab_size, step));
    Tensor aux = lm->aux_loss();
    Tensor total = aux.defined() ? add(loss, aux) : loss;
    r.loss = loss.item();
    r.aux = aux.defined() ? aux.item() : 0.0;
    total.backward();
    for (const ParameterRef& p : lm->named_parameters())  // the fixed routings leave nats_layer without one
      if (p.tensor->grad().defined()) r.grads[p.name] = p.tensor->grad().to_vector<double>();
    lm->collect_stats(r.stats);
    for (auto& [name, layer] : natsl_layers(*lm)) r.offsets.push_back(layer->noise_generator().offset);
    out.push_back(std::move(r));
  }
  return out;
}

const std::vector<ModelCase>& model_cases() {
  static const std::vector<ModelCase> cases = {
      {"attn", {"attn", "attn"}, "argmax", "learned", 0.0, {}},
      {"gdn", {"gdn", "gdn"}, "argmax", "learned", 0.0, {}},
      {"natsl_learned", {"natsl", "natsl"}, "argmax", "learned", 0.0, {}},
      {"natsl_gumbel", {"natsl", "natsl"}, "gumbel", "learned", 0.3, {0.4}},
      {"natsl_random", {"natsl"}, "argmax", "random", 0.0, {}},
      {"hybrid", {"gdn", "natsl", "attn"}, "gumbel", "learned", 0.1, {}},
  };
  return cases;
}

const std::vector<std::vector<std::string>>& recompute_settings() {
  static const std::vector<std::vector<std::string>> settings = {
      {"mlp"}, {"attn"}, {"gdn"}, {"natsl"}, {"mixer"}, {"block"}, {"mlp", "mixer"}, {"mlp", "block"},
      {"mlp", "keep:matmul"}, {"mixer", "keep:matmul"}, {"block", "keep:matmul"}};
  return settings;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

class RecomputeModel : public ::testing::TestWithParam<std::tuple<size_t, DType>> {};

TEST_P(RecomputeModel, SameLossGradientsStatsAndNoiseAsWithout) {
  const ModelCase& mc = model_cases()[std::get<0>(GetParam())];
  const DType dt = std::get<1>(GetParam());
  const auto base = run(mc, dt, {});
  ASSERT_GT(base[0].loss, 0.0);
  if (mc.penalty > 0) {
    ASSERT_GT(base[0].aux, 0.0);
  }
  for (const auto& setting : recompute_settings()) {
    SCOPED_TRACE(mc.name + std::string(" recompute=[") + join(setting) + "]");
    const auto got = run(mc, dt, setting);
    for (size_t s = 0; s < base.size(); ++s) {
      SCOPED_TRACE("step " + std::to_string(s));
      EXPECT_EQ(got[s].loss, base[s].loss);
      EXPECT_EQ(got[s].aux, base[s].aux);
      EXPECT_EQ(got[s].stats, base[s].stats);
      EXPECT_EQ(got[s].offsets, base[s].offsets);
      ASSERT_GE(base[s].grads.size(), 10u);
      ASSERT_EQ(got[s].grads.size(), base[s].grads.size());
      for (const auto& [name, g] : base[s].grads) EXPECT_EQ(got[s].grads.at(name), g) << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, RecomputeModel,
                         ::testing::Combine(::testing::Range(size_t(0), size_t(6)),
                                            ::testing::Values(DType::f32, DType::f64)),
                         [](const auto& info) {
                           return std::string(model_cases()[std::get<0>(info.param)].name) + "_" +
                                  std::string(dtype_name(std::get<1>(info.param)));
                         });

// Peak CPU bytes above what is held before the forward (weights and their gradients), over a forward and
// backward of loss + aux.
// `seconds`, when given, gets the wall time of that forward + backward.
int64_t activation_peak(const ModelConfig& c, const std::vector<std::string>& recompute, int64_t B, int64_t T,
                        double* seconds = nullptr) {
  auto lm = build(c, DType::f32, recompute);
  const Batch b = batch_of(B, T, c.vocab_size, 0);
  auto step = [&] {
    Tensor loss = lm->loss(b);
    Tensor aux = lm->aux_loss();
    (aux.defined() ? add(loss, aux) : loss).backward();
  };
  step();  // allocates every gradient, so the measured step adds into them in place
  const int64_t before = memory_stats(kCPU).in_use;
  reset_peak_memory(kCPU);
  const auto t0 = std::chrono::steady_clock::now();
  step();
  if (seconds) *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return memory_stats(kCPU).peak - before;
}

ModelConfig memory_config(const std::vector<std::string>& layers) {
  ModelConfig c = config_of({"memory", layers, "argmax", "learned", 0.0, {}});
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 192;
  set_gdn_heads(c, {.heads = 2, .head_dim = 32, .expand_v = 2.0});
  return c;
}

void print_peaks(const std::vector<std::string>& layers, int64_t B, int64_t T,
                 std::map<std::string, int64_t>* out = nullptr) {
  const ModelConfig c = memory_config(layers);
  std::printf("activation peak of forward + backward, layers [%s], d=%lld, I=%lld, B=%lld, T=%lld (MiB):\n",
              join(layers).c_str(), (long long)c.hidden_size, (long long)c.intermediate_size, (long long)B,
              (long long)T);
  double t_none = 0, t = 0;
  const int64_t none = activation_peak(c, {}, B, T, &t_none);
  std::printf("  recompute []                        %8.2f          %6.2f s\n", double(none) / (1 << 20), t_none);
  if (out) (*out)[""] = none;
  for (const auto& s : std::vector<std::vector<std::string>>{{"mlp"}, {"mixer"}, {"mlp", "mixer"}, {"block"},
                                                             {"mlp", "keep:matmul"}, {"mixer", "keep:matmul"},
                                                             {"mlp", "mixer", "keep:matmul"}, {"block", "keep:matmul"}}) {
    const int64_t p = activation_peak(c, s, B, T, &t);
    std::printf("  recompute [%-22s]    %8.2f (%.2fx) %6.2f s (%.2fx)\n", join(s).c_str(), double(p) / (1 << 20),
                double(p) / double(none), t, t / t_none);
    if (out) (*out)[join(s)] = p;
  }
  std::fflush(stdout);
}

}  // namespace

// Six GDN / NAtS-L blocks at T = 1024: keeping only each block's input must cut the activation peak well
// down (what is left: the block inputs, one block's recomputed activations, the embedding / head / loss).
TEST(RecomputeMemory, BlockRecomputeCutsThePeak) {
  std::map<std::string, int64_t> peak;
  print_peaks({"gdn", "natsl", "gdn", "natsl", "gdn", "natsl"}, 2, 1024, &peak);
  EXPECT_LT(double(peak["block"]), 0.7 * double(peak[""]));
  EXPECT_LT(peak["mlp"], peak[""]);
  EXPECT_LT(peak["mixer"], peak[""]);
  // Keeping the products holds more than keeping the inputs alone, and still less than no recomputation.
  for (const char* part : {"mlp", "mixer", "block"}) {
    SCOPED_TRACE(part);
    EXPECT_GT(peak[std::string(part) + ",keep:matmul"], peak[part]);
    EXPECT_LT(peak[std::string(part) + ",keep:matmul"], peak[""]);
  }
  // (block is not always below mlp + mixer: its backward holds a whole block's recomputed activations at
  // once, where mlp + mixer hold one half, for the price of saving each block's middle residual too.)
}

// The table of docs/training.md (per module kind); run with --gtest_also_run_disabled_tests.
TEST(RecomputeMemory, DISABLED_PerKindTable) {
  for (const char* kind : {"attn", "gdn", "natsl"}) print_peaks(std::vector<std::string>(4, kind), 2, 1024);
}
