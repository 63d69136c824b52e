#pragma once
// Memory for Storage. CPU: 64-byte aligned heap blocks. CUDA: the runtime's stream-ordered pool
// (cudaMallocAsync / cudaFreeAsync on the device's compute stream), never a home-made cache, with one
// exception: while a CUDA graph is captured (core/cuda_graph.h) the device's allocations come from that graph's
// private pool, whose blocks no allocation outside a capture ever gets (a replay writes them again), and the
// memory that existed when the capture ended is kept while the graph lives (a replay may read it again).
#include <cstddef>
#include <cstdint>

#include "core/device.h"

namespace natsl {

void* allocate(Device d, size_t nbytes);
void deallocate(Device d, void* p, size_t nbytes);

// What Storage keeps of its allocation so that freeing it can tell graph memory apart: the capture pool that
// served it (or none) and its place in the device's allocation order.
struct AllocTag {
  uint64_t serial = 0;
  void* pool = nullptr;
};
void* allocate(Device d, size_t nbytes, AllocTag* tag);
void deallocate(Device d, void* p, size_t nbytes, const AllocTag& tag);

// Bytes currently handed out and the high-water mark, per device (CUDA) or for the CPU.
struct MemoryStats {
  int64_t in_use = 0;
  int64_t peak = 0;
};
MemoryStats memory_stats(Device d);
void reset_peak_memory(Device d);

#ifdef NATSL_WITH_CUDA
// The capture pools behind core/cuda_graph.h (one graph per device at a time). begin: allocations on the device
// come from a new pool until capture_pool_end; end: the pool stops serving, and every other allocation made
// before it (weights, caches, buffers the graph reads) is kept, not freed, until capture_pool_release, which
// frees what was kept and the pool's unused blocks (its blocks still held by tensors go when those do). The
// device's memory counter counts a pool's blocks from cudaMalloc to cudaFree and kept memory until it is freed.
// Untagged allocate() during a capture is refused (its free could not be told apart from the graph's memory).
void* capture_pool_begin(int device);
void capture_pool_end(void* pool);
void capture_pool_release(void* pool) noexcept;
// Bytes the pool has taken from the device.
int64_t capture_pool_bytes(const void* pool);
#endif

}  // namespace natsl
