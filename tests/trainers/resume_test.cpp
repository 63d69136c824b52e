// Exact resume through the `natsl` program: a run stopped after step 10 (train.stop_at_step, or SIGTERM at
// an arbitrary moment) and resumed with resume=auto ends with the same parameters, optimizer state and
// per-step losses, bit for bit, as the run that never stopped (CPU; and on a GPU with a GDN + NAtS-L model
// under train.deterministic).
#include <gtest/gtest.h>

#include <csignal>
#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::read_text;
using testing::run_natsl;
using testing::TempDir;
using testing::write_text;

// A model small enough that a step takes about a millisecond.
const char* kTinyConfig = R"(model:
  name: t
  vocab_size: 64
  hidden_size: 16
  num_layers: 1
  layers: [attn]
  num_attn_heads: 2
  intermediate_size: 32
data:
  source: mqar
  mqar:
    num_kv_pairs: 2
train:
  steps: 20
  batch_size: 4
  seq_len: 16
  grad_accum: 2
  warmup_steps: 3
  lr: 1.0e-2
  log_every: 1000
  eval_every: 0
  eval_batches: 1
  device: cpu
)";

struct StepLog {
  int64_t step;
  std::string loss, grad_norm, lr;  // the JSON text of the numbers: equal text = equal bits
};

std::vector<StepLog> read_metrics(const std::string& path) {
  std::vector<StepLog> out;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    out.push_back({j.at("step").get<int64_t>(), j.at("loss").dump(), j.at("grad_norm").dump(), j.at("lr").dump()});
  }
  return out;
}

void expect_same_run(const std::string& a, const std::string& b, int64_t steps) {
  std::vector<StepLog> ma = read_metrics(a + "/metrics.jsonl"), mb = read_metrics(b + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), size_t(steps));
  ASSERT_EQ(mb.size(), size_t(steps));
  for (size_t i = 0; i < ma.size(); ++i) {
    EXPECT_EQ(ma[i].step, int64_t(i) + 1);
    EXPECT_EQ(mb[i].step, int64_t(i) + 1);
    EXPECT_EQ(ma[i].loss, mb[i].loss) << "step " << i + 1;
    EXPECT_EQ(ma[i].grad_norm, mb[i].grad_norm) << "step " << i + 1;
    EXPECT_EQ(ma[i].lr, mb[i].lr) << "step " << i + 1;
  }
  char name[32];
  std::snprintf(name, sizeof name, "/checkpoints/step_%06lld", static_cast<long long>(steps));
  for (const char* f : {"/model.safetensors", "/optimizer.safetensors"}) {
    std::string fa = read_text(a + name + f), fb = read_text(b + name + f);
    ASSERT_FALSE(fa.empty()) << a + name + f;
    EXPECT_TRUE(fa == fb) << f << " differs between the straight and the resumed run";
  }
}

TEST(Resume, StopAtStepThenResumeIsBitExact) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyConfig);
  auto straight = run_natsl("train " + dir / "t.yaml train.out_dir=" + dir / "a");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;

  auto first = run_natsl("train " + dir / "t.yaml train.out_dir=" + dir / "b" + " train.stop_at_step=10");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("stopping after step 10"), std::string::npos) << first.output;
  EXPECT_EQ(testing::count_lines(dir / "b/metrics.jsonl"), 10u);
  auto second = run_natsl("train " + dir / "t.yaml train.out_dir=" + dir / "b" + " resume=auto");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from " + dir / "b/checkpoints/step_000010" + " at step 10"),
            std::string::npos)
      << second.output;
  expect_same_run(dir / "a", dir / "b", 20);

  // Resuming a finished run does nothing and says so.
  auto again = run_natsl("train " + dir / "t.yaml train.out_dir=" + dir / "b" + " resume=auto");
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("already complete at step 20"), std::string::npos) << again.output;
}

TEST(Resume, SigtermAtAnArbitraryMomentThenResumeIsBitExact) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyConfig);
  const int64_t steps = 400;
  const std::string n = "train.steps=" + std::to_string(steps);
  auto straight = run_natsl("train " + dir / "t.yaml " + n + " train.out_dir=" + dir / "a");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;

  pid_t pid = testing::spawn_natsl({"train", dir / "t.yaml", n, "train.out_dir=" + dir / "b"}, dir / "b.log");
  ASSERT_GT(pid, 0);
  // Signal once a few steps are logged, wherever inside a step the process then is.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (testing::count_lines(dir / "b/metrics.jsonl") < 7 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::microseconds(300));
  ::kill(pid, SIGTERM);
  ASSERT_EQ(testing::wait_exit_code(pid), 0) << read_text(dir / "b.log");
  std::string log = read_text(dir / "b.log");
  ASSERT_NE(log.find("received SIGTERM"), std::string::npos)
      << "the run ended before the signal arrived; the test did not test anything:\n" << log;
  size_t logged = testing::count_lines(dir / "b/metrics.jsonl");
  EXPECT_LT(logged, size_t(steps));

  auto resumed = run_natsl("train " + dir / "t.yaml " + n + " train.out_dir=" + dir / "b" + " resume=auto");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("at step " + std::to_string(logged)), std::string::npos) << resumed.output;
  expect_same_run(dir / "a", dir / "b", steps);
}

// The same on the GPU, bf16 compute: Gated DeltaNet blocks (no atomics anywhere in their forward and
// backward, nor in embedding, norms, SwiGLU, cross-entropy, cuBLASLt GEMMs or AdamW).
// train.deterministic on the GPU: a GDN block and a NAtS-L block (router, chunk-selected attention on
// tensor cores with 2 softmax heads per router head, masked GDN, mixing) in bf16. Resumed == straight, bit for
// bit, which holds only if every kernel on the path repeats its bits.
TEST(Resume, OnTheGpuWithDeterministicKernelsIsBitExact) {
  NATSL_REQUIRE_GPU();
  TempDir dir;
  write_text(dir / "g.yaml", R"(model:
  name: g
  vocab_size: 320
  hidden_size: 64
  num_layers: 2
  layers: [gdn, natsl]
  num_heads: 2
  head_dim: 128
  expand_v: 1.0
  num_attn_heads: 4
  attn_qk_norm: true
  attn_rope: false
  nats_block_size: 64
  intermediate_size: 64
data:
  source: mqar
  mqar:
    vocab_size: 300
    num_kv_pairs: 4
train:
  steps: 20
  batch_size: 4
  seq_len: 256
  grad_accum: 2
  warmup_steps: 3
  lr: 1.0e-2
  log_every: 1000
  eval_every: 0
  eval_batches: 1
  device: cuda
  precision: bf16
  deterministic: true
)");
  auto straight = run_natsl("train " + dir / "g.yaml train.out_dir=" + dir / "a");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  auto first = run_natsl("train " + dir / "g.yaml train.out_dir=" + dir / "b" + " train.stop_at_step=10");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto second = run_natsl("train " + dir / "g.yaml train.out_dir=" + dir / "b" + " resume=auto");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  expect_same_run(dir / "a", dir / "b", 20);
}

}  // namespace
}  // namespace natsl
