// The Gumbel router noise comes from the run seed: the same seed draws the same noise, another seed other
// noise, every layer its own stream; and a CausalLM's NAtS-L layers are all found by natsl_layers.
#include <gtest/gtest.h>

#include <set>

#include "layers/causal_lm.h"
#include "layers/natsl_attention.h"
#include "tests/layers/reference_model.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

ModelConfig gumbel_config() {
  ModelConfig c;
  c.vocab_size = 11;
  c.hidden_size = 6;
  c.num_layers = 3;
  c.layers = {"natsl", "gdn", "natsl"};
  c.num_heads = 2;
  c.head_dim = 4;
  c.expand_v = 2.0;
  c.num_attn_heads = 4;
  c.attn_qk_norm = true;
  c.attn_rope = false;
  c.intermediate_size = 5;
  c.nats_sample = "gumbel";
  return c;
}

// The softmax labels of one training forward of `layer` on x after seeding its noise with `run_seed`.
std::vector<double> labels_with_seed(NatslAttention& layer, const Tensor& x, uint64_t run_seed) {
  layer.seed_noise(run_seed);
  layer.train();
  layer.forward(x);
  return layer.last_mask_softmax().to(DType::f64).to_vector<double>();
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

}  // namespace
