#pragma once
// The timing rule every natsl benchmark uses: warm-up calls (module load, cuBLASLt plans, memory-pool
// growth), then `reps` timed calls bracketed by CUDA events on `stream`; the median in milliseconds.
//
// Method (NATSL_BENCH_TIMING, default "flush"): the method of the peers' triton.testing.do_bench. Before each
// timed call a 256 MB buffer is cleared (so the call starts with a cold L2, as the peer's do), then the start
// event, the call, the end event; the host does not wait between repetitions. The GPU is busy with the clear
// while the host queues the call, so the time is the call's device time, without the host's launch cost between
// its kernels (which a training step, queued ahead of the GPU, does not see either).
// NATSL_BENCH_TIMING=sync: the method of natsl's benchmarks before 2026-11-28 (session 3): no clear, and the host
// waits for each call before queuing the next, so an op's host-side work between its launches (library
// dispatch, allocations) shows as idle device time inside the measured interval.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "core/cuda_check.h"

namespace natsl::bench {

// True when NATSL_BENCH_TIMING=sync asks for the old per-call synchronised method.
inline bool timing_sync() {
  const char* v = std::getenv("NATSL_BENCH_TIMING");
  return v && std::strcmp(v, "sync") == 0;
}

inline const char* timing_method() { return timing_sync() ? "sync" : "flush"; }

inline double median_ms(const std::function<void()>& fn, int reps, cudaStream_t stream, int warmup = 3) {
  for (int i = 0; i < warmup; ++i) fn();
  NATSL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const bool sync = timing_sync();
  constexpr size_t kFlushBytes = size_t(256) << 20;
  static void* flush_buf = nullptr;  // one per process, kept for the next call
  if (!sync && !flush_buf) NATSL_CUDA_CHECK(cudaMalloc(&flush_buf, kFlushBytes));
  std::vector<cudaEvent_t> a(size_t(std::max(reps, 0))), b(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    NATSL_CUDA_CHECK(cudaEventCreate(&a[i]));
    NATSL_CUDA_CHECK(cudaEventCreate(&b[i]));
  }
  for (int i = 0; i < reps; ++i) {
    if (!sync) NATSL_CUDA_CHECK(cudaMemsetAsync(flush_buf, i & 0xff, kFlushBytes, stream));
    NATSL_CUDA_CHECK(cudaEventRecord(a[size_t(i)], stream));
    fn();
    NATSL_CUDA_CHECK(cudaEventRecord(b[size_t(i)], stream));
    if (sync) NATSL_CUDA_CHECK(cudaEventSynchronize(b[size_t(i)]));
  }
  NATSL_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> t;
  for (size_t i = 0; i < a.size(); ++i) {
    float ms = 0;
    NATSL_CUDA_CHECK(cudaEventElapsedTime(&ms, a[i], b[i]));
    t.push_back(ms);
    NATSL_CUDA_CHECK(cudaEventDestroy(a[i]));
    NATSL_CUDA_CHECK(cudaEventDestroy(b[i]));
  }
  std::sort(t.begin(), t.end());
  return t.empty() ? 0.0 : double(t[t.size() / 2]);
}

}  // namespace natsl::bench
