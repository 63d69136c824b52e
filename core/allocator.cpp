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
// The device's memory counter counts a pool's blocks from cudaMalloc to cudaFree, and kept memory until it is
// freed: what the device really holds.
struct Kept {
  void* p;
  size_t n;
  bool pool_block;  // cudaMalloc'd (an earlier pool's block), else stream-ordered memory
};
struct CapturePool {
  int device = 0;
  bool serving = true;               // capturing: the device's allocations come from here
  bool released = false;             // the graph is gone
  uint64_t pin_below = UINT64_MAX;   // other allocations with a smaller serial are kept while not released
  std::multimap<size_t, void*> free_blocks;
  std::unordered_map<void*, size_t> sizes;  // every block taken from the device and not yet given back
  int64_t held = 0;                         // blocks handed out and not returned
  int64_t bytes = 0;
  std::vector<Kept> kept;  // memory freed while this pool's graph may still use it: freed at release
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
  counter(Device::cuda(cp.device)).add(int64_t(n));
  return p;
}

// Waits for the device's compute stream without throwing (deleters and destructors call it).
void quiet_sync(int device) {
  try {
    cudaSetDevice(device);
    cudaStreamSynchronize(compute_stream(device));
  } catch (...) {
  }
}

// Frees a block of a released pool (its graph is gone; tensors still held it): kept by the device's current
// pool if a newer graph exists (that graph may read it), else freed once the stream's work is done.
void free_released_block(CapturePool* cp, void* p, size_t n) {
  cp->bytes -= int64_t(n);
  cp->sizes.erase(p);
  if (CapturePool* now = g_pool[cp->device]) {
    now->kept.push_back({p, n, true});
  } else {
    quiet_sync(cp->device);
    cudaFree(p);
    counter(Device::cuda(cp->device)).add(-int64_t(n));
  }
  if (cp->held == 0 && cp->sizes.empty()) delete cp;
}
#endif

void* raw_allocate(Device d, size_t nbytes);
void raw_deallocate(Device d, void* p, size_t nbytes);

}  // namespace

void* allocate(Device d, size_t nbytes, AllocTag* tag) {
  (void)tag;
#ifdef NATSL_WITH_CUDA
  if (d.is_cuda()) {
    if (g_pools_alive.load() > 0) {
      std::lock_guard<std::mutex> lk(g_pool_mu);
      CapturePool* cp = g_pool[d.index];
      if (cp && cp->serving) {
        tag->pool = cp;
        return pool_get(*cp, nbytes == 0 ? 1 : nbytes);
      }
    }
    tag->serial = g_serial.fetch_add(1) + 1;
  }
#endif
  return raw_allocate(d, nbytes);
}

void deallocate(Device d, void* p, size_t nbytes, const AllocTag& tag) {
  (void)tag;
  if (!p) return;
  if (nbytes == 0) nbytes = 1;
#ifdef NATSL_WITH_CUDA
  if (tag.pool) {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    auto* cp = static_cast<CapturePool*>(tag.pool);
    auto it = cp->sizes.find(p);
    if (it == cp->sizes.end()) return;  // not the pool's (cannot happen): leak rather than free a stranger
    --cp->held;
    if (!cp->released) cp->free_blocks.emplace(it->second, p);
    else free_released_block(cp, p, it->second);
    return;
  }
  if (d.is_cuda() && g_pools_alive.load() > 0) {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    CapturePool* cp = g_pool[d.index];
    if (cp && tag.serial < cp->pin_below) {  // a graph may still read it: freed when the graph goes
      cp->kept.push_back({p, nbytes, false});
      return;
    }
  }
#endif
  raw_deallocate(d, p, nbytes);
}

void* allocate(Device d, size_t nbytes) {
#ifdef NATSL_WITH_CUDA
  if (d.is_cuda() && g_pools_alive.load() > 0) {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    CapturePool* cp = g_pool[d.index];
    // Memory without a tag could not be told apart from the graph's when freed: refused during a capture (the
    // capture then fails and the caller's eager run allocates it).
    NATSL_CHECK(!(cp && cp->serving), "allocate: untagged CUDA memory (", human_bytes(double(nbytes)),
                ") asked for during a CUDA graph capture on ", d.str(), "; allocate it before the capture");
  }
#endif
  return raw_allocate(d, nbytes);
}

void deallocate(Device d, void* p, size_t nbytes) { deallocate(d, p, nbytes, AllocTag{}); }

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

void capture_pool_release(void* pool) noexcept {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  auto* cp = static_cast<CapturePool*>(pool);
  if (cp->released) return;
  cp->released = true;
  g_pool[cp->device] = nullptr;
  g_pools_alive.fetch_sub(1);
  // Replays may still be queued: the stream's work ends before anything the graph used is freed.
  quiet_sync(cp->device);
  const Device d = Device::cuda(cp->device);
  cudaStream_t s = nullptr;
  try {
    s = compute_stream(cp->device);
  } catch (...) {
  }
  for (const Kept& k : cp->kept) {
    if (k.pool_block) cudaFree(k.p);
    else cudaFreeAsync(k.p, s);
    counter(d).add(-int64_t(k.n));
  }
  cp->kept.clear();
  for (const auto& [n, p] : cp->free_blocks) {
    cp->bytes -= int64_t(n);
    cp->sizes.erase(p);
    cudaFree(p);
    counter(d).add(-int64_t(n));
  }
  cp->free_blocks.clear();
  if (cp->held == 0 && cp->sizes.empty()) delete cp;
}

int64_t capture_pool_bytes(const void* pool) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  return static_cast<const CapturePool*>(pool)->bytes;
}
#endif

namespace {

void* raw_allocate(Device d, size_t nbytes) {
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

void raw_deallocate(Device d, void* p, size_t nbytes) {
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

}  // namespace

MemoryStats memory_stats(Device d) {
  Counter& c = counter(d);
  return {c.in_use.load(), c.peak.load()};
}

void reset_peak_memory(Device d) {
  Counter& c = counter(d);
  c.peak.store(c.in_use.load());
}

}  // namespace natsl
