#pragma once
// The step profiler: where the time of a training step goes, per phase (data, forward, backward, gradient
// reduction, optimizer), per module (forward and backward) and per backward op.
//
// Code marks spans with prof::Scope("name", "category"). Nothing is recorded unless a StepProfiler is active
// on the thread (the trainer activates one for train.profile_steps): a Scope then costs one thread-local
// read. While one is active:
//   CPU    each span is timed with the host clock (the CPU path computes synchronously, so host time is
//          compute time);
//   CUDA   each span records a CUDA event on the compute stream at its start and end; the events are
//          resolved after the step, so a span's time is the device time between them (kernels and gaps), and
//          the profiler adds no host synchronisation inside the step.
// Autograd nodes remember the innermost span open when they were created (prof::current_scope()), so the
// engine charges each node's backward to the module whose forward made it.
//
// NVTX: with prof::set_nvtx(true) (train.nvtx) every Scope also pushes an NVTX range, profiling or not, so
// Nsight Systems shows the same names.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/device.h"

namespace natsl::prof {

struct Span {
  const std::string* name = nullptr;      // interned: lives for the process
  const std::string* category = nullptr;  // interned
  const std::string* owner = nullptr;     // backward spans: the module span that created the node (or null)
  int depth = 0;
  double start_ms = 0.0, dur_ms = 0.0;  // from the start of the step
  int64_t step = 0;
};

// A stable pointer for a string (kept for the life of the process): nodes store scope names cheaply.
const std::string* intern(std::string_view s);

class StepProfiler {
 public:
  explicit StepProfiler(Device device);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  // Brackets one optimizer step; end_step waits for the device and resolves the step's spans.
  void begin_step(int64_t step);
  void end_step();

  int push(const std::string* name, const std::string* category, const std::string* owner = nullptr);
  void pop(int id);
  const std::string* current() const;  // innermost open span's name (null: none)

  const std::vector<Span>& spans() const { return spans_; }
  int64_t steps() const { return steps_; }
  double total_ms() const { return total_ms_; }  // the profiled steps' time, end to end

  // The summary as JSON: {"steps", "step_ms" (mean), "phases": {name: ms per step}, "modules": {name:
  // {"forward_ms", "backward_ms"}}, "backward_ops": {name: {"ms", "count"}}}.
  nlohmann::json summary() const;
  // The summary as the text tables printed in the run log.
  std::string table() const;
  // Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one complete event ("ph": "X") per span,
  // steps laid end to end; pid = `rank`.
  std::string chrome_trace(int rank) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<Span> spans_;
  int64_t steps_ = 0;
  double total_ms_ = 0.0;
};

// The profiler active on this thread (null: none).
StepProfiler* active();
void set_active(StepProfiler* p);
// The innermost open span of the active profiler (null when none is active or no span is open).
const std::string* current_scope();

void set_nvtx(bool on);
bool nvtx_enabled();

// A span for the active profiler (and an NVTX range when enabled). The name is copied (interned) only when
// something records it.
class Scope {
 public:
  Scope(std::string_view name, std::string_view category);
  // For names already interned (hot paths: the engine's per-node scopes).
  Scope(const std::string* name, const std::string* category, const std::string* owner = nullptr);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  StepProfiler* p_ = nullptr;
  int id_ = -1;
  bool nvtx_ = false;
};

}  // namespace natsl::prof
