#include "trainers/dist/local_launcher.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <random>
#include <thread>

#include "core/error.h"
#include "trainers/stop_signal.h"

extern char** environ;

namespace natsl::dist {

namespace {

using Clock = std::chrono::steady_clock;

// The signal handler's state: the one place signals meet the launcher loop (they are process-wide).
std::atomic<int> g_stop_signals{0};  // SIGINT/SIGTERM received so far
std::atomic<int> g_last_stop_signal{0};
std::atomic<int> g_wake_fd{-1};  // written on every signal, SIGCHLD included, to wake the loop's poll

void on_signal(int sig) {
  const int saved_errno = errno;
  if (sig != SIGCHLD) {
    g_last_stop_signal = sig;
    g_stop_signals.fetch_add(1);
  }
  const char byte = 1;
  if (const int fd = g_wake_fd.load(); fd >= 0) (void)!::write(fd, &byte, 1);
  errno = saved_errno;
}

// Installs the handlers for the launcher's life; restores the previous ones.
class LauncherSignals {
 public:
  LauncherSignals() {
    if (::pipe2(pipe_, O_CLOEXEC | O_NONBLOCK) != 0)
      throw Error(std::string("natsl launcher: pipe failed: ") + std::strerror(errno));
    g_stop_signals = 0;
    g_last_stop_signal = 0;
    g_wake_fd = pipe_[1];
    prev_int_ = set_signal_handler(SIGINT, on_signal);
    prev_term_ = set_signal_handler(SIGTERM, on_signal);
    prev_chld_ = set_signal_handler(SIGCHLD, on_signal, SA_NOCLDSTOP);
  }
  ~LauncherSignals() {
    sigaction(SIGINT, &prev_int_, nullptr);
    sigaction(SIGTERM, &prev_term_, nullptr);
    sigaction(SIGCHLD, &prev_chld_, nullptr);
    g_wake_fd = -1;
    ::close(pipe_[0]);
    ::close(pipe_[1]);
  }
  LauncherSignals(const LauncherSignals&) = delete;
  LauncherSignals& operator=(const LauncherSignals&) = delete;

  // Sleeps until a signal arrives or `timeout` passes.
  void sleep(std::chrono::milliseconds timeout) const {
    pollfd p{pipe_[0], POLLIN, 0};
    ::poll(&p, 1, int(std::clamp<int64_t>(timeout.count(), 0, 1 << 30)));
    char buf[64];
    while (::read(pipe_[0], buf, sizeof buf) > 0) {
    }
  }

 private:
  int pipe_[2] = {-1, -1};
  struct sigaction prev_int_ {}, prev_term_ {}, prev_chld_ {};
};

std::string random_run_id() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
};

std::string signal_name(int sig) {
  const char* d = ::strsignal(sig);
  return d ? fmt::format("signal {} ({})", sig, d) : fmt::format("signal {}", sig);
}

// Starts one rank. Everything the child needs is built before fork: between fork and exec only
// async-signal-safe calls are allowed (the launcher may have other threads).
pid_t start_rank(const std::string& program, std::vector<char*>& argv, std::vector<char*>& envp, int devnull,
                 bool quiet_stdout) {
  int exec_error[2];  // the child writes errno here if exec fails; closed by a successful exec (O_CLOEXEC)
  if (::pipe2(exec_error, O_CLOEXEC) != 0) throw Error(std::string("natsl launcher: pipe failed: ") + std::strerror(errno));
  const pid_t parent = ::getpid();
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &old);  // no launcher handler may run in the child
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(128 + SIGTERM);  // the launcher died before prctl took effect
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGCHLD}) ::sigaction(sig, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(devnull, 0);
    if (quiet_stdout) ::dup2(devnull, 1);
    ::execve(program.c_str(), argv.data(), envp.data());
    const int err = errno;
    (void)!::write(exec_error[1], &err, sizeof err);
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::close(exec_error[1]);
  if (pid < 0) {
    ::close(exec_error[0]);
    throw Error(fmt::format("natsl launcher: cannot start a rank (fork: {})", std::strerror(fork_errno)));
  }
  ::setpgid(pid, pid);  // also here, so the group exists whichever of the two runs first
  int err = 0;
  ssize_t n;
  while ((n = ::read(exec_error[0], &err, sizeof err)) < 0 && errno == EINTR) {
  }
  ::close(exec_error[0]);
  if (n > 0) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    throw Error(fmt::format("natsl launcher: cannot run '{}': {}", program, std::strerror(err)));
  }
  return pid;
}

// The exit code of a wait status: the code, or 128 + the signal that killed it.
int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

std::string rank_list(const std::vector<Rank>& ranks) {
  std::string s;
  for (const Rank& r : ranks)
    if (r.running) s += fmt::format("{}rank {} (pid {})", s.empty() ? "" : ", ", r.rank, r.pid);
  return s;
}

}  // namespace

int free_tcp_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error(std::string("cannot find a free port: socket() failed: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(std::string("cannot find a free port: ") + std::strerror(err));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<std::string> args_without_nproc(const std::vector<std::string>& argv) {
  std::vector<std::string> out;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (argv[i] == "--") {  // the rest is positional
      out.insert(out.end(), argv.begin() + long(i), argv.end());
      break;
    }
    if (argv[i] == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (argv[i].rfind("--nproc=", 0) == 0) continue;
    out.push_back(argv[i]);
  }
  return out;
}

int launch_local_ranks(int nproc, const std::vector<std::string>& argv, const LocalLaunchOptions& options) {
  if (nproc < 1) throw InputError(fmt::format("--nproc {} is not a number of processes: give 1 or more", nproc));
  if (argv.empty()) throw Error("launch_local_ranks: argv is empty (argv[0] names the program)");
  const std::string program = options.program.empty() ? "/proc/self/exe" : options.program;
  const int port = options.master_port > 0 ? options.master_port : free_tcp_port();
  const std::string run_id = random_run_id();

  std::vector<std::string> argv_strings = argv;
  std::vector<char*> argv_ptrs;
  for (auto& a : argv_strings) argv_ptrs.push_back(a.data());
  argv_ptrs.push_back(nullptr);

  // The environment of every rank: the launcher's, less any launcher variables it carries, plus the rank's.
  const std::vector<std::string> ours = {"RANK",        "WORLD_SIZE",  "LOCAL_RANK",   "LOCAL_WORLD_SIZE",
                                         "MASTER_ADDR", "MASTER_PORT", "NATSL_RUN_ID", "TORCHELASTIC_RUN_ID"};
  std::vector<std::string> base_env;
  bool has_omp = false;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    if (std::find(ours.begin(), ours.end(), name) != ours.end()) continue;
    has_omp = has_omp || name == "OMP_NUM_THREADS";
    base_env.push_back(kv);
  }
  if (!has_omp && nproc > 1)
    base_env.push_back(fmt::format("OMP_NUM_THREADS={}",
                                   std::max<int64_t>(1, int64_t(std::thread::hardware_concurrency()) / nproc)));
  std::vector<std::vector<std::string>> env_strings(static_cast<size_t>(nproc), base_env);
  std::vector<std::vector<char*>> envps(static_cast<size_t>(nproc));
  for (int r = 0; r < nproc; ++r) {
    auto& env = env_strings[size_t(r)];
    env.push_back(fmt::format("RANK={}", r));
    env.push_back(fmt::format("WORLD_SIZE={}", nproc));
    env.push_back(fmt::format("LOCAL_RANK={}", r));
    env.push_back(fmt::format("LOCAL_WORLD_SIZE={}", nproc));
    env.push_back("MASTER_ADDR=127.0.0.1");
    env.push_back(fmt::format("MASTER_PORT={}", port));
    env.push_back("NATSL_RUN_ID=" + run_id);
    for (auto& kv : env) envps[size_t(r)].push_back(kv.data());
    envps[size_t(r)].push_back(nullptr);
  }

  const int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0) throw Error(std::string("natsl launcher: cannot open /dev/null: ") + std::strerror(errno));
  std::fflush(stdout);
  std::fflush(stderr);

  LauncherSignals signals;
  std::vector<Rank> ranks(static_cast<size_t>(nproc));
  auto kill_and_reap = [&](int sig) {
    for (Rank& r : ranks) {
      if (!r.running) continue;
      ::kill(r.pid, sig);
      while (::waitpid(r.pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      r.running = false;
    }
  };
  try {
    for (int r = 0; r < nproc; ++r) {
      ranks[size_t(r)].rank = r;
      ranks[size_t(r)].pid = start_rank(program, argv_ptrs, envps[size_t(r)], devnull,
                                        r > 0 && !options.keep_all_stdout);
      ranks[size_t(r)].running = true;
    }
  } catch (...) {
    kill_and_reap(SIGKILL);
    ::close(devnull);
    throw;
  }
  ::close(devnull);
  fmt::print(options.log, "natsl: started {} rank{} (pid{} {}) meeting at 127.0.0.1:{}, run id {}\n", nproc,
             nproc == 1 ? "" : "s", nproc == 1 ? "" : "s",
             [&] {
               std::string s;
               for (const Rank& r : ranks) s += fmt::format("{}{}", s.empty() ? "" : " ", r.pid);
               return s;
             }(),
             port, run_id);
  std::fflush(options.log);

  int result = 0;
  bool failed = false;
  int forwarded = 0;
  bool kill_pending = false;  // SIGKILL the ranks still running at kill_at
  Clock::time_point kill_at;
  for (;;) {
    // Pass every SIGINT/SIGTERM on, as many times as it came (a second one stops a trainer at once).
    for (const int seen = g_stop_signals.load(); forwarded < seen; ++forwarded) {
      const int sig = g_last_stop_signal.load();
      if (forwarded == 0)
        fmt::print(options.log, "natsl: {} received; passing it to the ranks{}\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
                   sig == SIGINT ? " (again to stop them at once)" : "");
      std::fflush(options.log);
      for (const Rank& r : ranks)
        if (r.running) ::kill(r.pid, sig);
    }
    for (Rank& r : ranks) {
      int status = 0;
      if (!r.running) continue;
      const pid_t done = ::waitpid(r.pid, &status, WNOHANG);
      if (done == 0 || (done < 0 && errno == EINTR)) continue;
      r.running = false;
      if (done < 0) {  // reaped by someone else (a waitpid(-1) elsewhere in this process): its code is lost
        status = 1 << 8;  // counted as exit code 1
      }
      const int code = exit_code(status);
      if (code == 0 || failed) continue;
      failed = true;
      result = code;
      const std::string others = rank_list(ranks);
      fmt::print(options.log, "natsl: rank {} (pid {}) {}{}\n", r.rank, r.pid,
                 WIFEXITED(status) ? fmt::format("exited with code {}", code)
                                   : "was killed by " + signal_name(WTERMSIG(status)),
                 others.empty() ? ""
                                : fmt::format("; stopping {}: SIGTERM, then SIGKILL after {:g} s", others,
                                              double(options.grace.count()) / 1000.0));
      std::fflush(options.log);
      if (forwarded == 0)  // after a forwarded signal they are stopping already; a second would cut them short
        for (const Rank& o : ranks)
          if (o.running) ::kill(o.pid, SIGTERM);
      kill_at = Clock::now() + options.grace;
      kill_pending = true;
    }
    if (std::none_of(ranks.begin(), ranks.end(), [](const Rank& r) { return r.running; })) break;
    const auto now = Clock::now();
    if (kill_pending && now >= kill_at) {
      fmt::print(options.log, "natsl: {} still running {:g} s after SIGTERM; sending SIGKILL\n", rank_list(ranks),
                 double(options.grace.count()) / 1000.0);
      std::fflush(options.log);
      for (const Rank& r : ranks)
        if (r.running) ::kill(r.pid, SIGKILL);
      kill_pending = false;
    }
    // SIGCHLD and the stop signals wake this early; the timeout is a safety net.
    std::chrono::milliseconds nap(500);
    if (kill_pending) nap = std::min(nap, std::chrono::ceil<std::chrono::milliseconds>(kill_at - now));
    signals.sleep(nap);
  }
  return result;
}

}  // namespace natsl::dist
