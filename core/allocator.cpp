#include "core/allocator.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/stream.h"

namespace natsl {
namespace {

constexpr int kMaxDevices = 64;
struct Counter {
  std::atomic<int64_t> in_use{0};
  std::atomic<int64_t> peak{0};
  void add(int64_t n) {
    int64_t now = in_use.fetch_add(n) + n;
    int64_t p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {}
  }
};
Counter g_cpu;
Counter g_cuda[kMaxDevices];

Counter& counter(Device d) {
  if (d.is_cpu()) return g_cpu;
  NATSL_CHECK(d.index >= 0 && d.index < kMaxDevices, "bad CUDA device index ", d.index);
  return g_cuda[d.index];
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) { b /= 1024; ++u; }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace

void* allocate(Device d, size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  void* p = nullptr;
  if (d.is_cpu()) {
    size_t rounded = (nbytes + 63) / 64 * 64;
    p = std::aligned_alloc(64, rounded);
    if (!p) throw Error(ErrorKind::OutOfMemory, "out of host memory allocating " + human_bytes(double(nbytes)));
  } else {
#ifdef NATSL_WITH_CUDA
    cudaStream_t s = activate(d.index);
    cudaError_t e = cudaMallocAsync(&p, nbytes, s);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw Error(ErrorKind::OutOfMemory,
                  "CUDA out of memory on " + d.str() + ": asked for " + human_bytes(double(nbytes)) +
                      "; natsl tensors hold " + human_bytes(double(counter(d).in_use.load())) +
                      " (peak " + human_bytes(double(counter(d).peak.load())) + "), device free " +
                      human_bytes(double(free_b)) + " of " + human_bytes(double(total_b)) +
                      ". Lower the batch size or sequence length, or use precision=bf16.");
    }
    NATSL_CUDA_CHECK(e);
#else
    NATSL_FAIL("natsl was built without CUDA; cannot allocate on ", d.str());
#endif
  }
  counter(d).add(int64_t(nbytes));
  return p;
}

void deallocate(Device d, void* p, size_t nbytes) {
  if (!p) return;
  if (nbytes == 0) nbytes = 1;
  counter(d).add(-int64_t(nbytes));
  if (d.is_cpu()) {
    std::free(p);
  } else {
#ifdef NATSL_WITH_CUDA
    cudaStream_t s = activate(d.index);
    cudaFreeAsync(p, s);  // never throw from a deleter
#endif
  }
}

MemoryStats memory_stats(Device d) {
  Counter& c = counter(d);
  return {c.in_use.load(), c.peak.load()};
}

void reset_peak_memory(Device d) {
  Counter& c = counter(d);
  c.peak.store(c.in_use.load());
}

}  // namespace natsl
