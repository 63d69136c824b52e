// launch_local_ranks with natsl_test_rank_child as the ranks (tests/trainers/dist/rank_child.cpp): the variables each
// rank gets, exit codes, stopping the others when one fails (SIGTERM, then SIGKILL after the grace period),
// signals passed on, stdout of the other ranks, and a real rendezvous of the started ranks.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "trainers/dist/local_launcher.h"

namespace natsl::dist {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << "'" << (part) << "' missing in: " << (text)

// A fresh directory for the ranks' files, and a file for the launcher's own lines.
class LocalLaunch : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("natsl_launch_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    log_ = std::fopen((dir_ / "launcher.log").c_str(), "w+");
    options_.program = NATSL_RANK_CHILD;
    options_.log = log_;
  }
  void TearDown() override {
    std::fclose(log_);
    fs::remove_all(dir_);
  }

  // Runs nproc rank children doing `actions` (one per rank, the last repeated).
  int launch(int nproc, const std::vector<std::string>& actions) {
    std::vector<std::string> argv = {"rank_child", dir_.string()};
    argv.insert(argv.end(), actions.begin(), actions.end());
    return launch_local_ranks(nproc, argv, options_);
  }
  std::string file(const std::string& name) const {
    std::ifstream in(dir_ / name);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::string log() const {
    std::fflush(log_);
    return file("launcher.log");
  }
  bool all_ready(int nproc) const {
    for (int r = 0; r < nproc; ++r)
      if (!fs::exists(dir_ / ("rank" + std::to_string(r) + ".ready"))) return false;
    return true;
  }
  // Waits (at most 10 s) until every rank has set itself up.
  void wait_ready(int nproc) const {
    const auto until = Clock::now() + 10s;
    while (!all_ready(nproc) && Clock::now() < until) std::this_thread::sleep_for(5ms);
  }

  fs::path dir_;
  std::FILE* log_ = nullptr;
  LocalLaunchOptions options_;
};

TEST_F(LocalLaunch, EveryRankGetsItsVariables) {
  ASSERT_EQ(launch(3, {"ok"}), 0) << log();
  std::set<std::string> run_ids, ports, pids;
  for (int r = 0; r < 3; ++r) {
    std::istringstream in(file("rank" + std::to_string(r) + ".ready"));
    int rank, world, local_rank, local_world, port;
    std::string addr, run_id, launcher, pid;
    ASSERT_TRUE(in >> rank >> world >> local_rank >> local_world >> addr >> port >> run_id >> launcher >> pid);
    EXPECT_EQ(rank, r);
    EXPECT_EQ(world, 3);
    EXPECT_EQ(local_rank, r);
    EXPECT_EQ(local_world, 3);
    EXPECT_EQ(addr, "127.0.0.1");
    EXPECT_GT(port, 0);
    EXPECT_EQ(launcher, "natsl");
    EXPECT_EQ(run_id.size(), 16u);
    run_ids.insert(run_id);
    ports.insert(std::to_string(port));
    pids.insert(pid);
  }
  EXPECT_EQ(run_ids.size(), 1u);
  EXPECT_EQ(ports.size(), 1u);
  EXPECT_EQ(pids.size(), 3u);
  EXPECT_HAS(log(), "natsl: started 3 ranks");
  EXPECT_HAS(log(), *run_ids.begin());
}

TEST_F(LocalLaunch, TheRanksMeetAtTheRendezvous) {
  EXPECT_EQ(launch(3, {"rendezvous"}), 0) << log();
}

TEST_F(LocalLaunch, AFailedRankStopsTheOthers) {
  options_.grace = 20s;
  const auto start = Clock::now();
  EXPECT_EQ(launch(3, {"wait-signal", "exit-after-ready:3", "wait-signal"}), 3);
  // The others stopped at the SIGTERM, long before the grace period ran out.
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 10.0);
  EXPECT_EQ(file("rank0.signal"), std::to_string(SIGTERM));
  EXPECT_EQ(file("rank2.signal"), std::to_string(SIGTERM));
  EXPECT_HAS(log(), "natsl: rank 1 (pid ");
  EXPECT_HAS(log(), ") exited with code 3; stopping rank 0 (pid ");
  EXPECT_HAS(log(), "), rank 2 (pid ");
  EXPECT_HAS(log(), "): SIGTERM, then SIGKILL after 20 s");
  EXPECT_EQ(log().find("still running"), std::string::npos) << log();
}

TEST_F(LocalLaunch, RanksThatIgnoreSigtermAreKilledAfterTheGracePeriod) {
  options_.grace = 300ms;
  const auto start = Clock::now();
  EXPECT_EQ(launch(2, {"ignore-term", "exit-after-ready:4"}), 4);
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_GE(took, 0.3);
  EXPECT_LT(took, 8.0);
  EXPECT_HAS(log(), "natsl: rank 0 (pid ");
  EXPECT_HAS(log(), "still running 0.3 s after SIGTERM; sending SIGKILL");
}

TEST_F(LocalLaunch, ARankKilledBySignalGives128PlusTheSignal) {
  options_.grace = 20s;
  EXPECT_EQ(launch(2, {"wait-signal", "kill-after-ready:9"}), 137);
  EXPECT_HAS(log(), "rank 1 (pid ");
  EXPECT_HAS(log(), "was killed by signal 9");
  EXPECT_EQ(file("rank0.signal"), std::to_string(SIGTERM));
}

TEST_F(LocalLaunch, SigtermToTheLauncherReachesEveryRank) {
  auto sender = std::async(std::launch::async, [&] {
    wait_ready(3);
    ::kill(::getpid(), SIGTERM);  // the launcher's handler is installed while it runs
  });
  EXPECT_EQ(launch(3, {"wait-signal"}), 0) << log();
  sender.get();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(file("rank" + std::to_string(r) + ".signal"), std::to_string(SIGTERM)) << r;
  EXPECT_HAS(log(), "natsl: SIGTERM received; passing it to the ranks");
}

TEST_F(LocalLaunch, OnlyRankZerosStdoutIsKept) {
  // The ranks' stdout is this process's: point it at a file for the launch.
  const std::string out = (dir_ / "stdout.txt").string();
  auto capture = [&](bool keep_all) {
    options_.keep_all_stdout = keep_all;
    std::fflush(stdout);
    const int saved = ::dup(1);
    const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::close(fd);
    const int code = launch(3, {"ok"});
    ::dup2(saved, 1);
    ::close(saved);
    EXPECT_EQ(code, 0);
    return file("stdout.txt");
  };
  const std::string quiet = capture(false);
  EXPECT_HAS(quiet, "stdout of rank 0");
  EXPECT_EQ(quiet.find("stdout of rank 1"), std::string::npos) << quiet;
  EXPECT_EQ(quiet.find("stdout of rank 2"), std::string::npos) << quiet;
  const std::string all = capture(true);
  for (int r = 0; r < 3; ++r) EXPECT_HAS(all, "stdout of rank " + std::to_string(r));
}

TEST_F(LocalLaunch, BadArgumentsAreRefused) {
  EXPECT_THROW(launch(0, {"ok"}), InputError);
  options_.program = (dir_ / "no_such_program").string();
  try {
    launch(2, {"ok"});
    ADD_FAILURE() << "a missing program was started";
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "cannot run '" + options_.program + "'");
    EXPECT_HAS(e.what(), "No such file");
  }
}

TEST(LocalLaunchArgs, NprocIsRemoved) {
  using V = std::vector<std::string>;
  EXPECT_EQ(args_without_nproc(V{"natsl", "train", "--nproc", "4", "c.yaml", "train.steps=3"}),
            (V{"natsl", "train", "c.yaml", "train.steps=3"}));
  EXPECT_EQ(args_without_nproc(V{"natsl", "train", "c.yaml", "--nproc=2"}), (V{"natsl", "train", "c.yaml"}));
  EXPECT_EQ(args_without_nproc(V{"natsl", "train", "--", "--nproc"}), (V{"natsl", "train", "--", "--nproc"}));
}

TEST(LocalLaunchArgs, FreePortIsFree) {
  const int port = free_tcp_port();
  EXPECT_GT(port, 0);
  EXPECT_LE(port, 65535);
}

}  // namespace
}  // namespace natsl::dist
