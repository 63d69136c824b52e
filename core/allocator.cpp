#include "core/allocator.h"

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
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

#ifdef NATSL_WITH_CUDA
// A CUDA graph's private pool (allocator.h): blocks from cudaMalloc, reused within the capture by size (the
// capture is one stream, so a block freed at one op and taken again at a later one is ordered like the eager run).
struct CapturePool {
  int device = 0;
  bool serving = true;               // capturing: the device's allocations come from here
  bool released = false;             // the graph is gone
  uint64_t pin_below = UINT64_MAX;   // other allocations with a smaller serial are kept while not released
  std::multimap<size_t, void*> free_blocks;
  std::unordered_map<void*, size_t> sizes;  // every block taken from the device and not yet given back
  int64_t held = 0;                         // blocks handed out and not returned
  int64_t bytes = 0;
  std::vector<std::pair<void*, size_t>> kept;  // other memory freed while pinned: freed at release
};
std::mutex g_pool_mu;
CapturePool* g_pool[kMaxDevices] = {};  // the device's unreleased pool
std::atomic<int> g_pools_alive{0};      // unreleased pools on any device (the fast path skips the lock at 0)
std::atomic<uint64_t> g_serial{0};      // allocation order of CUDA memory outside the pools

void* pool_get(CapturePool& cp, size_t nbytes) {
  const size_t n = (nbytes + 511) / 512 * 512;
  auto it = cp.free_blocks.lower_bound(n);
  if (it != cp.free_blocks.end() && it->first <= 2 * n) {  // best fit, at most twice the size asked for
    void* p = it->second;
    cp.free_blocks.erase(it);
    ++cp.held;
    return p;
  }
  activate(cp.device);
  // cudaMalloc is not stream work: allowed during a capture once this thread's capture mode is relaxed.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  NATSL_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, n);
  cudaThreadExchangeStreamCaptureMode(&mode);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(ErrorKind::OutOfMemory, "CUDA out of memory on cuda:" + std::to_string(cp.device) +
                                            " capturing a CUDA graph: asked for " + human_bytes(double(n)) +
                                            " (the graph's pool holds " + human_bytes(double(cp.bytes)) +
                                            "). Set train.cuda_graph=false, or lower the batch size.");
  }
  cp.sizes[p] = n;
  cp.bytes += int64_t(n);
  ++cp.held;
  return p;
}

void pool_delete_if_done(CapturePool* cp) {
  if (cp->released && cp->held == 0) delete cp;
}
#endif

}  // namespace

void* allocate(Device d, size_t nbytes, AllocTag* tag) {
  (void)tag;
#ifdef NATSL_WITH_CUDA
  if (d.is_cuda()) {
    if (g_pools_alive.load() > 0) {
      std::lock_guard<std::mutex> lk(g_pool_mu);
      CapturePool* cp = g_pool[d.index];
      if (cp && cp->serving) {
        void* p = pool_get(*cp, nbytes == 0 ? 1 : nbytes);
        counter(d).add(int64_t(nbytes == 0 ? 1 : nbytes));
        tag->pool = cp;
        return p;
      }
    }
    tag->serial = g_serial.fetch_add(1) + 1;
  }
#endif
  return allocate(d, nbytes);
}

void deallocate(Device d, void* p, size_t nbytes, const AllocTag& tag) {
  (void)tag;
  if (!p) return;
#ifdef NATSL_WITH_CUDA
  if (tag.pool) {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    auto* cp = static_cast<CapturePool*>(tag.pool);
    counter(d).add(-int64_t(nbytes == 0 ? 1 : nbytes));
    --cp->held;
    auto it = cp->sizes.find(p);
    if (it == cp->sizes.end()) return;  // not the pool's (cannot happen): leak rather than free a stranger
    if (!cp->released) {
      cp->free_blocks.emplace(it->second, p);
    } else {
      cp->bytes -= int64_t(it->second);
      cp->sizes.erase(it);
      cudaFree(p);  // never throw from a deleter
      pool_delete_if_done(cp);
    }
    return;
  }
  if (d.is_cuda() && g_pools_alive.load() > 0) {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    CapturePool* cp = g_pool[d.index];
    if (cp && tag.serial < cp->pin_below) {  // a graph may still read it: freed when the graph goes
      counter(d).add(-int64_t(nbytes == 0 ? 1 : nbytes));
      cp->kept.emplace_back(p, nbytes);
      return;
    }
  }
#endif
  deallocate(d, p, nbytes);
}

#ifdef NATSL_WITH_CUDA
void* capture_pool_begin(int device) {
  NATSL_CHECK(device >= 0 && device < kMaxDevices, "bad CUDA device index ", device);
  // The stream-ordered pool keeps what it has cached (stream.cpp sets no release threshold): give the unused
  // part back first, so the graph's pool can take it.
  synchronize(device);
  cudaMemPool_t mp;
  NATSL_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&mp, device));
  NATSL_CUDA_CHECK(cudaMemPoolTrimTo(mp, 0));
  std::lock_guard<std::mutex> lk(g_pool_mu);
  NATSL_CHECK(g_pool[device] == nullptr, "a CUDA graph already holds cuda:", device,
              "'s capture pool: one graph per device at a time");
  auto* cp = new CapturePool;
  cp->device = device;
  g_pool[device] = cp;
  g_pools_alive.fetch_add(1);
  return cp;
}

void capture_pool_end(void* pool) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  auto* cp = static_cast<CapturePool*>(pool);
  cp->serving = false;
  cp->pin_below = g_serial.load() + 1;
}

void capture_pool_release(void* pool) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  auto* cp = static_cast<CapturePool*>(pool);
  if (cp->released) return;
  cp->released = true;
  g_pool[cp->device] = nullptr;
  g_pools_alive.fetch_sub(1);
  cudaStream_t s = activate(cp->device);
  for (const auto& [p, n] : cp->kept) {
    (void)n;
    cudaFreeAsync(p, s);  // after every graph launch queued on the stream
  }
  cp->kept.clear();
  for (const auto& [n, p] : cp->free_blocks) {
    cp->bytes -= int64_t(n);
    cp->sizes.erase(p);
    cudaFree(p);
  }
  cp->free_blocks.clear();
  pool_delete_if_done(cp);
}

int64_t capture_pool_bytes(const void* pool) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  return static_cast<const CapturePool*>(pool)->bytes;
}
#endif

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
