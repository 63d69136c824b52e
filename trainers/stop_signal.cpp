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

struct sigaction set_signal_handler(int sig, void (*handler)(int), int extra_flags) {
  struct sigaction sa {}, prev {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | extra_flags;
  sigaction(sig, &sa, &prev);
  return prev;
}

StopSignalGuard::StopSignalGuard() {
  g_stop_signal = 0;
  g_prev_int = set_signal_handler(SIGINT, on_signal);
  g_prev_term = set_signal_handler(SIGTERM, on_signal);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGINT, &g_prev_int, nullptr);
  sigaction(SIGTERM, &g_prev_term, nullptr);
}

bool StopSignalGuard::requested() const { return g_stop_signal.load() != 0; }
int StopSignalGuard::signal() const { return g_stop_signal.load(); }

}  // namespace natsl
