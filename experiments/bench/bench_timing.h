#pragma once
// The timing rule every natsl benchmark uses: warm-up calls (module load, cuBLASLt plans, memory-pool
// growth), then `reps` timed calls bracketed by CUDA events on `stream`; the median in milliseconds.
#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "core/cuda_check.h"

namespace natsl::bench {

inline double median_ms(const std::function<void()>& fn, int reps, cudaStream_t stream, int warmup = 3) {
  for (int i = 0; i < warmup; ++i) fn();
  NATSL_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  NATSL_CUDA_CHECK(cudaEventCreate(&a));
  NATSL_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    NATSL_CUDA_CHECK(cudaEventRecord(a, stream));
    fn();
    NATSL_CUDA_CHECK(cudaEventRecord(b, stream));
    NATSL_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    NATSL_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  NATSL_CUDA_CHECK(cudaEventDestroy(a));
  NATSL_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t.empty() ? 0.0 : double(t[t.size() / 2]);
}

}  // namespace natsl::bench
