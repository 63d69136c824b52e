// `natsl eval`'s suite (trainers/eval_suite.h): MQAR and NIAH grids give one deterministic point each, and the
// multiple-choice scores equal log-softmax sums computed here from the model's logits; bad requests and grid
// points are one clear error.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "autograd/engine.h"
#include "core/error.h"
#include "layers/natsl_attention.h"
#include "trainers/io/checkpoint.h"
#include "trainers/io/safetensors.h"
#include "trainers/config.h"
#include "trainers/eval_suite.h"
#include "trainers/trainer.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::TempDir;
using testing::write_text;

// kSmallConfig with a byte-sized vocabulary (NIAH and the byte tokenizer need >= 258 ids).
RunConfig trained(const TempDir& dir) {
  write_text(dir / "c.yaml", testing::kSmallConfig);
  RunConfig cfg = load_config(dir / "c.yaml", {"model.vocab_size=300", "train.out_dir=" + dir / "run"});
  Trainer(cfg, TrainerOptions{nullptr, true}).train();
  cfg.resume = *find_latest_checkpoint(dir / "run").latest;
  return cfg;
}

TEST(EvalSuite, GridsGiveEveryPointAndTheSameNumbersTwice) {
  TempDir dir;
  const RunConfig cfg = trained(dir);
  EvalSuite s;
  s.mqar_pairs = {1, 2};
  s.mqar_lengths = {16, 32};
  s.niah_lengths = {384};
  s.niah_depths = {0, 100};
  s.batches = 2;
  Trainer tr(cfg, TrainerOptions{nullptr, false});
  const nlohmann::json a = run_eval_suite(tr, s, nullptr), b = run_eval_suite(tr, s, nullptr);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a["mqar"].size(), 4u);
  EXPECT_EQ(a["mqar"][3]["pairs"], 2);
  EXPECT_EQ(a["mqar"][3]["seq_len"], 32);
  ASSERT_EQ(a["niah"].size(), 2u);
  for (const auto& p : a["mqar"]) {
    EXPECT_GT(p["answers"].get<int64_t>(), 0);
    EXPECT_GE(p["accuracy"].get<double>(), 0.0);
    EXPECT_LE(p["accuracy"].get<double>(), 1.0);
  }
  EXPECT_TRUE(tr.model().training()) << "the suite must leave the model as it found it";

  s.mqar_lengths = {15};  // MQAR needs an even length
  try {
    run_eval_suite(tr, s, nullptr);
    ADD_FAILURE() << "an odd MQAR length was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("MQAR grid point 1 pairs x 15 tokens"), std::string::npos) << e.what();
  }
}

// Sum of log-softmax of the model's logits at the continuation's bytes, computed here.
double reference_loglik(const CausalLM& model, const std::string& context, const std::string& cont) {
  NoGradGuard ng;
  std::vector<int32_t> seq = {256};  // BOS
  for (unsigned char ch : context) seq.push_back(ch);
  const size_t n_ctx = seq.size();
  for (unsigned char ch : cont) seq.push_back(ch);
  const std::vector<int32_t> in(seq.begin(), seq.end() - 1);
  const std::vector<double> logits =
      model.forward(Tensor::from_vector(in, {1, int64_t(in.size())}, DType::i32)).to_vector<double>();
  const int64_t V = 300;
  double sum = 0;
  for (size_t p = n_ctx; p < seq.size(); ++p) {
    const double* row = logits.data() + (p - 1) * V;
    double mx = row[0], z = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, row[v]);
    for (int64_t v = 0; v < V; ++v) z += std::exp(row[v] - mx);
    sum += row[seq[p]] - mx - std::log(z);
  }
  return sum;
}

TEST(EvalSuite, MultipleChoiceLogLikelihoods) {
  TempDir dir;
  const RunConfig cfg = trained(dir);
  write_text(dir / "mc.jsonl", R"({"context": "The cat sat on the", "continuations": [" mat", " moon"], "label": 0}

{"context": "1 + 1 =", "continuations": [" 2", " 3", " eleven"], "label": 2}
)");
  EvalSuite s;
  s.choices = dir / "mc.jsonl";
  s.per_request = true;
  Trainer tr(cfg, TrainerOptions{nullptr, false});
  const nlohmann::json r = run_eval_suite(tr, s, nullptr)["choices"];
  EXPECT_EQ(r["requests"], 2);
  EXPECT_EQ(r["labelled"], 2);
  const auto& c0 = r["per_request"][0]["candidates"];
  tr.model_for_eval().eval();
  EXPECT_NEAR(c0[0]["loglik"].get<double>(), reference_loglik(tr.model(), "The cat sat on the", " mat"), 1e-4);
  EXPECT_NEAR(c0[1]["loglik"].get<double>(), reference_loglik(tr.model(), "The cat sat on the", " moon"), 1e-4);
  EXPECT_EQ(r["per_request"][1]["line"], 3);
  const double acc = r["acc"].get<double>();
  EXPECT_TRUE(acc == 0.0 || acc == 0.5 || acc == 1.0);

  for (const char* bad : {"{\"context\": \"x\"}", "not json", "{\"context\": \"x\", \"continuations\": [\"a\"], \"label\": 3}"}) {
    write_text(dir / "bad.jsonl", std::string("{\"context\": \"a\", \"continuations\": [\"b\"]}\n") + bad + "\n");
    s.choices = dir / "bad.jsonl";
    try {
      run_eval_suite(tr, s, nullptr);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(dir / "bad.jsonl:2"), std::string::npos) << e.what();
    }
  }
}

TEST(EvalSuite, ThroughTheProgramWithAJsonFile) {
  TempDir dir;
  trained(dir);
  const testing::CommandResult r = testing::run_natsl("eval " + dir / "c.yaml" + " model.vocab_size=300 train.out_dir=" +
                                                      dir / "run" + " --mqar-pairs 2 --mqar-lengths 16,32 --json " +
                                                      dir / "e.json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(testing::read_text(dir / "e.json"));
  EXPECT_EQ(j["suite"]["mqar"].size(), 2u);
  EXPECT_TRUE(j.contains("eval"));
  const testing::CommandResult half = testing::run_natsl("eval " + dir / "c.yaml" + " model.vocab_size=300 train.out_dir=" +
                                                         dir / "run" + " --mqar-pairs 2");
  EXPECT_EQ(half.exit_code, 2) << half.output;
  EXPECT_NE(half.output.find("--mqar-lengths"), std::string::npos) << half.output;
}

// The routing map: one label per chunk and router head of each NAtS-L layer, as the layer chose them in an
// evaluation forward of the text; a model without NAtS-L layers has none to show.
TEST(EvalSuite, RoutingMapOfAText) {
  TempDir dir;
  write_text(dir / "n.yaml", testing::kSmallConfig);
  RunConfig cfg = load_config(dir / "n.yaml", {"model.vocab_size=300", "model.layers=[gdn, natsl]", "model.num_layers=2",
                                               "model.num_heads=2", "model.head_dim=8", "model.num_attn_heads=2",
                                               "model.attn_qk_norm=true", "model.attn_rope=false",
                                               "train.out_dir=" + dir / "natsl-run"});
  Trainer(cfg, TrainerOptions{nullptr, true}).train();
  cfg.resume = *find_latest_checkpoint(dir / "natsl-run").latest;
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The quick brown fox jumps over the lazy dog. ";  // 1800 bytes: 29 chunks
  write_text(dir / "text.txt", text);
  EvalSuite s;
  s.routing_map = dir / "text.txt";
  Trainer tr(cfg, TrainerOptions{nullptr, false});
  const nlohmann::json m = run_eval_suite(tr, s, nullptr)["routing_map"];
  EXPECT_EQ(m["tokens"], text.size() + 1);
  ASSERT_TRUE(m["layers"].contains("model.layers.1.attn")) << m.dump();
  const auto& rows = m["layers"]["model.layers.1.attn"];
  ASSERT_EQ(rows.size(), (text.size() + 1 + 63) / 64);
  int softmax = 0;
  for (const auto& row : rows) {
    ASSERT_EQ(row.size(), 2u);
    for (const auto& v : row) {
      EXPECT_TRUE(v == 0 || v == 1);
      softmax += v.get<int>();
    }
  }
  // The same labels as the layer's own mask after that forward.
  const std::vector<double> mask = natsl_layers(tr.model())[0].second->last_mask_softmax().to(DType::f64).to_vector<double>();
  ASSERT_EQ(mask.size(), rows.size() * 2);
  for (size_t i = 0; i < mask.size(); ++i) EXPECT_EQ(rows[i / 2][i % 2].get<int>(), int(mask[i]));

  const RunConfig attn_only = trained(dir);
  Trainer plain(attn_only, TrainerOptions{nullptr, false});
  try {
    run_eval_suite(plain, s, nullptr);
    ADD_FAILURE() << "a routing map of a model without natsl layers";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("no natsl layer"), std::string::npos) << e.what();
  }
}

// --logits TEXT OUT: the text's tokens (BOS, then its bytes) and the model's logits at every position, f32,
// equal to a forward of those tokens here; an unreadable text is one error naming the option and the file.
TEST(EvalSuite, LogitsOfATextAreTheModelsForward) {
  TempDir dir;
  const RunConfig cfg = trained(dir);
  const std::string text = "Happy families are all alike; every unhappy family is unhappy in its own way.";
  write_text(dir / "t.txt", text);
  EvalSuite s;
  s.logits = {dir / "t.txt", dir / "logits.safetensors"};
  Trainer tr(cfg, TrainerOptions{nullptr, false});
  const nlohmann::json r = run_eval_suite(tr, s, nullptr)["logits"];
  const int64_t T = int64_t(text.size()) + 1, V = cfg.model.vocab_size;
  EXPECT_EQ(r["tokens"].get<int64_t>(), T);
  SafeTensorsReader f(dir / "logits.safetensors");
  const std::vector<int32_t> ids = f.read("tokens").to_vector<int32_t>();
  ASSERT_EQ(int64_t(ids.size()), T);
  for (size_t i = 0; i < text.size(); ++i) EXPECT_NE(ids[i + 1], ids[0]) << "BOS first, then the bytes";
  const Tensor logits = f.read("logits");
  ASSERT_EQ(logits.shape(), (Shape{T, V}));
  NoGradGuard no_grad;
  tr.model_for_eval().eval();
  const std::vector<float> want =
      tr.model().forward(Tensor::from_vector(ids, {1, T}, DType::i32)).to(DType::f32).to(kCPU).to_vector<float>();
  const std::vector<float> got = logits.to_vector<float>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
  EXPECT_FALSE(std::filesystem::exists(dir / "logits.safetensors.tmp"));

  s.logits = {dir / "missing.txt", dir / "l2.safetensors"};
  try {
    run_eval_suite(tr, s, nullptr);
    ADD_FAILURE() << "logits of a missing text";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--logits text"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "l2.safetensors"));
}

}  // namespace
}  // namespace natsl
