// natsl_test_rank_child DIR ACTION0 [ACTION1 ...]: a stand-in rank for the local launcher's tests. Rank r
// does ACTION_r (the last one given when there are fewer than ranks):
//   ok                     exit 0
//   exit:N                 exit N at once
//   exit-after-ready:N     exit N once every rank has written its ready file
//   kill-after-ready:SIG   kill itself with SIG once every rank is ready
//   wait-signal            wait for SIGINT/SIGTERM, write DIR/rank<r>.signal (the signal number), exit 0
//   ignore-term            ignore SIGTERM and sleep (only SIGKILL ends it)
//   rendezvous             TcpStore + rendezvous with the other ranks, then exit 0
// Each rank first writes DIR/rank<r>.ready: its launch info and pid (written aside and renamed, so a reader
// never sees half a file), after setting up its signals, and one line on stdout and on stderr.
// Nothing waits more than 20 s (exit 99): a broken launcher fails its test instead of hanging it.
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "trainers/dist/launch.h"
#include "trainers/dist/tcp_store.h"

namespace fs = std::filesystem;
using namespace natsl;

namespace {

constexpr auto kLimit = std::chrono::seconds(20);

std::string ready_file(const std::string& dir, int rank) { return dir + "/rank" + std::to_string(rank) + ".ready"; }

void write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << text;
  fs::rename(tmp, path);
}

bool all_ready(const std::string& dir, int world_size) {
  const auto until = std::chrono::steady_clock::now() + kLimit;
  for (;;) {
    bool all = true;
    for (int r = 0; r < world_size; ++r) all = all && fs::exists(ready_file(dir, r));
    if (all) return true;
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: natsl_test_rank_child DIR ACTION0 [ACTION1 ...]\n");
    return 64;
  }
  dist::LaunchInfo info;
  try {
    info = dist::launch_info_from_env();
  } catch (const Error& e) {
    std::fprintf(stderr, "rank child: %s\n", e.what());
    return 65;
  }
  const std::string dir = argv[1];
  const std::string action = argv[std::min(2 + info.rank, argc - 1)];

  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  if (action == "wait-signal") sigprocmask(SIG_BLOCK, &stop, nullptr);  // taken by sigtimedwait below
  if (action == "ignore-term") std::signal(SIGTERM, SIG_IGN);

  std::printf("stdout of rank %d\n", info.rank);
  std::fflush(stdout);
  std::fprintf(stderr, "stderr of rank %d\n", info.rank);
  write_file(ready_file(dir, info.rank),
             std::to_string(info.rank) + " " + std::to_string(info.world_size) + " " + std::to_string(info.local_rank) +
                 " " + std::to_string(info.local_world_size) + " " + info.master_addr + " " +
                 std::to_string(info.master_port) + " " + info.run_id + " " + info.launcher + " " +
                 std::to_string(::getpid()) + "\n");

  const size_t colon = action.find(':');
  const std::string verb = action.substr(0, colon);
  const int arg = colon == std::string::npos ? 0 : std::atoi(action.c_str() + colon + 1);
  if (verb == "ok") return 0;
  if (verb == "exit") return arg;
  if (verb == "exit-after-ready") return all_ready(dir, info.world_size) ? arg : 99;
  if (verb == "kill-after-ready") {
    if (!all_ready(dir, info.world_size)) return 99;
    std::signal(arg, SIG_DFL);
    ::kill(::getpid(), arg);
    return 99;
  }
  if (verb == "wait-signal") {
    const timespec limit{std::chrono::seconds(kLimit).count(), 0};
    const int sig = sigtimedwait(&stop, nullptr, &limit);
    if (sig < 0) return 99;
    write_file(dir + "/rank" + std::to_string(info.rank) + ".signal", std::to_string(sig));
    return 0;
  }
  if (verb == "ignore-term") {
    std::this_thread::sleep_for(kLimit);
    return 99;
  }
  if (verb == "rendezvous") {
    try {
      dist::TcpStore store(info, std::chrono::seconds(10));
      dist::rendezvous(store, info, std::chrono::seconds(10));
      // Rank 0 serves the store: it stays until every rank is done with it.
      store.set("left/" + std::to_string(info.rank), {});
      if (info.rank == 0) {
        std::vector<std::string> keys;
        for (int r = 0; r < info.world_size; ++r) keys.push_back("left/" + std::to_string(r));
        store.wait(keys, std::chrono::seconds(10));
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "rank %d: %s\n", info.rank, e.what());
      return 1;
    }
    return 0;
  }
  std::fprintf(stderr, "rank child: unknown action '%s'\n", action.c_str());
  return 64;
}
