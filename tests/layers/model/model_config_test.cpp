// The model's one check (layers/model/model_config.h, validate_model_config): a bad value of each key family
// is a ConfigKeyError whose key() is the key at fault (the config loader turns it into FILE:LINE) and whose
// message names it; each mixer kind in use adds its own check through the registry.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/config_key_error.h"
#include "layers/model/model_config.h"
#include "tests/layers/model/model_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

// Valid for every mixer kind: attn head dim 32 (even, for RoPE); GDN K 32, V 64; natsl G = 2.
ModelConfig base_config() {
  ModelConfig c = sized_model({.vocab = 97, .hidden = 64, .intermediate = 96}, {"attn", "gdn", "natsl"});
  set_attn_heads(c, {.heads = 2, .head_dim = 0, .value_dim = 0, .qk_norm = false, .rope = true});
  set_gdn_heads(c, {.heads = 1, .head_dim = 32, .expand_v = 2.0});
  return c;
}

// The key of the error validate_model_config throws for `edit(base_config())`, after checking its message
// names `named`; "" when it accepts the config.
std::string key_of_error(const std::function<void(ModelConfig&)>& edit, const std::string& named) {
  ModelConfig c = base_config();
  edit(c);
  try {
    validate_model_config(c);
  } catch (const ConfigKeyError& e) {
    EXPECT_NE(std::string(e.what()).find(named), std::string::npos) << e.what();
    return e.key();
  }
  return "";
}

TEST(ModelConfigCheck, AcceptsAValidConfigOfEveryMixerKind) {
  EXPECT_NO_THROW(validate_model_config(base_config()));
  EXPECT_NO_THROW(validate_model_config(ModelConfig{}));
}

TEST(ModelConfigCheck, Sizes) {
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.vocab_size = 0; }, "must be positive"), "model.vocab_size");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.hidden_size = -1; }, "model.hidden_size"), "model.hidden_size");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.num_layers = 0; }, "model.num_layers"), "model.num_layers");
}

TEST(ModelConfigCheck, LayerArrangement) {
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.layers = {"attn"}; }, "model.layers has 1 entries"), "model.layers");
  auto by_index = [](ModelConfig& c) {
    c.layers.clear();
    c.default_mixer = "gdn";
  };
  EXPECT_EQ(key_of_error([&](ModelConfig& c) { by_index(c); c.attn_layers = {3}; },
                         "model.attn_layers holds layer 3 but model.num_layers is 3"),
            "model.attn_layers");
  EXPECT_EQ(key_of_error([&](ModelConfig& c) { by_index(c); c.natsl_layers = {-1}; }, "model.natsl_layers holds layer -1"),
            "model.natsl_layers");
  EXPECT_EQ(key_of_error([&](ModelConfig& c) { by_index(c); c.natsl_layers = {2}; }, ""), "");
  // An unknown kind is named at the key that gave it.
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.layers[1] = "mamba"; }, "unknown mixer kind 'mamba'"), "model.layers");
  EXPECT_EQ(key_of_error([&](ModelConfig& c) { by_index(c); c.default_mixer = "mamba"; }, "known kinds: attn, gdn, natsl"),
            "model.default_mixer");
}

TEST(ModelConfigCheck, NormsInitialisationAndMlp) {
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.norm_eps = 0; }, "model.norm_eps must be positive"), "model.norm_eps");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.initializer_range = 0; }, "model.initializer_range"),
            "model.initializer_range");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.intermediate_size = -1; }, "model.intermediate_size"),
            "model.intermediate_size");
  EXPECT_EQ(key_of_error(
                [](ModelConfig& c) {
                  c.intermediate_size = 0;
                  c.hidden_ratio = -1;
                },
                "from model.hidden_ratio"),
            "model.hidden_ratio");
}

// Each kind's options are checked only where a layer of that kind reads them, by the kind's own check.
TEST(ModelConfigCheck, EachMixerKindChecksItsOwnOptions) {
  // attn: the head split of the width, RoPE's even head dim.
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.layers = {"attn", "gdn", "gdn"}; c.num_attn_heads = 3; },
                         "is not divisible by model.num_attn_heads"),
            "model.num_attn_heads");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.attn_head_dim = 5; c.layers = {"attn", "gdn", "gdn"}; }, "even"),
            "model.attn_rope");
  // gdn: the value width.
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.expand_v = 0.01; }, "model.expand_v"), "model.expand_v");
  // natsl: the chunk and the routing controls.
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.nats_block_size = 32; }, "must be 64"), "model.nats_block_size");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.nats_routing_every = 0; }, "model.nats_routing_every"),
            "model.nats_routing_every");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.nats_frac_target = {0.1, 0.2}; }, "one per natsl layer"),
            "model.nats_frac_target");
  // Without a natsl layer the same values are not read, so not refused; without an attn layer the width need
  // not split into num_attn_heads heads (a natsl layer's softmax heads split the GDN heads instead).
  auto no_natsl = [](ModelConfig& c) { c.layers = {"attn", "gdn", "gdn"}; };
  EXPECT_EQ(key_of_error([&](ModelConfig& c) { no_natsl(c); c.nats_block_size = 32; c.nats_frac_target = {0.1, 0.2}; }, ""),
            "");
  EXPECT_EQ(key_of_error([](ModelConfig& c) { c.layers = {"gdn", "natsl", "gdn"}; c.hidden_size = 63; }, ""), "");
}

}  // namespace
