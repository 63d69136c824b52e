#include "trainers/stop_signal.h"

#include <unistd.h>

#include <atomic>
#include <csignal>

namespace natsl {

namespace {
std::atomic<int> g_stop_signal{0};
struct sigaction g_prev_int, g_prev_term;

void on_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) ::_exit(128 + sig);
}
}  // namespace

StopSignalGuard::StopSignalGuard() {
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, &g_prev_int);
  sigaction(SIGTERM, &sa, &g_prev_term);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGINT, &g_prev_int, nullptr);
  sigaction(SIGTERM, &g_prev_term, nullptr);
}

bool StopSignalGuard::requested() const { return g_stop_signal.load() != 0; }
int StopSignalGuard::signal() const { return g_stop_signal.load(); }

}  // namespace natsl
