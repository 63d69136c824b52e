#pragma once
// Memory for Storage. CPU: 64-byte aligned heap blocks. CUDA: the runtime's stream-ordered pool
// (cudaMallocAsync / cudaFreeAsync on the device's compute stream), never a home-made cache.
#include <cstddef>
#include <cstdint>

#include "core/device.h"

namespace natsl {

void* allocate(Device d, size_t nbytes);
void deallocate(Device d, void* p, size_t nbytes);

// Bytes currently handed out and the high-water mark, per device (CUDA) or for the CPU.
struct MemoryStats {
  int64_t in_use = 0;
  int64_t peak = 0;
};
MemoryStats memory_stats(Device d);
void reset_peak_memory(Device d);

}  // namespace natsl
