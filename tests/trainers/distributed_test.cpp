// Multi-rank training through the `natsl` program: real processes, Gloo over loopback, the same trainer code
// path a GPU job takes with NCCL. What one rank computes, several ranks compute at the same global batch.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <chrono>
#include <cmath>
#include <thread>

#include <nlohmann/json.hpp>

#include "trainers/dist/communicator.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::TempDir;

// The small MQAR model trained 30 steps at a global batch of 8 sequences (accumulation 8 / 4 / 2 / 1 on
// 1 / 2 / 4 / 8 ranks): with f32 the ranks' curves match one rank's to rounding.
const char* kConfig = R"(model:
  vocab_size: 64
  hidden_size: 16
  num_layers: 2
  layers: [attn, gdn]
  num_attn_heads: 2
  num_heads: 2
  head_dim: 8
  intermediate_size: 32
data:
  mqar:
    num_kv_pairs: 2
train:
  steps: 30
  batch_size: 1
  global_batch_size: 8
  seq_len: 16
  warmup_steps: 2
  lr: 3.0e-3
  log_every: 100
  eval_batches: 4
  device: cpu
  dist_timeout_s: 30
)";

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

class Distributed : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dist::gloo_available()) GTEST_SKIP() << "this build has no Gloo (install libgloo-dev): multi-rank CPU runs need it";
    testing::write_text(dir_ / "cfg.yaml", kConfig);
  }
  // `natsl train --nproc N cfg.yaml out_dir=...`; returns the exit code and output.
  testing::CommandResult train(int nproc, const std::string& out, const std::string& extra = "") {
    return testing::run_natsl("train --nproc " + std::to_string(nproc) + " " + dir_ / "cfg.yaml" +
                              " train.out_dir=" + dir_ / out + " " + extra);
  }
  void expect_same_curve(const std::string& a, const std::string& b, double rel_tol) {
    auto ra = read_metrics(dir_ / a + "/metrics.jsonl"), rb = read_metrics(dir_ / b + "/metrics.jsonl");
    ASSERT_EQ(ra.size(), 30u) << a;
    ASSERT_EQ(rb.size(), 30u) << b;
    for (size_t i = 0; i < ra.size(); ++i) {
      ASSERT_EQ(ra[i]["step"], rb[i]["step"]);
      for (const char* key : {"loss", "grad_norm"}) {
        const double x = ra[i][key], y = rb[i][key];
        EXPECT_LE(std::abs(x - y), rel_tol * std::abs(x)) << a << " vs " << b << ", step " << ra[i]["step"] << " " << key;
      }
    }
    // The curve moved: a test of equal curves must not pass on two runs that learned nothing.
    EXPECT_LT(double(ra.back()["loss"]), double(ra.front()["loss"]) - 0.05);
  }
  TempDir dir_;
};

TEST_F(Distributed, TwoAndFourRanksTrainLikeOneRankAtTheSameGlobalBatch) {
  auto r1 = train(1, "w1");
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  EXPECT_NE(r1.output.find("x 8 accumulation = "), std::string::npos) << r1.output;
  auto r2 = train(2, "w2");
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_NE(r2.output.find("x 4 accumulation x 2 ranks"), std::string::npos) << r2.output;
  EXPECT_NE(r2.output.find("gloo backend"), std::string::npos) << r2.output;
  auto r4 = train(4, "w4");
  ASSERT_EQ(r4.exit_code, 0) << r4.output;
  expect_same_curve("w1", "w2", 1e-5);
  expect_same_curve("w1", "w4", 1e-5);
  // The evaluation is split over the ranks and reduced: the same numbers.
  auto e1 = read_metrics(dir_ / "w1/metrics.jsonl").back()["eval"], e4 = read_metrics(dir_ / "w4/metrics.jsonl").back()["eval"];
  EXPECT_EQ(e1["answers"], e4["answers"]);
  EXPECT_NEAR(double(e1["loss"]), double(e4["loss"]), 1e-5 * double(e1["loss"]));
  // One line of output per job, not one per rank.
  EXPECT_EQ(r4.output.find("done:"), r4.output.rfind("done:")) << r4.output;
}

TEST_F(Distributed, Zero1TrainsLikePlainDataParallel) {
  auto a = train(2, "dp");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto b = train(2, "z1", "train.zero=1");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("ZeRO-1"), std::string::npos) << b.output;
  expect_same_curve("dp", "z1", 1e-5);
}

TEST_F(Distributed, ResumeOnAnotherWorldSizeContinuesTheSameTokenStream) {
  auto ref = train(1, "ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  // 2 ranks stop at step 10; 4 ranks (ZeRO-1, re-sharding the moments) go on to step 20; 1 rank finishes.
  auto a = train(2, "run", "train.stop_at_step=10");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto b = train(4, "run", "resume=auto train.zero=1 train.stop_at_step=20");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("resumed from"), std::string::npos) << b.output;
  auto c = train(1, "run", "resume=auto");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  expect_same_curve("ref", "run", 1e-5);
}

// ZeRO-1 checkpoints hold one optimizer file per rank. Stopped at step 10 and resumed on the same world size,
// the run is the uninterrupted one bit for bit: the same losses and the same bytes in every file at step 30.
TEST_F(Distributed, Zero1ShardedCheckpointResumesBitForBitOnTheSameWorldSize) {
  auto ref = train(2, "ref", "train.zero=1");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  auto a = train(2, "run", "train.zero=1 train.stop_at_step=10");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const std::string ten = dir_ / "run/checkpoints/step_000010";
  for (const char* f : {"model.safetensors", "optimizer.rank00000-of-00002.safetensors",
                        "optimizer.rank00001-of-00002.safetensors", "state.json"})
    EXPECT_TRUE(std::filesystem::exists(ten + "/" + f)) << f;
  EXPECT_FALSE(std::filesystem::exists(ten + "/optimizer.safetensors"));
  auto inspect = testing::run_natsl("inspect " + ten);
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("optimizer: ZeRO-1 shards of 2 ranks"), std::string::npos) << inspect.output;
  auto b = train(2, "run", "train.zero=1 resume=auto");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("resumed from"), std::string::npos) << b.output;
  auto ra = read_metrics(dir_ / "ref/metrics.jsonl"), rb = read_metrics(dir_ / "run/metrics.jsonl");
  ASSERT_EQ(ra.size(), 30u);
  ASSERT_EQ(rb.size(), 30u);
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(double(ra[i]["loss"]), double(rb[i]["loss"])) << "step " << i + 1;
    EXPECT_EQ(double(ra[i]["grad_norm"]), double(rb[i]["grad_norm"])) << "step " << i + 1;
  }
  for (const char* f : {"model.safetensors", "optimizer.rank00000-of-00002.safetensors",
                        "optimizer.rank00001-of-00002.safetensors"})
    EXPECT_EQ(testing::read_text(dir_ / ("ref/checkpoints/step_000030/" + std::string(f))),
              testing::read_text(dir_ / ("run/checkpoints/step_000030/" + std::string(f))))
        << f;
}

// The token stream and the optimizer state go on across every change of world size, ZeRO-1 on or off on
// either side: gathered -> shards (1 -> 2), re-sharded (2 -> 3 -> 4), shards -> whole moments (4 -> 2 plain,
// 2 -> 1), whole -> shards (2 plain -> 2 ZeRO-1). A global batch of 12 divides over 1 to 4 ranks.
TEST_F(Distributed, Zero1ShardsResumeOnAnyWorldSizeWithZeroOnOrOff) {
  const std::string gb = "train.global_batch_size=12 ";
  auto ref = train(1, "ref", gb);
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const std::vector<std::pair<int, std::string>> legs = {
      {1, "train.stop_at_step=4"},         {2, "train.zero=1 train.stop_at_step=8"},
      {3, "train.zero=1 train.stop_at_step=12"}, {4, "train.zero=1 train.stop_at_step=16"},
      {2, "train.stop_at_step=20"},        {2, "train.zero=1 train.stop_at_step=24"},
      {1, ""}};
  for (size_t i = 0; i < legs.size(); ++i) {
    auto r = train(legs[i].first, "run", gb + (i ? "resume=auto " : "") + legs[i].second);
    ASSERT_EQ(r.exit_code, 0) << "leg " << i << ": " << r.output;
    if (i) {
      EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
    }
    // A ZeRO-1 leg leaves a sharded checkpoint of its world size.
    if (i == 2) {
      EXPECT_TRUE(std::filesystem::exists(dir_ / "run/checkpoints/step_000012/optimizer.rank00002-of-00003.safetensors"));
    }
  }
  expect_same_curve("ref", "run", 1e-5);
}

// A shard file lost after the write makes its checkpoint invalid: resume=auto goes back to the newest valid
// one with a warning naming the file, and refuses (exit 2) when none is left.
TEST_F(Distributed, AMissingShardFileInvalidatesItsCheckpoint) {
  auto a = train(2, "run", "train.zero=1 train.stop_at_step=10 train.ckpt_every=5");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const std::string lost = dir_ / "run/checkpoints/step_000010/optimizer.rank00001-of-00002.safetensors";
  ASSERT_TRUE(std::filesystem::remove(lost));
  auto b = train(2, "run", "train.zero=1 resume=auto train.stop_at_step=10");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("ignoring a damaged checkpoint"), std::string::npos) << b.output;
  EXPECT_NE(b.output.find(lost + "' is missing"), std::string::npos) << b.output;
  EXPECT_NE(b.output.find("resumed from " + dir_ / "run/checkpoints/step_000005"), std::string::npos) << b.output;
  // That run wrote step 10 again, whole; now damage every checkpoint.
  for (const char* step : {"step_000005", "step_000010"})
    std::filesystem::remove(dir_ / ("run/checkpoints/" + std::string(step) + "/optimizer.rank00000-of-00002.safetensors"));
  auto c = train(2, "run", "train.zero=1 resume=auto");
  EXPECT_EQ(c.exit_code, 2) << c.output;
  EXPECT_NE(c.output.find("optimizer.rank00000-of-00002.safetensors' is missing"), std::string::npos) << c.output;
}

TEST_F(Distributed, AGlobalBatchTheRanksDoNotDivideIsRefusedWithTheNumbers) {
  auto r = train(3, "bad");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.global_batch_size = 8 is not a multiple of train.batch_size x world size = 1 x 3 = 3"),
            std::string::npos) << r.output;
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::vector<std::string> rank_env(int rank, int world, int port) {
  return {"RANK=" + std::to_string(rank), "WORLD_SIZE=" + std::to_string(world), "LOCAL_RANK=" + std::to_string(rank),
          "LOCAL_WORLD_SIZE=" + std::to_string(world), "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port),
          "NATSL_RUN_ID=test" + std::to_string(port)};
}

// The two ranks of a world-size-2 run on a free port, started by hand as a launcher would (rank_env): rank r runs
// `natsl` with `args_r` and logs to dir/r<r>.log.
struct TwoRanks {
  pid_t r0, r1;
};
TwoRanks start_two_ranks(const TempDir& dir, const std::vector<std::string>& args0,
                         const std::vector<std::string>& args1) {
  const int port = free_port();
  return {testing::spawn_natsl_env(args0, dir / "r0.log", rank_env(0, 2, port)),
          testing::spawn_natsl_env(args1, dir / "r1.log", rank_env(1, 2, port))};
}

// Waits until `path` has at least n lines (or the deadline).
bool wait_lines(const std::string& path, size_t n, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (testing::count_lines(path) >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST_F(Distributed, ARankKilledMidRunMakesTheOthersExitWithANamedErrorInBoundedTime) {
  const std::vector<std::string> args = {"train", dir_ / "cfg.yaml", "train.out_dir=" + dir_ / "k", "train.steps=100000",
                                         "train.warmup_steps=1"};
  const auto [p0, p1] = start_two_ranks(dir_, args, args);
  ASSERT_GT(p0, 0);
  ASSERT_GT(p1, 0);
  ASSERT_TRUE(wait_lines(dir_ / "k/metrics.jsonl", 3, std::chrono::seconds(60))) << testing::read_text(dir_ / "r0.log");
  ::kill(p1, SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  const int code = testing::wait_exit_code(p0);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  testing::wait_exit_code(p1);
  const std::string log = testing::read_text(dir_ / "r0.log");
  EXPECT_NE(code, 0) << log;
  EXPECT_LT(waited, 60.0) << log;
  EXPECT_NE(log.find("did another rank exit?"), std::string::npos) << log;
}

TEST_F(Distributed, SigtermToOneRankCheckpointsAndStopsAllRanksAtTheSameStep) {
  const std::vector<std::string> args = {"train", dir_ / "cfg.yaml", "train.out_dir=" + dir_ / "s", "train.steps=100000",
                                         "train.warmup_steps=1"};
  const auto [p0, p1] = start_two_ranks(dir_, args, args);
  ASSERT_TRUE(wait_lines(dir_ / "s/metrics.jsonl", 2, std::chrono::seconds(60))) << testing::read_text(dir_ / "r0.log");
  ::kill(p1, SIGTERM);  // not rank 0: the rank that writes must learn of it from the others
  const int c0 = testing::wait_exit_code(p0), c1 = testing::wait_exit_code(p1);
  const std::string log0 = testing::read_text(dir_ / "r0.log");
  EXPECT_EQ(c0, 0) << log0;
  EXPECT_EQ(c1, 0) << testing::read_text(dir_ / "r1.log");
  EXPECT_NE(log0.find("another rank received a stop signal"), std::string::npos) << log0;
  const size_t steps = testing::count_lines(dir_ / "s/metrics.jsonl");
  char name[32];
  std::snprintf(name, sizeof name, "step_%06zu", steps);
  EXPECT_TRUE(std::filesystem::exists(dir_ / ("s/checkpoints/" + std::string(name)))) << log0;
}

// A rank that cannot write its ZeRO-1 shard (here: rank 1 is given another out_dir, where rank 0 made no
// temporary directory) stops every rank with the error, and no step_N appears.
TEST_F(Distributed, AShardWriteThatFailsOnOneRankStopsAllRanksAndPublishesNoCheckpoint) {
  const std::vector<std::string> args = {"train", dir_ / "cfg.yaml", "train.steps=3", "train.zero=1"};
  auto with_out = [&](const std::string& out) {
    std::vector<std::string> a = args;
    a.push_back("train.out_dir=" + dir_ / out);
    return a;
  };
  const auto start = std::chrono::steady_clock::now();
  const auto [p0, p1] = start_two_ranks(dir_, with_out("s"), with_out("elsewhere"));
  const int c0 = testing::wait_exit_code(p0), c1 = testing::wait_exit_code(p1);
  const std::string log0 = testing::read_text(dir_ / "r0.log"), log1 = testing::read_text(dir_ / "r1.log");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60));
  EXPECT_EQ(c0, 1) << log0;
  EXPECT_EQ(c1, 1) << log1;
  EXPECT_NE(log0.find("rank(s) 1 could not write their part of checkpoint step_000003"), std::string::npos) << log0;
  EXPECT_NE(log1.find("rank 1 cannot write its part of checkpoint step_000003"), std::string::npos) << log1;
  EXPECT_EQ(testing::count_lines(dir_ / "s/metrics.jsonl"), 3u) << log0;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "s/checkpoints/step_000003")) << log0;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "s/checkpoints/.tmp-step_000003")) << log0;
}

TEST_F(Distributed, ARankThatNeverArrivesIsNamedWhenTheRendezvousTimesOut) {
  const int port = free_port();
  pid_t p0 = testing::spawn_natsl_env({"train", dir_ / "cfg.yaml", "train.out_dir=" + dir_ / "m", "train.dist_timeout_s=3"},
                                      dir_ / "r0.log", rank_env(0, 4, port));
  const auto t0 = std::chrono::steady_clock::now();
  const int code = testing::wait_exit_code(p0);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string log = testing::read_text(dir_ / "r0.log");
  EXPECT_NE(code, 0) << log;
  EXPECT_LT(waited, 30.0) << log;
  EXPECT_NE(log.find("ranks 1, 2, 3 of 4"), std::string::npos) << log;
}

}  // namespace
}  // namespace natsl
