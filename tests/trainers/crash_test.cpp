// Crash consistency of a run directory: `natsl train` is killed with SIGKILL again and again, at seeded
// moments (at a random time, which includes the start-up; while a checkpoint is written; when a checkpoint
// has just been renamed into place and old ones are pruned; right after a metrics row is appended; while a
// resume rewrites metrics.jsonl), and resumed with resume=auto each time. After every kill no file is cut or
// empty where it should hold data, and every checkpoint that resume=auto could pick is complete; at the end
// metrics.jsonl holds every step once with the same numbers, bit for bit, as a run never interrupted, and
// the final weights and moments are the same bytes.
//
// Its own executable with the CTest label "crash" (ctest -L crash). NATSL_CRASH_KILLS (default 24) sets the
// number of kills, NATSL_CRASH_SEED (default 12) the seed of the kill moments.
#include <gtest/gtest.h>

#include <poll.h>
#include <sys/inotify.h>
#include <sys/wait.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "trainers/io/checkpoint.h"
#include "trainers/config.h"
#include "trainers/io/safetensors.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using testing::read_text;
using testing::TempDir;
using testing::write_text;

constexpr int64_t kCkptEvery = 4;
// An attempt ends at the latest after this many metrics rows, so that 10 steps per kill outlast the kills.
constexpr int kMaxAppendsPerAttempt = int(2 * kCkptEvery + 1);

// A step takes about a millisecond; a checkpoint every 4 steps, the newest 2 kept, so checkpoints are
// written, renamed and pruned all the time. Evaluation every 15 steps puts eval results into some rows.
const std::string kConfig =
    testing::millisecond_model_yaml("crash") + testing::resume_train_yaml(200, 16) + R"(  eval_every: 15
  eval_batches: 1
  ckpt_every: 4
  keep_last: 2
  device: cpu
)";

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

enum class KillAt { RandomTime, CheckpointWrite, CheckpointRenamed, MetricsAppend, MetricsRewrite };
const char* name_of(KillAt k) {
  switch (k) {
    case KillAt::RandomTime: return "random time";
    case KillAt::CheckpointWrite: return "checkpoint write";
    case KillAt::CheckpointRenamed: return "checkpoint renamed/pruning";
    case KillAt::MetricsAppend: return "metrics append";
    case KillAt::MetricsRewrite: return "metrics rewrite";
  }
  return "?";
}

// The fields of a metrics row that a resumed run must reproduce exactly (not the timings or memory).
std::string reproducible_part(const nlohmann::json& row) {
  nlohmann::json r;
  for (const char* k : {"step", "loss", "lr", "grad_norm", "skipped", "skipped_total", "stats", "eval"})
    if (row.contains(k)) r[k] = row[k];
  return r.dump();  // doubles print as their shortest round-trip text: equal text = equal bits
}

struct MetricsFile {
  std::vector<nlohmann::json> rows;
  bool cut_tail = false;  // a last line without its newline (the row in flight when the process died)
};

// Every complete line must be a JSON object whose step is its line number.
MetricsFile read_metrics(const std::string& path) {
  MetricsFile m;
  const std::string text = read_text(path);
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) {
      m.cut_tail = true;
      break;
    }
    const std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("step")) << path << " line " << m.rows.size() + 1 << ": '" << line << "'";
    if (!j.is_object() || !j.contains("step")) break;
    EXPECT_EQ(j["step"].get<int64_t>(), int64_t(m.rows.size()) + 1) << path << ": steps not 1, 2, 3, ...";
    m.rows.push_back(j);
  }
  return m;
}

struct Tally {
  std::map<std::string, int> kills, landed;  // by where the kill was aimed; those that hit the aimed event
  int landed_on_event = 0, cut_metrics_tails = 0, half_pruned = 0;
};

// What a killed run left behind is consistent: see the file comment.
void check_after_kill(const std::string& run, Tally& tally, int kill) {
  SCOPED_TRACE("after kill " + std::to_string(kill));
  if (fs::exists(run + "/config.yaml")) {
    EXPECT_GT(fs::file_size(run + "/config.yaml"), 0u);
    EXPECT_NO_THROW(load_config(run + "/config.yaml")) << read_text(run + "/config.yaml");
  }
  MetricsFile m;
  if (fs::exists(run + "/metrics.jsonl")) m = read_metrics(run + "/metrics.jsonl");
  tally.cut_metrics_tails += m.cut_tail;

  std::vector<int64_t> steps = list_checkpoint_steps(run);
  for (size_t i = 0; i < steps.size(); ++i) {
    const std::string dir = run + "/checkpoints/" + checkpoint_dir_name(steps[i]);
    const bool newest = i + 1 == steps.size();
    try {
      CheckpointReader ck(dir);
      EXPECT_EQ(ck.step(), steps[i]) << dir;
      continue;
    } catch (const InputError& e) {
      // Only a checkpoint older than a complete one may be partial, and only by whole files that pruning
      // had already removed: every file still there is complete.
      EXPECT_FALSE(newest) << "the newest checkpoint is damaged: " << e.what();
    }
    ++tally.half_pruned;
    for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
      if (fs::exists(dir + "/" + f)) {
        EXPECT_NO_THROW(SafeTensorsReader(dir + "/" + f)) << dir << "/" << f;
      }
    }
    if (fs::exists(dir + "/state.json")) {
      EXPECT_FALSE(nlohmann::json::parse(read_text(dir + "/state.json"), nullptr, false).is_discarded()) << dir;
    }
  }
  // Rows are made durable before the checkpoint of their step: the newest checkpoint's rows are all there.
  if (!steps.empty()) {
    EXPECT_GE(int64_t(m.rows.size()), steps.back()) << "metrics.jsonl lost rows of a checkpointed step";
  }
}

class InotifyWatch {
 public:
  InotifyWatch(const std::string& run) {
    fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    run_wd_ = inotify_add_watch(fd_, run.c_str(), IN_CREATE | IN_MODIFY | IN_MOVED_TO);
    ckpt_wd_ = inotify_add_watch(fd_, (run + "/checkpoints").c_str(), IN_CREATE | IN_MOVED_TO);
  }
  ~InotifyWatch() { ::close(fd_); }
  bool ok() const { return fd_ >= 0 && run_wd_ >= 0 && ckpt_wd_ >= 0; }

  // Waits up to `ms` and returns the kinds of the events that came.
  std::vector<KillAt> wait(int ms) {
    std::vector<KillAt> out;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) return out;
    alignas(inotify_event) char buf[16384];
    for (;;) {
      ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n <= 0) break;
      for (char* q = buf; q < buf + n;) {
        auto* ev = reinterpret_cast<inotify_event*>(q);
        const std::string name = ev->len ? ev->name : "";
        if (ev->wd == ckpt_wd_ && (ev->mask & IN_CREATE) && name.rfind(".tmp-step_", 0) == 0)
          out.push_back(KillAt::CheckpointWrite);
        if (ev->wd == ckpt_wd_ && (ev->mask & IN_MOVED_TO) && name.rfind("step_", 0) == 0)
          out.push_back(KillAt::CheckpointRenamed);
        if (ev->wd == run_wd_ && (ev->mask & IN_MODIFY) && name == "metrics.jsonl") out.push_back(KillAt::MetricsAppend);
        if (ev->wd == run_wd_ && (ev->mask & IN_CREATE) && name == "metrics.jsonl.tmp")
          out.push_back(KillAt::MetricsRewrite);
        q += sizeof(inotify_event) + ev->len;
      }
    }
    return out;
  }

 private:
  int fd_ = -1, run_wd_ = -1, ckpt_wd_ = -1;
};

TEST(CrashConsistency, KillNineAtRandomMomentsThenResumeMatchesAnUninterruptedRun) {
  const int64_t kills = env_int("NATSL_CRASH_KILLS", 24);
  const uint64_t seed = uint64_t(env_int("NATSL_CRASH_SEED", 12));
  TempDir dir;
  write_text(dir / "c.yaml", kConfig);

  const int64_t steps = std::max<int64_t>(200, 10 * kills);
  const std::string n_steps = " train.steps=" + std::to_string(steps);
  // The time of the start-up and of a step, for the kills at a random time.
  auto t0 = Clock::now();
  auto probe = testing::run_natsl("train " + dir / "c.yaml train.steps=1 train.warmup_steps=0 train.out_dir=" + dir / "probe");
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  const double startup_s = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  auto straight = testing::run_natsl("train " + dir / "c.yaml train.out_dir=" + dir / "straight" + n_steps);
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  const double step_s = std::max(0.0, std::chrono::duration<double>(Clock::now() - t0).count() - startup_s) / double(steps);
  const double random_window_s = startup_s + kMaxAppendsPerAttempt * step_s;

  const std::string run = dir / "run";
  fs::create_directories(run + "/checkpoints");  // for the watch; resume=auto starts at step 0 in it
  InotifyWatch watch(run);
  ASSERT_TRUE(watch.ok());
  std::mt19937_64 rng(seed);
  Tally tally;
  const auto deadline = Clock::now() + std::chrono::minutes(8);
  for (int64_t k = 0; k < kills;) {
    ASSERT_LT(Clock::now(), deadline) << "the crash test ran out of time after " << k << " kills";
    const auto aim = KillAt(rng() % 5);
    // The nth event of its kind, within what one attempt sees (at most kMaxAppendsPerAttempt rows, so two
    // checkpoints; one metrics rewrite, at the start).
    const int nth = 1 + int(rng() % (aim == KillAt::MetricsAppend ? kMaxAppendsPerAttempt - 1
                                     : aim == KillAt::MetricsRewrite ? 1 : 2));
    const auto delay = std::chrono::microseconds(rng() % 1500);         // after the event
    const auto random_time = std::chrono::microseconds(rng() % uint64_t(random_window_s * 1e6 + 1));

    watch.wait(0);  // drop the events of the previous attempt
    const pid_t pid = testing::spawn_natsl({"train", dir / "c.yaml", "train.out_dir=" + run, "resume=auto", n_steps.substr(1)},
                                           dir / ("attempt" + std::to_string(k) + ".log"));
    ASSERT_GT(pid, 0);
    const auto started = Clock::now();
    int seen = 0, appends = 0;
    bool on_event = false, exited = false;
    int status = 0;
    for (;;) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      bool hit = false;
      if (aim == KillAt::RandomTime) {
        hit = Clock::now() - started >= random_time;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      for (KillAt e : watch.wait(aim == KillAt::RandomTime ? 0 : 1)) {
        appends += e == KillAt::MetricsAppend;
        if (e == aim && ++seen >= nth) hit = true;
      }
      if (hit) {
        on_event = aim != KillAt::RandomTime;
        // A busy wait: a sleep would round the microseconds up to the scheduler's tick.
        const auto until = Clock::now() + (on_event ? delay : std::chrono::microseconds(0));
        while (Clock::now() < until) {
        }
        break;
      }
      if (appends >= kMaxAppendsPerAttempt) break;
    }
    if (exited) {
      // Cannot happen while 10 steps per kill outlast the kills (kMaxAppendsPerAttempt rows at most per attempt).
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << read_text(dir / ("attempt" + std::to_string(k) + ".log"));
      FAIL() << "the run finished after " << k << " kills; the test needs more steps for " << kills << " kills";
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ++k;
    ++tally.kills[name_of(aim)];
    tally.landed_on_event += on_event;
    tally.landed[name_of(aim)] += on_event;
    check_after_kill(run, tally, int(k));
    if (::testing::Test::HasFatalFailure()) return;
  }

  auto last = testing::run_natsl("train " + dir / "c.yaml train.out_dir=" + run + " resume=auto" + n_steps);
  ASSERT_EQ(last.exit_code, 0) << last.output;
  EXPECT_NE(last.output.find("done: step " + std::to_string(steps) + "/" + std::to_string(steps)), std::string::npos)
      << last.output;

  MetricsFile a = read_metrics(dir / "straight/metrics.jsonl"), b = read_metrics(run + "/metrics.jsonl");
  EXPECT_FALSE(b.cut_tail);
  ASSERT_EQ(a.rows.size(), size_t(steps));
  ASSERT_EQ(b.rows.size(), size_t(steps));
  for (size_t i = 0; i < a.rows.size(); ++i)
    ASSERT_EQ(reproducible_part(a.rows[i]), reproducible_part(b.rows[i])) << "step " << i + 1;
  const std::string final_ckpt = "/checkpoints/" + checkpoint_dir_name(steps);
  for (const char* f : {"/model.safetensors", "/optimizer.safetensors"}) {
    const std::string fa = read_text(dir / "straight" + final_ckpt + f), fb = read_text(run + final_ckpt + f);
    ASSERT_FALSE(fa.empty());
    EXPECT_TRUE(fa == fb) << f << " differs from the uninterrupted run's";
  }
  EXPECT_FALSE(fs::exists(run + "/metrics.jsonl.tmp"));

  std::string summary = "kills:";
  for (const auto& [where, n] : tally.kills)
    summary += " " + where + " " + std::to_string(n) + " (" + std::to_string(tally.landed[where]) + " on the event),";
  summary += " " + std::to_string(tally.landed_on_event) + " on their event in all; cut metrics tails seen " +
             std::to_string(tally.cut_metrics_tails) + ", partly pruned checkpoints seen " +
             std::to_string(tally.half_pruned);
  std::printf("%s\n", summary.c_str());
  RecordProperty("summary", summary);
  // The test must have hit what it says it hits.
  if (kills >= 10) {
    EXPECT_GE(tally.landed_on_event, int(kills / 4)) << summary;
  }
}

}  // namespace
}  // namespace natsl
