// Module tree: names, order, train/eval, casts, init, state dict round trip and its error cases.
#include <gtest/gtest.h>

#include "layers/model/causal_lm.h"
#include "layers/linear.h"
#include "layers/mixer.h"
#include "layers/ssm_init.h"
#include "tests/layers/reference_model.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

ModelConfig tiny_config() { return tiny_lm_config(); }

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> n;
  for (const ParameterRef& p : m.named_parameters()) n.push_back(p.name);
  return n;
}

// Runs f and returns the InputError message (fails the test when nothing or something else is thrown).
template <class F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected InputError, nothing thrown";
  return "";
}

}  // namespace

TEST(Module, CausalLMParameterNamesFollowHFCheckpoints) {
  ModelConfig c = tiny_config();
  c.attn_qk_norm = true;
  CausalLM lm(c);
  std::vector<std::string> expected = {"model.embeddings.weight"};
  for (int l = 0; l < 2; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* s : {"attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
                          "attn.o_proj.weight", "attn.q_norm.weight", "attn.k_norm.weight", "mlp_norm.weight",
                          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
      expected.push_back(p + s);
  }
  expected.push_back("model.norm.weight");
  expected.push_back("lm_head.weight");
  EXPECT_EQ(names_of(lm), expected);
  EXPECT_EQ(lm.find_parameter("model.layers.1.mlp.down_proj.weight")->shape(), (Shape{8, 12}));
  EXPECT_EQ(lm.find_parameter("nope"), nullptr);
}

TEST(Module, TiedEmbeddingsHaveNoLMHead) {
  ModelConfig c = tiny_config();
  c.tie_word_embeddings = true;
  CausalLM lm(c);
  for (const std::string& n : names_of(lm)) EXPECT_EQ(n.find("lm_head"), std::string::npos) << n;
}

TEST(Module, ParameterMetadataAndDecayFlags) {
  CausalLM lm(tiny_config());
  for (const ParameterRef& p : lm.named_parameters()) {
    EXPECT_EQ(p.tensor->shape(), p.meta->shape) << p.name;
    EXPECT_TRUE(p.tensor->requires_grad()) << p.name;
    bool is_norm = p.name.find("norm") != std::string::npos;
    EXPECT_EQ(p.meta->no_decay, is_norm) << p.name;
    EXPECT_EQ(p.meta->init.kind, is_norm ? InitKind::Ones : InitKind::Normal) << p.name;
    EXPECT_EQ(p.meta->is_embedding, p.name == "model.embeddings.weight") << p.name;
    if (!is_norm) {
      EXPECT_DOUBLE_EQ(p.meta->init.std, 0.02) << p.name;
    }
  }
  Linear with_bias(3, 2, true);
  EXPECT_EQ(names_of(with_bias), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_TRUE(with_bias.named_parameters()[1].meta->no_decay);
}

TEST(Module, TrainEvalIsRecursive) {
  CausalLM lm(tiny_config());
  EXPECT_TRUE(lm.training());
  lm.eval();
  EXPECT_FALSE(lm.backbone().layer(1).mixer().training());
  lm.train();
  EXPECT_TRUE(lm.backbone().layer(1).mixer().training());
}

TEST(Module, CastKeepsValuesAndGradFlag) {
  Linear lin(5, 3);
  Generator g(7);
  lin.init_parameters(g);
  auto before = lin.weight().to_vector<double>();
  lin.to(DType::f64);
  EXPECT_EQ(lin.weight().dtype(), DType::f64);
  EXPECT_TRUE(lin.weight().requires_grad());
  EXPECT_EQ(lin.weight().to_vector<double>(), before);
}

TEST(Module, InitDrawsEachParameterInOrderFromTheGenerator) {
  ModelConfig c = tiny_config();
  CausalLM lm(c);
  Generator g(42);
  lm.init_parameters(g);
  // The same draws made by hand: normals of std 0.02 in parameter order, norms set to 1 without a draw.
  Generator h(42);
  for (const ParameterRef& p : lm.named_parameters()) {
    auto got = p.tensor->to_vector<double>();
    if (p.meta->init.kind == InitKind::Ones) {
      for (double v : got) ASSERT_EQ(v, 1.0) << p.name;
      continue;
    }
    Tensor want = Tensor::empty(p.meta->shape, DType::f32);
    normal_(want, h, 0.0, 0.02);
    ASSERT_EQ(got, want.to_vector<double>()) << p.name;
  }
  EXPECT_EQ(g.offset, h.offset);
}

TEST(Module, CustomInitIsCalledWithTheParameterShape) {
  struct WithCustom : Module {
    Tensor a;
    WithCustom() {
      register_parameter("A_log", &a, ParamMeta{{3}, ParamInit::with([](Tensor& t, Generator& g) {
                                                  uniform_(t, g, 1.0, 16.0);
                                                }),
                                                true});
    }
  } m;
  Generator g(3);
  m.init_parameters(g);
  for (double v : m.a.to_vector<double>()) {
    EXPECT_GE(v, 1.0);
    EXPECT_LE(v, 16.0);
  }
  EXPECT_GT(g.offset, 0u);
}

TEST(Module, StateDictRoundTrip) {
  ModelConfig c = tiny_config();
  CausalLM a(c), b(c);
  randomize(a, 1);
  Generator g(5);
  b.init_parameters(g);
  b.load_state_dict(a.state_dict());  // f64 values into f32 parameters
  for (const ParameterRef& p : a.named_parameters()) {
    Tensor want = p.tensor->to(DType::f32);
    EXPECT_EQ(b.find_parameter(p.name)->to_vector<float>(), want.to_vector<float>()) << p.name;
  }
  // state_dict shares the parameters' data.
  StateDict sd = a.state_dict();
  EXPECT_EQ(sd.at("lm_head.weight").data_ptr(), a.find_parameter("lm_head.weight")->data_ptr());
}

TEST(Module, LoadStateDictErrorsNameTheTensor) {
  ModelConfig c = tiny_config();
  CausalLM lm(c);
  StateDict good = CausalLM(c).state_dict();

  StateDict missing = good;
  missing.erase("model.layers.1.attn.k_proj.weight");
  std::string msg = input_error([&] { lm.load_state_dict(missing, "ckpt/model.safetensors"); });
  EXPECT_NE(msg.find("ckpt/model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.1.attn.k_proj.weight"), std::string::npos) << msg;

  StateDict unexpected = good;
  unexpected["model.layers.9.attn.q_proj.weight"] = Tensor::zeros({8, 8});
  msg = input_error([&] { lm.load_state_dict(unexpected); });
  EXPECT_NE(msg.find("unexpected"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.9.attn.q_proj.weight"), std::string::npos) << msg;

  StateDict bad_shape = good;
  bad_shape["model.norm.weight"] = Tensor::zeros({9});
  msg = input_error([&] { lm.load_state_dict(bad_shape); });
  EXPECT_NE(msg.find("model.norm.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[9]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8]"), std::string::npos) << msg;

  // A failed load changes nothing.
  Generator g(9);
  lm.init_parameters(g);
  auto before = lm.find_parameter("model.norm.weight")->to_vector<double>();
  bad_shape["model.layers.0.attn_norm.weight"] = Tensor::full({8}, 3.0);
  EXPECT_THROW(lm.load_state_dict(bad_shape), InputError);
  EXPECT_EQ(lm.find_parameter("model.layers.0.attn_norm.weight")->to_vector<double>(), std::vector<double>(8, 1.0));
  EXPECT_EQ(lm.find_parameter("model.norm.weight")->to_vector<double>(), before);
}

TEST(Module, UnknownMixerKindListsTheKnownOnes) {
  std::string msg = input_error([] { make_mixer("mamba", ModelConfig{}, 0); });
  EXPECT_NE(msg.find("'mamba'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("attn"), std::string::npos) << msg;
  ModelConfig c = tiny_config();
  c.layers = {"attn", "mamba"};
  msg = input_error([&] { CausalLM lm(c); });
  EXPECT_NE(msg.find("mamba"), std::string::npos) << msg;
}

TEST(Module, BadModelConfigsAreInputErrors) {
  ModelConfig c = tiny_config();
  c.num_attn_heads = 3;  // 8 not divisible by 3
  EXPECT_NE(input_error([&] { CausalLM lm(c); }).find("num_attn_heads"), std::string::npos);
  c = tiny_config();
  c.attn_head_dim = 5;  // RoPE needs an even head dim
  EXPECT_NE(input_error([&] { CausalLM lm(c); }).find("attn_rope"), std::string::npos);
  c = tiny_config();
  c.vocab_size = 0;
  EXPECT_NE(input_error([&] { CausalLM lm(c); }).find("vocab_size"), std::string::npos);
  c = tiny_config();
  c.layers = {"attn"};
  EXPECT_NE(input_error([&] { CausalLM lm(c); }).find("num_layers"), std::string::npos);
}

TEST(Module, SsmInitsGiveDecaysInTheirRanges) {
  struct Decays : Module {
    Tensor a_log, dt_bias;
    Decays() {
      register_parameter("A_log", &a_log, ParamMeta{{257}, ParamInit::with(a_log_init()), true});
      register_parameter("dt_bias", &dt_bias, ParamMeta{{257}, ParamInit::with(dt_bias_init()), true});
    }
  } m;
  Generator g(12);
  m.init_parameters(g);
  auto a = m.a_log.to_vector<double>(), b = m.dt_bias.to_vector<double>();
  double amax = 0, dmin = 1, dmax = 0;
  for (double v : a) {
    EXPECT_LT(std::exp(v), 16.0 + 1e-4);
    amax = std::max(amax, std::exp(v));
  }
  for (double v : b) {
    double dt = std::log1p(std::exp(v));  // softplus(dt_bias) = dt
    EXPECT_GE(dt, 1e-3 * (1 - 1e-4));
    EXPECT_LE(dt, 0.1 * (1 + 1e-4));
    dmin = std::min(dmin, dt);
    dmax = std::max(dmax, dt);
  }
  // Spread over the ranges (log-uniform dt), so the test fails on a constant fill.
  EXPECT_GT(amax, 12.0);
  EXPECT_LT(dmin, 2e-3);
  EXPECT_GT(dmax, 0.05);
}
