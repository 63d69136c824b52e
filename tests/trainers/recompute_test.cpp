// train.recompute end to end: the key's validation, and 20 training steps of a hybrid model (GDN, NAtS-L with
// Gumbel sampling and a fraction target, softmax attention; grad_accum 2) through the Trainer with each
// recompute setting, whose metrics (loss, grad norm, routing statistics, every step) equal the run without.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "layers/recompute.h"
#include "trainers/config.h"
#include "trainers/trainer.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

TEST(RecomputeConfig, AcceptsTheKindsAndRefusesAnUnknownOneNamingKeyAndValues) {
  testing::TempDir dir;
  const std::string path = dir / "c.yaml";
  testing::write_text(path, std::string(testing::kSmallConfig) + "  recompute: [mlp, mixer]\n");
  RunConfig cfg = load_config(path);
  EXPECT_EQ(cfg.train.recompute, (std::vector<std::string>{"mlp", "mixer"}));
  EXPECT_TRUE(load_config(path, {"train.recompute=[]"}).train.recompute.empty());
  EXPECT_EQ(load_config(path, {"train.recompute=[block]"}).train.recompute, std::vector<std::string>{"block"});
  EXPECT_TRUE(RunConfig().train.recompute.empty());  // off by default

  testing::expect_load_error(path, std::string(testing::kSmallConfig) + "  recompute: [mlp, attention]\n",
                             {"train.recompute", "attention", "mlp, attn, gdn, natsl, mixer, block", "c.yaml"});
  EXPECT_THROW(load_config(path, {"train.recompute=[blocks]"}), InputError);
  // Built in code: the Trainer's parse refuses it the same way.
  const std::string parse_msg = testing::error_of<InputError>([] { RecomputePolicy::parse({"mlp", "layer"}); });
  EXPECT_NE(parse_msg.find("train.recompute"), std::string::npos) << parse_msg;
}

TEST(RecomputeConfig, KeepAcceptsMatmulAndRefusesAnythingElseNamingKeyFileAndLine) {
  testing::TempDir dir;
  const std::string path = dir / "c.yaml";
  testing::write_text(path, std::string(testing::kSmallConfig) + "  recompute: [block]\n  recompute_keep: [matmul]\n");
  EXPECT_EQ(load_config(path).train.recompute_keep, std::vector<std::string>{"matmul"});
  EXPECT_TRUE(load_config(path, {"train.recompute_keep=[]"}).train.recompute_keep.empty());
  EXPECT_TRUE(RunConfig().train.recompute_keep.empty());  // off by default
  testing::expect_load_error(path,
                             std::string(testing::kSmallConfig) + "  recompute: [block]\n  recompute_keep: [linear]\n",
                             {"train.recompute_keep", "linear", "matmul", "c.yaml:"});
  EXPECT_THROW(RecomputePolicy::parse({"block"}, {"attention"}), InputError);
  EXPECT_EQ(RecomputePolicy::parse({"block"}, {"matmul"}).keep, CheckpointKeep::Matmuls);
  EXPECT_EQ(RecomputePolicy::parse({"block"}).keep, CheckpointKeep::Inputs);
}

RunConfig hybrid_config(const std::string& out_dir) {
  RunConfig c;
  c.model.vocab_size = 256;
  c.model.hidden_size = 16;
  c.model.num_layers = 3;
  c.model.layers = {"gdn", "natsl", "attn"};
  c.model.num_heads = 2;
  c.model.head_dim = 8;
  c.model.num_attn_heads = 2;
  c.model.attn_qk_norm = true;
  c.model.intermediate_size = 32;
  c.model.nats_sample = "gumbel";
  c.model.nats_frac_target = {0.3};
  c.data.mqar.num_kv_pairs = 4;
  c.train.steps = 20;
  c.train.batch_size = 2;
  c.train.grad_accum = 2;
  c.train.seq_len = 192;
  c.train.warmup_steps = 2;
  c.train.lr = 1e-2;
  c.train.device = "cpu";
  c.train.eval_batches = 0;
  c.train.ckpt_every = 0;
  c.train.out_dir = out_dir;
  return c;
}

std::vector<nlohmann::json> train_rows(RunConfig cfg) {
  validate_config(cfg);
  TrainerOptions opts;
  opts.out = nullptr;
  Trainer tr(cfg, opts);
  tr.train();
  std::vector<nlohmann::json> rows;
  std::ifstream in(cfg.train.out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

TEST(RecomputeTraining, TwentyStepsEqualTheRunWithout) {
  testing::TempDir dir;
  const auto base = train_rows(hybrid_config(dir / "none"));
  ASSERT_EQ(base.size(), 20u);
  ASSERT_LT(base.back()["loss"].get<double>(), base.front()["loss"].get<double>());
  ASSERT_TRUE(base.back()["stats"].contains("layers.1.attn_frac"));
  for (const std::vector<std::string>& setting :
       {std::vector<std::string>{"block"}, {"mlp", "mixer"}, {"natsl"}, {"block", "keep:matmul"}}) {
    std::string name;
    for (const auto& s : setting) name += s.substr(s.rfind(':') + 1);
    SCOPED_TRACE(name);
    RunConfig cfg = hybrid_config(dir / name);
    for (const auto& s : setting)
      (s.rfind("keep:", 0) == 0 ? cfg.train.recompute_keep : cfg.train.recompute).push_back(s.substr(s.rfind(':') + 1));
    const auto rows = train_rows(cfg);
    ASSERT_EQ(rows.size(), base.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ(rows[i]["loss"], base[i]["loss"]) << "step " << i + 1;
      EXPECT_EQ(rows[i]["grad_norm"], base[i]["grad_norm"]) << "step " << i + 1;
      EXPECT_EQ(rows[i]["stats"], base[i]["stats"]) << "step " << i + 1;
    }
  }
}

}  // namespace
}  // namespace natsl
