// The step profiler through `natsl train`: its phases add up to the step's wall time, its modules to the
// forward, and it writes a Chrome trace that parses; a bad train.profile_steps is one error line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::TempDir;

const char* kConfig = R"(model:
  vocab_size: 64
  hidden_size: 32
  num_layers: 2
  layers: [attn, gdn]
  num_attn_heads: 2
  num_heads: 2
  head_dim: 16
  intermediate_size: 64
data:
  mqar:
    num_kv_pairs: 2
train:
  steps: 8
  batch_size: 4
  seq_len: 32
  grad_accum: 2
  warmup_steps: 1
  log_every: 100
  eval_batches: 1
  device: cpu
)";

TEST(Profiler, PhasesAddUpToTheStepAndModulesToTheForward) {
  TempDir dir;
  testing::write_text(dir / "cfg.yaml", kConfig);
  auto r = testing::run_natsl("train " + dir / "cfg.yaml" + " train.out_dir=" + dir / "run" + " train.profile_steps=[3,7]");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("profile: 4 step(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("layers.1.gdn"), std::string::npos) << r.output;
  const auto sum = nlohmann::json::parse(testing::read_text(dir / "run/profile/summary.json"));
  EXPECT_EQ(sum["steps"], 4);
  const double step_ms = sum["step_ms"];
  ASSERT_GT(step_ms, 0.0);
  double phases = 0.0;
  for (auto it = sum["phases"].begin(); it != sum["phases"].end(); ++it)
    if (it.key() != "(other)") phases += it->get<double>();
  // The named phases cover the step but for bookkeeping: within 10% (or 1 ms) of it, and never more.
  EXPECT_LE(phases, step_ms * 1.0001);
  EXPECT_GE(phases, std::min(step_ms * 0.9, step_ms - 1.0)) << sum.dump(2);
  // The profiled steps' time matches the wall time the trainer measured for them (metrics.jsonl).
  double wall_ms = 0.0;
  std::ifstream in(dir / "run/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto row = nlohmann::json::parse(line);
    if (row["step"] >= 3 && row["step"] < 7) wall_ms += 1000.0 * row["step_time_s"].get<double>();
  }
  EXPECT_NEAR(step_ms * 4, wall_ms, 0.1 * wall_ms + 2.0) << sum.dump(2);
  // Module spans sit inside the forward phase; each module got backward time charged to it.
  double fwd_modules = 0.0;
  for (auto it = sum["modules"].begin(); it != sum["modules"].end(); ++it) fwd_modules += (*it)["forward_ms"].get<double>();
  EXPECT_LE(fwd_modules, sum["phases"]["forward"].get<double>() * 1.0001);
  for (const char* m : {"embedding", "layers.0.attn", "layers.0.mlp", "layers.1.gdn", "layers.1.mlp", "cross-entropy"}) {
    ASSERT_TRUE(sum["modules"].contains(m)) << m << "\n" << sum.dump(2);
    EXPECT_GT(sum["modules"][m]["forward_ms"].get<double>(), 0.0) << m;
    EXPECT_GT(sum["modules"][m]["backward_ms"].get<double>(), 0.0) << m;
  }
  EXPECT_TRUE(sum["backward_ops"].contains("gated_delta_rule")) << sum.dump(2);
  // Two micro-batches per step: every backward op of the GDN layer ran twice per step.
  EXPECT_DOUBLE_EQ(sum["backward_ops"]["gated_delta_rule"]["count"].get<double>(), 2.0);
  const auto trace = nlohmann::json::parse(testing::read_text(dir / "run/profile/trace.json"));
  ASSERT_TRUE(trace["traceEvents"].is_array());
  EXPECT_GT(trace["traceEvents"].size(), 50u);
  for (const auto& e : trace["traceEvents"]) {
    ASSERT_EQ(e["ph"], "X");
    ASSERT_GE(e["dur"].get<double>(), 0.0);
  }
}

TEST(Profiler, ABadStepRangeIsOneErrorLine) {
  TempDir dir;
  testing::write_text(dir / "cfg.yaml", kConfig);
  for (const char* bad : {"[5]", "[5,5]", "[3,20]", "[0,2]"}) {
    auto r = testing::run_natsl("train " + dir / "cfg.yaml" + " train.out_dir=" + dir / "run" + " train.profile_steps=" + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << "\n" << r.output;
    EXPECT_NE(r.output.find("train.profile_steps"), std::string::npos) << bad << "\n" << r.output;
  }
}

}  // namespace
}  // namespace natsl
