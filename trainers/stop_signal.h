#pragma once
// SIGINT / SIGTERM handling for a training run: while a StopSignalGuard lives, the first such signal only
// sets a flag that the loop checks after each step (finish the step, write a checkpoint, exit 0); a second
// one ends the process at once (exit 128 + signal; the half-written checkpoint directory is ignored later).
// The flag is process-wide because signals are: the one global besides the device context and grad mode.
#include <csignal>

namespace natsl {

// Sets `handler` for `sig` (nothing masked, SA_RESTART | extra_flags) and returns the action it replaced, for
// sigaction(sig, &previous, nullptr) to restore. The run's guard below and the launcher's (dist/local_launcher.cpp).
struct sigaction set_signal_handler(int sig, void (*handler)(int), int extra_flags = 0);

class StopSignalGuard {
 public:
  StopSignalGuard();   // installs the handlers
  ~StopSignalGuard();  // restores the previous ones
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;
  bool requested() const;
  int signal() const;  // the signal received, 0 if none
};

}  // namespace natsl
