// Exact resume through the `natsl` program: a run stopped after step 10 (train.stop_at_step, or SIGTERM at
// an arbitrary moment) and resumed with resume=auto ends with the same parameters, optimizer state and
// per-step losses, bit for bit, as the run that never stopped (CPU, also a NAtS-L model with Gumbel router
// noise; and on a GPU with a GDN + NAtS-L model under train.deterministic). And what resume=auto does with
// damaged checkpoints: skip them with a warning, or refuse when none is valid.
#include <gtest/gtest.h>

#include <csignal>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
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
const std::string kTinyConfig =
    testing::millisecond_model_yaml("t") + testing::resume_train_yaml(20, 16) + R"(  eval_every: 0
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

// The outputs of the three runs straight_stop_resume makes.
struct StopResumeRuns {
  std::string straight, stopped, resumed;
};

// Trains `train` (a `natsl train` command line less its out_dir) straight into dir/a, then into dir/b stopped
// after step `stop_at` (train.stop_at_step) and resumed there with resume=auto; every run must succeed (a
// fatal failure otherwise: call it under ASSERT_NO_FATAL_FAILURE). `at_stop` checks dir/b between the stop
// and the resume.
void straight_stop_resume(const TempDir& dir, const std::string& train, int stop_at, StopResumeRuns& runs,
                          const std::function<void()>& at_stop = nullptr) {
  auto straight = run_natsl(train + " train.out_dir=" + dir / "a");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  runs.straight = straight.output;
  auto first = run_natsl(train + " train.out_dir=" + dir / "b" + " train.stop_at_step=" + std::to_string(stop_at));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  runs.stopped = first.output;
  if (at_stop) at_stop();
  auto second = run_natsl(train + " train.out_dir=" + dir / "b" + " resume=auto");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  runs.resumed = second.output;
}

TEST(Resume, StopAtStepThenResumeIsBitExact) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyConfig);
  StopResumeRuns runs;
  ASSERT_NO_FATAL_FAILURE(straight_stop_resume(dir, "train " + dir / "t.yaml", 10, runs, [&] {
    EXPECT_EQ(testing::count_lines(dir / "b/metrics.jsonl"), 10u);
  }));
  EXPECT_NE(runs.stopped.find("stopping after step 10"), std::string::npos) << runs.stopped;
  EXPECT_NE(runs.resumed.find("resumed from " + dir / "b/checkpoints/step_000010" + " at step 10"),
            std::string::npos)
      << runs.resumed;
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

// A NAtS-L block sampling its router labels with Gumbel noise (the only random draws during training): the
// noise stream is in the checkpoint, so the resumed run draws what the straight one drew.
const char* kGumbelConfig = R"(model:
  name: g
  vocab_size: 200
  hidden_size: 16
  num_layers: 1
  layers: [natsl]
  num_heads: 1
  head_dim: 16
  expand_v: 1.0
  num_attn_heads: 2
  attn_qk_norm: true
  attn_rope: false
  nats_block_size: 64
  nats_sample: gumbel
  gumbel_tau: 0.5
  intermediate_size: 32
data:
  source: mqar
  mqar:
    num_kv_pairs: 4
train:
  steps: 12
  batch_size: 2
  seq_len: 192
  grad_accum: 2
  warmup_steps: 2
  lr: 1.0e-2
  log_every: 1000
  eval_every: 0
  eval_batches: 1
  device: cpu
)";

TEST(Resume, GumbelRouterNoiseResumesBitExact) {
  TempDir dir;
  write_text(dir / "g.yaml", kGumbelConfig);
  StopResumeRuns runs;
  ASSERT_NO_FATAL_FAILURE(straight_stop_resume(dir, "train " + dir / "g.yaml", 5, runs, [&] {
    // The checkpoint holds the layer's noise stream: keyed by train.seed, advanced by the steps so far.
    auto state = nlohmann::json::parse(read_text(dir / "b/checkpoints/step_000005/state.json"));
    const auto& noise = state.at("trainer").at("rng").at("router_noise").at("model.layers.0.attn");
    EXPECT_GT(noise.at("offset").get<uint64_t>(), 0u);
  }));
  EXPECT_EQ(runs.resumed.find("warning"), std::string::npos) << runs.resumed;
  expect_same_run(dir / "a", dir / "b", 12);

  // Another train.seed draws other noise (and other weights): the losses part.
  auto other = run_natsl("train " + dir / "g.yaml train.out_dir=" + dir / "c" + " train.seed=1");
  ASSERT_EQ(other.exit_code, 0) << other.output;
  auto sc = nlohmann::json::parse(read_text(dir / "c/checkpoints/step_000012/state.json"));
  auto sa = nlohmann::json::parse(read_text(dir / "a/checkpoints/step_000012/state.json"));
  const auto& na = sa.at("trainer").at("rng").at("router_noise").at("model.layers.0.attn");
  const auto& nc = sc.at("trainer").at("rng").at("router_noise").at("model.layers.0.attn");
  EXPECT_NE(na.at("seed"), nc.at("seed"));
  EXPECT_EQ(na.at("offset"), nc.at("offset"));
}

// The tiny model on a mixture of two plain text files (weights 3 : 1, tokenized into the run directory, their
// tails held out for validation): stopped at step 10 and resumed, the run is the uninterrupted one bit for
// bit, its data state (rows served per source) included. A resume with other weights is refused, and two
// evaluations of one checkpoint score the same tokens with the same result.
TEST(Resume, TextMixtureResumesBitExact) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyConfig);
  std::string a, b;
  for (int i = 0; i < 200; ++i) {
    a += "alpha " + std::to_string(i) + " the quick brown fox\n";
    b += "BETA " + std::to_string(7 * i) + " JUMPS OVER THE LAZY DOG\n";
  }
  write_text(dir / "a.txt", a);
  write_text(dir / "b.txt", b);
  auto mix = [&](int weight_b) {
    return "train " + dir / "t.yaml model.vocab_size=258 data.source=text 'data.text.mix=[{path: " + dir / "a.txt" +
           ", weight: 3}, {path: " + dir / "b.txt" + ", weight: " + std::to_string(weight_b) + "}]'";
  };
  StopResumeRuns runs;
  ASSERT_NO_FATAL_FAILURE(straight_stop_resume(dir, mix(1), 10, runs));
  EXPECT_NE(runs.straight.find("data.text.mix[0] '" + dir / "a.txt" + "': weight 3 (share 75.00%)"), std::string::npos)
      << runs.straight;
  EXPECT_NE(runs.resumed.find("at step 10"), std::string::npos) << runs.resumed;
  expect_same_run(dir / "a", dir / "b", 20);
  // The data state at the end, less the shard paths (each run tokenizes into its own directory).
  auto data_state = [&](const std::string& run) {
    nlohmann::json d =
        nlohmann::json::parse(read_text(run + "/checkpoints/step_000020/state.json")).at("trainer").at("data");
    for (auto& src : d.at("sources"))
      for (auto& shard : src.at("windows").at("shards")) shard.erase("path");
    return d;
  };
  const nlohmann::json da = data_state(dir / "a");
  EXPECT_EQ(da, data_state(dir / "b"));
  ASSERT_EQ(da.at("sources").size(), 2u);
  const int64_t rows0 = da.at("sources").at(0).at("rows_served"), rows1 = da.at("sources").at(1).at("rows_served");
  EXPECT_EQ(rows0 + rows1, 20 * 2 * 4);  // steps x grad_accum x batch_size
  EXPECT_GT(rows0, rows1);
  // The metrics count the tokens each source gave, and the resumed run continues the counts.
  auto last_metrics = [&](const std::string& run) {
    std::istringstream in(read_text(run + "/metrics.jsonl"));
    std::string line, last;
    while (std::getline(in, line)) last = line;
    return nlohmann::json::parse(last).at("data").at("source_tokens");
  };
  EXPECT_EQ(last_metrics(dir / "a"), (nlohmann::json{rows0 * 16, rows1 * 16}));
  EXPECT_EQ(last_metrics(dir / "b"), last_metrics(dir / "a"));

  auto reweighted = run_natsl(mix(2) + " train.out_dir=" + dir / "b" + " train.steps=30 resume=auto");
  EXPECT_EQ(reweighted.exit_code, 2) << reweighted.output;
  EXPECT_NE(reweighted.output.find("weights of data.text.mix changed since the checkpoint ([3.0,1.0] -> [3.0,2.0])"),
            std::string::npos) << reweighted.output;

  const std::string eval = "eval" + mix(1).substr(5) + " train.out_dir=" + dir / "a" + " checkpoint=" +
                           dir / "a/checkpoints/step_000020";
  auto e1 = run_natsl(eval), e2 = run_natsl(eval);
  ASSERT_EQ(e1.exit_code, 0) << e1.output;
  auto last_line = [](const std::string& out) {
    std::string s = out.substr(0, out.find_last_not_of('\n') + 1);
    return s.substr(s.rfind('\n') + 1);
  };
  const nlohmann::json j1 = nlohmann::json::parse(last_line(e1.output));
  EXPECT_GT(j1.at("eval").at("tokens").get<int64_t>(), 0) << e1.output;
  EXPECT_EQ(last_line(e1.output), last_line(e2.output));
}

// Flips one bit of a byte near the end of a file (inside the last tensor's data).
void flip_last_bytes(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << path;
  const auto at = std::streamoff(std::filesystem::file_size(path) - 5);
  f.seekg(at);
  char c = 0;
  f.read(&c, 1);
  c = char(c ^ 0x01);
  f.seekp(at);
  f.write(&c, 1);
  ASSERT_TRUE(f) << path;
}

// resume=auto skips a checkpoint whose bytes fail their checksum (warning naming the file) and continues the
// run bit for bit from the older one; an explicit resume=DIR of it is bad input; when no checkpoint is valid,
// resume=auto refuses (exit 2, naming what it found) and changes nothing.
TEST(Resume, DamagedCheckpointsAreSkippedOrRefused) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyConfig);
  auto straight = run_natsl("train " + dir / "t.yaml train.out_dir=" + dir / "a");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  const std::string b = "train " + dir / "t.yaml train.out_dir=" + dir / "b";
  auto first = run_natsl(b + " train.stop_at_step=10 train.ckpt_every=5 train.keep_last=2");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string c5 = dir / "b/checkpoints/step_000005", c10 = dir / "b/checkpoints/step_000010";
  flip_last_bytes(c10 + "/optimizer.safetensors");

  auto explicit_bad = run_natsl(b + " resume=" + c10);
  EXPECT_EQ(explicit_bad.exit_code, 2) << explicit_bad.output;
  EXPECT_NE(explicit_bad.output.find(c10 + "/optimizer.safetensors"), std::string::npos) << explicit_bad.output;
  EXPECT_NE(explicit_bad.output.find("checksum"), std::string::npos) << explicit_bad.output;

  flip_last_bytes(c5 + "/model.safetensors");
  const std::string metrics_before = read_text(dir / "b/metrics.jsonl");
  auto none_valid = run_natsl(b + " resume=auto");
  EXPECT_EQ(none_valid.exit_code, 2) << none_valid.output;
  EXPECT_NE(none_valid.output.find("none is valid"), std::string::npos) << none_valid.output;
  EXPECT_NE(none_valid.output.find("step_000010, step_000005"), std::string::npos) << none_valid.output;
  EXPECT_EQ(none_valid.output.find("step 1/"), std::string::npos) << "it trained:\n" << none_valid.output;
  EXPECT_TRUE(std::filesystem::exists(c5) && std::filesystem::exists(c10));
  EXPECT_EQ(read_text(dir / "b/metrics.jsonl"), metrics_before);

  flip_last_bytes(c5 + "/model.safetensors");  // repaired: the older checkpoint is valid again
  auto resumed = run_natsl(b + " resume=auto");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("warning: ignoring a damaged checkpoint: checkpoint file '" + c10 +
                                "/optimizer.safetensors' fails its checksum"),
            std::string::npos)
      << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from " + c5 + " at step 5"), std::string::npos) << resumed.output;
  expect_same_run(dir / "a", dir / "b", 20);
}

// A small GPU model of every tensor-core path (GDN, NAtS-L with 2 softmax heads per router head, masked GDN,
// mixing) in bf16 with deterministic kernels; `layers` its mixers, `model_extra` more model: lines.
std::string gpu_run_yaml(const std::string& layers, int num_layers, const std::string& model_extra, int64_t steps,
                         int64_t eval_every) {
  return R"(model:
  name: g
  vocab_size: 320
  hidden_size: 64
  num_layers: )" + std::to_string(num_layers) + R"(
  layers: )" + layers + R"(
  num_heads: 2
  head_dim: 128
  expand_v: 1.0
  num_attn_heads: 4
  attn_qk_norm: true
  attn_rope: false
  nats_block_size: 64
  intermediate_size: 64
)" + model_extra + R"(data:
  source: mqar
  mqar:
    vocab_size: 300
    num_kv_pairs: 4
)" + testing::resume_train_yaml(steps, 256) + "  eval_every: " + std::to_string(eval_every) + R"(
  eval_batches: 1
  device: cuda
  precision: bf16
  deterministic: true
)";
}

// The same on the GPU, bf16 compute: Gated DeltaNet blocks (no atomics anywhere in their forward and
// backward, nor in embedding, norms, SwiGLU, cross-entropy, cuBLASLt GEMMs or AdamW).
// train.deterministic on the GPU: a GDN block and a NAtS-L block (router, chunk-selected attention on
// tensor cores with 2 softmax heads per router head, masked GDN, mixing) in bf16. Resumed == straight, bit for
// bit, which holds only if every kernel on the path repeats its bits.
TEST(Resume, OnTheGpuWithDeterministicKernelsIsBitExact) {
  NATSL_REQUIRE_GPU();
  TempDir dir;
  write_text(dir / "g.yaml", gpu_run_yaml("[gdn, natsl]", 2, "", 20, 0));
  StopResumeRuns runs;
  ASSERT_NO_FATAL_FAILURE(straight_stop_resume(dir, "train " + dir / "g.yaml", 10, runs));
  expect_same_run(dir / "a", dir / "b", 20);
}

// train.cuda_graph (trainers/trainer_graph.cpp). On the CPU the run says it stays eager and is the same run.
TEST(CudaGraphTraining, OnTheCpuTheRunSaysItStaysEagerAndIsUnchanged) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyConfig);
  auto eager = run_natsl("train " + dir / "t.yaml train.out_dir=" + dir / "a");
  ASSERT_EQ(eager.exit_code, 0) << eager.output;
  auto graph = run_natsl("train " + dir / "t.yaml train.out_dir=" + dir / "b train.cuda_graph=true");
  ASSERT_EQ(graph.exit_code, 0) << graph.output;
  EXPECT_NE(graph.output.find("cuda_graph: this run stays eager: the device is the CPU"), std::string::npos)
      << graph.output;
  EXPECT_EQ(eager.output.find("cuda_graph: "), std::string::npos) << eager.output;
  expect_same_run(dir / "a", dir / "b", 20);
}

// A model whose forward uses a value the host draws per step cannot be replayed: the run names the layer and why.
TEST(CudaGraphTraining, AGumbelRouterKeepsTheRunEagerAndSaysWhy) {
  TempDir dir;
  write_text(dir / "g.yaml", kGumbelConfig);
  auto r = run_natsl("train " + dir / "g.yaml train.out_dir=" + dir / "a train.steps=2 train.cuda_graph=true");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("cuda_graph: this run stays eager: layer 0: model.nats_sample gumbel"), std::string::npos)
      << r.output;
}

// On the GPU: steps 3.. replay the graph captured at step 3; every step's loss, gradient norm and the final
// weights and optimizer state have the eager run's bits (the same kernels on the same data, launched by the
// graph instead of the host), and a run stopped and resumed with graphs (a capture in each process) too.
TEST(CudaGraphTraining, ReplayedStepsHaveTheEagerStepsBits) {
  NATSL_REQUIRE_GPU();
  TempDir dir;
  write_text(dir / "g.yaml", gpu_run_yaml("[gdn, natsl, attn]", 3,
                                         "  nats_frac_target: [0.5]\n  nats_frac_warmup_steps: 2\n", 12, 5));
  auto eager = run_natsl("train " + dir / "g.yaml train.out_dir=" + dir / "e");
  ASSERT_EQ(eager.exit_code, 0) << eager.output;
  StopResumeRuns runs;
  ASSERT_NO_FATAL_FAILURE(straight_stop_resume(dir, "train " + dir / "g.yaml train.cuda_graph=true", 6, runs));
  EXPECT_NE(runs.straight.find("cuda_graph: step 3 captured"), std::string::npos) << runs.straight;
  EXPECT_NE(runs.resumed.find("cuda_graph: step 9 captured"), std::string::npos) << runs.resumed;
  expect_same_run(dir / "e", dir / "a", 12);
  expect_same_run(dir / "e", dir / "b", 12);
}

}  // namespace
}  // namespace natsl
