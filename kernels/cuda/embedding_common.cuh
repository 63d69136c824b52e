#pragma once
// Pieces shared by the two files of the CUDA embedding backward (embedding.cu: lookup, radix-sort segments,
// accumulation; embedding_segments.cu: the cooperative segments kernel). Internal to kernels/cuda.
#include <atomic>
#include <utility>

#include <cstdio>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/embedding_bwd.h"

namespace natsl::kernels::cuda::embedding {

template <class I>
__device__ __forceinline__ int64_t checked_id(const I* ids, int64_t i, int64_t V) {
  const int64_t id = int64_t(ids[i]);
  if (id < 0 || id >= V) {
    printf("natsl embedding: id %lld at position %lld is outside the vocabulary [0, %lld)\n", (long long)id,
           (long long)i, (long long)V);
    __trap();
  }
  return id;
}


// Bits needed for values in [0, V), at least 1 and at most 31.
inline int bits_for(int64_t V) {
  int b = 1;
  while (b < 31 && (int64_t(1) << b) < V) ++b;
  return b;
}

// Programmatic dependent launch (sm_90): a kernel launched with the PDL attribute (launch_pdl below) may
// start while the previous kernel of the stream still runs; pdl_wait blocks until that kernel has finished
// and its writes are visible, so every kernel launched with it calls it before touching global memory. pdl_trigger lets
// the next kernel's blocks start early (they then wait in their own pdl_wait). Both are no-ops in a kernel
// launched without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Sorts the keys of lanes [0, cnt) ascending across the warp (bitonic network on the first
// next_pow2(cnt) lanes; lanes >= cnt hold ~0, which sorts last). cnt is warp-uniform, 1 <= cnt <= 32.
__device__ __forceinline__ uint32_t warp_sort_prefix(uint32_t key, int cnt, int lane) {
  const int width = cnt <= 1 ? 1 : 1 << (32 - __clz(cnt - 1));
  for (int k = 2; k <= width; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      const uint32_t other = __shfl_xor_sync(0xffffffffu, key, j);
      // Within a run of k lanes sorted ascending when lane & k == 0 (always for the first `width` lanes at
      // the last k), the lower lane of each pair keeps the smaller key.
      const bool ascending = (lane & k) == 0, lower = (lane & j) == 0;
      key = (ascending == lower) ? min(key, other) : max(key, other);
    }
  return key;
}

constexpr int kWarpSortMax = 32;  // longer segments are sorted by a block, shorter ones by a warp

// query(device) (a value >= 0), asked once per device: cache holds the value + 1, 0 while not asked yet.
template <class Query>
inline int cached_per_device(std::atomic<int> (&cache)[64], int device, Query query) {
  const int d = device < 64 ? device : 63;
  int c = cache[d].load(std::memory_order_relaxed);
  if (c == 0) {
    c = query(device) + 1;
    cache[d].store(c, std::memory_order_relaxed);
  }
  return c - 1;
}

// cudaDeviceGetAttribute(attr, device), cached per device.
template <cudaDeviceAttr kAttr>
int device_attribute(int device) {
  static std::atomic<int> cache[64];
  return cached_per_device(cache, device, [](int dev) {
    int value = 0;
    NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, dev));
    return value;
  });
}

inline bool pdl_supported(int device) { return device_attribute<cudaDevAttrComputeCapabilityMajor>(device) >= 9; }

// Launches kernel on the stream with the given launch attributes (none when count is 0).
template <class... Params, class... Args>
void launch_with(const cudaLaunchAttribute* attrs, unsigned count, void (*kernel)(Params...), unsigned grid,
                 unsigned block, cudaStream_t s, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(block);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cfg.attrs = const_cast<cudaLaunchAttribute*>(attrs);
  cfg.numAttrs = count;
  NATSL_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// Launches kernel on the stream, with programmatic dependent launch where `pdl` (and the device has it).
template <class... Params, class... Args>
void launch_pdl(bool pdl, void (*kernel)(Params...), unsigned grid, unsigned block, cudaStream_t s, Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  launch_with(&attr, pdl ? 1u : 0u, kernel, grid, block, s, std::forward<Args>(args)...);
}


// The cooperative segments: false (nothing queued) where the device has no cooperative launch; seg.pos_bits
// and key_bits (32) set by the caller.
bool segments_cooperative(const Tensor& ids, int64_t V, Device d, cudaStream_t s, EmbeddingBwdSegments& seg);

}  // namespace natsl::kernels::cuda::embedding
