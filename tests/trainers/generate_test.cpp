// Sampling (trainers/generate.h): greedy picks the argmax, top-k and top-p restrict the support and keep the
// renormalised probabilities (checked by drawing with a fixed seed), the same seed gives the same tokens;
// and generate() on a tiny NAtS-L model: greedy decoding with the caches picks what the full forward over
// the growing sequence picks, and the KV statistics add up.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "autograd/engine.h"
#include "layers/model/causal_lm.h"
#include "tests/layers/model/model_test_util.h"
#include "trainers/generate.h"

namespace natsl {
namespace {

std::vector<double> softmax(const std::vector<float>& z, double T = 1.0) {
  double mx = -1e300, total = 0;
  for (float v : z) mx = std::max(mx, double(v) / T);
  std::vector<double> p;
  for (float v : z) total += p.emplace_back(std::exp(double(v) / T - mx));
  for (double& v : p) v /= total;
  return p;
}

// Frequencies of `n` draws.
std::vector<double> frequencies(Sampler& s, const std::vector<float>& logits, int n) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) f[s.sample(logits)] += 1.0 / n;
  return f;
}

TEST(GenerationSampling, GreedyPicksTheArgmax) {
  Sampler s(SamplingOptions{0.0, 5, 0.5, 1});  // top-k / top-p do not apply at temperature 0
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.sample(logits), 1u);  // ties: the lower id
  EXPECT_EQ(s.sample(logits, 1), 0u);                             // only id 0 is a candidate
  EXPECT_EQ(s.distribution(logits), (std::vector<double>{0, 1, 0, 0, 0}));
}

TEST(GenerationSampling, TemperatureDrawsFromTheTemperedSoftmax) {
  const std::vector<float> logits = {1.0f, 0.0f, -0.5f, 2.0f};
  for (double T : {0.5, 1.0, 2.0}) {
    Sampler s(SamplingOptions{T, 0, 1.0, 42});
    const std::vector<double> want = softmax(logits, T), p = s.distribution(logits);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(p[i], want[i], 1e-12) << T;
    const std::vector<double> f = frequencies(s, logits, 20000);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(f[i], want[i], 0.015) << "T " << T << " id " << i;
  }
}

TEST(GenerationSampling, TopKKeepsTheKMostLikely) {
  const std::vector<float> logits = {0.3f, 1.2f, -0.4f, 0.9f, 1.1f, 0.0f, -2.0f, 0.8f};
  Sampler s(SamplingOptions{1.0, 3, 1.0, 7});
  // Support {1, 4, 3}, renormalised.
  const std::vector<double> full = softmax(logits);
  const double mass = full[1] + full[4] + full[3];
  const std::vector<double> f = frequencies(s, logits, 20000);
  for (size_t i = 0; i < logits.size(); ++i) {
    const bool kept = i == 1 || i == 4 || i == 3;
    if (!kept) EXPECT_EQ(f[i], 0.0) << "id " << i << " is outside the top 3";
    else EXPECT_NEAR(f[i], full[i] / mass, 0.015) << "id " << i;
  }
  // k = 1 is greedy; k >= the vocabulary is no restriction.
  Sampler one(SamplingOptions{1.0, 1, 1.0, 7});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(one.sample(logits), 1u);
  Sampler all(SamplingOptions{1.0, 100, 1.0, 7});
  const std::vector<double> p = all.distribution(logits);
  for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], full[i], 1e-12);
}

TEST(GenerationSampling, TopPKeepsTheSmallestNucleus) {
  // p = (0.5, 0.3, 0.15, 0.05) in shuffled order.
  const std::vector<float> logits = {float(std::log(0.15)), float(std::log(0.5)), float(std::log(0.05)),
                                     float(std::log(0.3))};
  struct Case {
    double top_p;
    std::vector<double> want;
  };
  for (const Case& c : {Case{0.4, {0, 1, 0, 0}}, Case{0.7, {0, 0.625, 0, 0.375}},
                        Case{0.9, {0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95}}, Case{1.0, {0.15, 0.5, 0.05, 0.3}}}) {
    SCOPED_TRACE(c.top_p);
    Sampler s(SamplingOptions{1.0, 0, c.top_p, 3});
    const std::vector<double> p = s.distribution(logits);
    for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], c.want[i], 1e-6);
    const std::vector<double> f = frequencies(s, logits, 20000);
    for (size_t i = 0; i < f.size(); ++i) {
      if (c.want[i] == 0) EXPECT_EQ(f[i], 0.0) << "id " << i << " is outside the nucleus";
      else EXPECT_NEAR(f[i], c.want[i], 0.015) << "id " << i;
    }
  }
  // Top-k then top-p: of the top 2 (0.5, 0.3), the nucleus 0.5 keeps only the first.
  Sampler both(SamplingOptions{1.0, 2, 0.6, 3});
  EXPECT_NEAR(both.distribution(logits)[1], 1.0, 1e-12);
}

TEST(GenerationSampling, SameSeedSameTokens) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i) * 1.7));
  auto draw = [&](uint64_t seed) {
    Sampler s(SamplingOptions{0.8, 20, 0.95, seed});
    std::vector<uint32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.sample(logits));
    return out;
  };
  EXPECT_EQ(draw(5), draw(5));
  EXPECT_NE(draw(5), draw(6));
}

TEST(GenerationSampling, BadOptionsAreInputErrors) {
  EXPECT_THROW(validate_sampling(SamplingOptions{-0.1, 0, 1.0, 0}), InputError);
  EXPECT_THROW(validate_sampling(SamplingOptions{NAN, 0, 1.0, 0}), InputError);
  EXPECT_THROW(validate_sampling(SamplingOptions{1.0, -1, 1.0, 0}), InputError);
  EXPECT_THROW(validate_sampling(SamplingOptions{1.0, 0, 0.0, 0}), InputError);
  EXPECT_THROW(validate_sampling(SamplingOptions{1.0, 0, 1.5, 0}), InputError);
  EXPECT_NO_THROW(validate_sampling(SamplingOptions{0.0, 0, 1.0, 0}));
  Sampler s(SamplingOptions{});
  EXPECT_THROW(s.sample(std::vector<float>{0.0f, NAN}), Error);
}

ModelConfig tiny_natsl() {
  ModelConfig c = testing::sized_model({.vocab = 29, .hidden = 16, .intermediate = 24}, {"natsl", "gdn"});
  testing::set_gdn_heads(c, {.heads = 2, .head_dim = 8, .expand_v = 2.0});
  testing::set_attn_heads(c, {.heads = 4, .head_dim = 0, .value_dim = 0, .qk_norm = true, .rope = true});
  c.nats_routing = "every_nth";
  c.nats_routing_every = 2;
  return c;
}

std::shared_ptr<CausalLM> tiny_model() {
  auto lm = std::make_shared<CausalLM>(tiny_natsl());
  Generator gen(3);
  lm->init_parameters(gen);
  // Larger weights than the N(0, 0.02) init: logits far enough apart for argmax to be stable across orders.
  Generator big(4);
  for (const ParameterRef& p : lm->named_parameters())
    if (p.meta->init.kind == InitKind::Normal) {
      Tensor t = Tensor::empty(p.meta->shape);
      normal_(t, big, 0.0, 0.3);
      p.tensor->copy_(t);
    }
  lm->eval();
  return lm;
}

// Greedy decoding with the caches chooses, at every step, the argmax of one full forward over the prompt and
// the tokens chosen so far; the statistics describe what the caches hold at the end.
TEST(Generation, GreedyDecodingFollowsTheFullForward) {
  const auto lm = tiny_model();
  std::vector<uint32_t> prompt;
  for (int i = 0; i < 70; ++i) prompt.push_back(uint32_t((i * 7 + 3) % 29));
  GenerateOptions o;
  o.max_new_tokens = 70;  // to position 140: chunks 0 and 1 completed (0 kept), 12 tokens in chunk 2
  o.sampling.temperature = 0;
  const GenerateResult r = generate(*lm, prompt, o);
  ASSERT_EQ(r.tokens.size(), 70u);
  EXPECT_EQ(r.decode_steps, 69);
  EXPECT_FALSE(r.stopped);
  std::vector<int32_t> seq(prompt.begin(), prompt.end());
  {
    NoGradGuard no_grad;
    for (uint32_t token : r.tokens) {
      const Tensor logits = lm->forward(Tensor::from_vector(seq, {1, int64_t(seq.size())}, DType::i32));
      const std::vector<float> last = logits.slice(1, int64_t(seq.size()) - 1, int64_t(seq.size())).contiguous()
                                          .to_vector<float>();
      ASSERT_EQ(token, uint32_t(std::max_element(last.begin(), last.end()) - last.begin())) << "at " << seq.size();
      seq.push_back(int32_t(token));
    }
  }
  // 139 positions seen (the last token is not fed back). NAtS-L layer: chunk 0 kept by both router heads
  // (G = 2 heads of d_a 4 + d_av 8 each), 11 current positions of 4 heads; the GDN layer holds no KV.
  const int64_t pos = 139, E = 4;
  EXPECT_EQ(r.kv_bytes, (2 * 64 * 2 * 12 + 11 * 4 * 12) * E);
  EXPECT_EQ(r.full_attention_kv_bytes, pos * (4 * 12 + 2 * (8 + 16)) * E);
  EXPECT_GT(r.state_bytes, 0);
  EXPECT_GT(r.prefill_tokens_per_second(), 0);
  EXPECT_GT(r.decode_tokens_per_second(), 0);
}

TEST(Generation, SameSeedSameTextAndStopToken) {
  const auto lm = tiny_model();
  const std::vector<uint32_t> prompt = {1, 2, 3, 4, 5};
  GenerateOptions o;
  o.max_new_tokens = 40;
  o.sampling = SamplingOptions{1.0, 10, 0.9, 11};
  const GenerateResult a = generate(*lm, prompt, o), b = generate(*lm, prompt, o);
  EXPECT_EQ(a.tokens, b.tokens);
  o.sampling.seed = 12;
  EXPECT_NE(generate(*lm, prompt, o).tokens, a.tokens);
  // Drawing the stop token ends generation without keeping it.
  o.sampling.seed = 11;
  o.stop_token = a.tokens.at(3);
  const GenerateResult c = generate(*lm, prompt, o);
  EXPECT_TRUE(c.stopped);
  ASSERT_LE(c.tokens.size(), 3u);
  EXPECT_EQ(c.tokens, std::vector<uint32_t>(a.tokens.begin(), a.tokens.begin() + std::ptrdiff_t(c.tokens.size())));
  EXPECT_THROW(generate(*lm, {}, o), InputError);
}

}  // namespace
}  // namespace natsl
