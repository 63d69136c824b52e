#include "core/profiler.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <set>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

#ifdef NATSL_WITH_CUDA
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include "core/cuda_check.h"
#include "core/stream.h"
#endif

namespace natsl::prof {

namespace {
thread_local StepProfiler* t_active = nullptr;
bool g_nvtx = false;
using Clock = std::chrono::steady_clock;
}  // namespace

const std::string* intern(std::string_view s) {
  static std::mutex mu;
  static std::unordered_set<std::string>* table = new std::unordered_set<std::string>();  // never freed
  std::lock_guard<std::mutex> lock(mu);
  return &*table->emplace(s).first;
}

StepProfiler* active() { return t_active; }
void set_active(StepProfiler* p) { t_active = p; }
const std::string* current_scope() { return t_active ? t_active->current() : nullptr; }
void set_nvtx(bool on) { g_nvtx = on; }
bool nvtx_enabled() { return g_nvtx; }

struct StepProfiler::Impl {
  Device device;
  int64_t step = 0;
  size_t first_span = 0;         // the current step's first span in spans_
  std::vector<int> open;         // indices of open spans
  Clock::time_point host_start;  // CPU: the step's start
  double step_offset_ms = 0.0;   // the profiled steps laid end to end
#ifdef NATSL_WITH_CUDA
  cudaEvent_t step_start = nullptr, step_end = nullptr;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> events;  // per span of the current step
  std::vector<cudaEvent_t> pool;
  cudaEvent_t take() {
    if (!pool.empty()) {
      cudaEvent_t e = pool.back();
      pool.pop_back();
      return e;
    }
    cudaEvent_t e;
    NATSL_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
#endif
};

StepProfiler::StepProfiler(Device device) : impl_(std::make_unique<Impl>()) { impl_->device = device; }

StepProfiler::~StepProfiler() {
#ifdef NATSL_WITH_CUDA
  for (auto [a, b] : impl_->events) {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  for (cudaEvent_t e : impl_->pool) cudaEventDestroy(e);
  if (impl_->step_start) cudaEventDestroy(impl_->step_start);
  if (impl_->step_end) cudaEventDestroy(impl_->step_end);
#endif
}

void StepProfiler::begin_step(int64_t step) {
  impl_->step = step;
  impl_->first_span = spans_.size();
  impl_->open.clear();
#ifdef NATSL_WITH_CUDA
  if (impl_->device.is_cuda()) {
    cudaStream_t s = activate(impl_->device.index);
    if (!impl_->step_start) {
      NATSL_CUDA_CHECK(cudaEventCreate(&impl_->step_start));
      NATSL_CUDA_CHECK(cudaEventCreate(&impl_->step_end));
    }
    NATSL_CUDA_CHECK(cudaEventRecord(impl_->step_start, s));
  }
#endif
  impl_->host_start = Clock::now();
}

int StepProfiler::push(const std::string* name, const std::string* category, const std::string* owner) {
  Span sp;
  sp.name = name;
  sp.category = category;
  sp.owner = owner;
  sp.depth = int(impl_->open.size());
  sp.step = impl_->step;
  const int id = int(spans_.size());
#ifdef NATSL_WITH_CUDA
  if (impl_->device.is_cuda()) {
    cudaEvent_t a = impl_->take(), b = impl_->take();
    NATSL_CUDA_CHECK(cudaEventRecord(a, compute_stream(impl_->device.index)));
    impl_->events.push_back({a, b});
  } else
#endif
  {
    sp.start_ms = std::chrono::duration<double, std::milli>(Clock::now() - impl_->host_start).count();
  }
  spans_.push_back(sp);
  impl_->open.push_back(id);
  return id;
}

void StepProfiler::pop(int id) {
  NATSL_CHECK(!impl_->open.empty() && impl_->open.back() == id, "profiler: spans closed out of order");
  impl_->open.pop_back();
  Span& sp = spans_[size_t(id)];
#ifdef NATSL_WITH_CUDA
  if (impl_->device.is_cuda()) {
    NATSL_CUDA_CHECK(cudaEventRecord(impl_->events[size_t(id) - impl_->first_span].second,
                                     compute_stream(impl_->device.index)));
    return;
  }
#endif
  sp.dur_ms = std::chrono::duration<double, std::milli>(Clock::now() - impl_->host_start).count() - sp.start_ms;
}

const std::string* StepProfiler::current() const {
  return impl_->open.empty() ? nullptr : spans_[size_t(impl_->open.back())].name;
}

void StepProfiler::end_step() {
  NATSL_CHECK(impl_->open.empty(), "profiler: a span is still open at the end of the step");
  double step_ms = std::chrono::duration<double, std::milli>(Clock::now() - impl_->host_start).count();
#ifdef NATSL_WITH_CUDA
  if (impl_->device.is_cuda()) {
    NATSL_CUDA_CHECK(cudaEventRecord(impl_->step_end, compute_stream(impl_->device.index)));
    NATSL_CUDA_CHECK(cudaEventSynchronize(impl_->step_end));
    float ms = 0.f;
    NATSL_CUDA_CHECK(cudaEventElapsedTime(&ms, impl_->step_start, impl_->step_end));
    step_ms = std::max(step_ms, double(ms));
    for (size_t i = impl_->first_span; i < spans_.size(); ++i) {
      auto [a, b] = impl_->events[i - impl_->first_span];
      float t0 = 0.f, t1 = 0.f;
      NATSL_CUDA_CHECK(cudaEventElapsedTime(&t0, impl_->step_start, a));
      NATSL_CUDA_CHECK(cudaEventElapsedTime(&t1, a, b));
      spans_[i].start_ms = t0;
      spans_[i].dur_ms = t1;
      impl_->pool.push_back(a);
      impl_->pool.push_back(b);
    }
    impl_->events.clear();
  }
#endif
  for (size_t i = impl_->first_span; i < spans_.size(); ++i) spans_[i].start_ms += impl_->step_offset_ms;
  impl_->step_offset_ms += step_ms;
  total_ms_ += step_ms;
  ++steps_;
}

nlohmann::json StepProfiler::summary() const {
  const double n = steps_ > 0 ? double(steps_) : 1.0;
  std::map<std::string, double> phases;
  std::map<std::string, std::pair<double, double>> modules;  // forward, backward
  std::map<std::string, std::pair<double, int64_t>> ops;
  for (const Span& s : spans_) {
    const std::string& cat = *s.category;
    if (cat == "phase") phases[*s.name] += s.dur_ms;
    else if (cat == "module") modules[*s.name].first += s.dur_ms;
    else if (cat == "backward") {
      modules[s.owner ? *s.owner : std::string("(outside any module)")].second += s.dur_ms;
      auto& o = ops[*s.name];
      o.first += s.dur_ms;
      o.second += 1;
    }
  }
  nlohmann::json j = {{"steps", steps_}, {"step_ms", total_ms_ / n}};
  double phase_sum = 0.0;
  for (auto& [k, v] : phases) {
    j["phases"][k] = v / n;
    phase_sum += v / n;
  }
  j["phases"]["(other)"] = total_ms_ / n - phase_sum;
  for (auto& [k, v] : modules) j["modules"][k] = {{"forward_ms", v.first / n}, {"backward_ms", v.second / n}};
  for (auto& [k, v] : ops) j["backward_ops"][k] = {{"ms", v.first / n}, {"count", double(v.second) / n}};
  return j;
}

std::string StepProfiler::table() const {
  const nlohmann::json j = summary();
  const double step = j["step_ms"];
  auto pct = [&](double v) { return step > 0 ? 100.0 * v / step : 0.0; };
  std::string out = fmt::format("profile: {} step(s), {:.3f} ms per step\n", steps_, step);
  out += fmt::format("  {:<28} {:>10} {:>7}\n", "phase", "ms/step", "%");
  if (j.contains("phases"))
    for (auto it = j["phases"].begin(); it != j["phases"].end(); ++it)
      out += fmt::format("  {:<28} {:>10.3f} {:>6.1f}%\n", it.key(), it->get<double>(), pct(it->get<double>()));
  out += fmt::format("  {:<28} {:>10} {:>10} {:>7}\n", "module", "fwd ms", "bwd ms", "%");
  if (j.contains("modules"))
    for (auto it = j["modules"].begin(); it != j["modules"].end(); ++it) {
      const double f = (*it)["forward_ms"], b = (*it)["backward_ms"];
      out += fmt::format("  {:<28} {:>10.3f} {:>10.3f} {:>6.1f}%\n", it.key(), f, b, pct(f + b));
    }
  // The backward ops, most expensive first.
  std::vector<std::pair<double, std::string>> ops;
  if (j.contains("backward_ops"))
    for (auto it = j["backward_ops"].begin(); it != j["backward_ops"].end(); ++it)
      ops.push_back({(*it)["ms"].get<double>(), it.key()});
  std::sort(ops.rbegin(), ops.rend());
  out += fmt::format("  {:<28} {:>10} {:>7} {:>7}\n", "backward op", "ms/step", "calls", "%");
  for (const auto& [ms, name] : ops)
    out += fmt::format("  {:<28} {:>10.3f} {:>7.0f} {:>6.1f}%\n", name, ms,
                       j["backward_ops"][name]["count"].get<double>(), pct(ms));
  return out;
}

std::string StepProfiler::chrome_trace(int rank) const {
  nlohmann::json ev = nlohmann::json::array();
  for (const Span& s : spans_) {
    nlohmann::json e = {{"name", *s.name}, {"cat", *s.category}, {"ph", "X"},   {"ts", s.start_ms * 1000.0},
                        {"dur", s.dur_ms * 1000.0}, {"pid", rank}, {"tid", 0}, {"args", {{"step", s.step}}}};
    if (s.owner) e["args"]["module"] = *s.owner;
    ev.push_back(std::move(e));
  }
  return nlohmann::json{{"traceEvents", ev}, {"displayTimeUnit", "ms"}}.dump() + "\n";
}

Scope::Scope(std::string_view name, std::string_view category) {
  p_ = t_active;
  if (p_) id_ = p_->push(intern(name), intern(category));
#ifdef NATSL_WITH_CUDA
  if (g_nvtx) {
    nvtxRangePushA(std::string(name).c_str());
    nvtx_ = true;
  }
#endif
}

Scope::Scope(const std::string* name, const std::string* category, const std::string* owner) {
  p_ = t_active;
  if (p_) id_ = p_->push(name, category, owner);
#ifdef NATSL_WITH_CUDA
  if (g_nvtx) {
    nvtxRangePushA(name->c_str());
    nvtx_ = true;
  }
#endif
}

Scope::~Scope() {
  if (p_) p_->pop(id_);
#ifdef NATSL_WITH_CUDA
  if (nvtx_) nvtxRangePop();
#endif
}

}  // namespace natsl::prof
