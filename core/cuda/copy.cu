// Strided copy-with-cast and fill on the device's compute stream.
#include "core/copy.h"
#include "core/cuda/strided_index.cuh"
#include "core/cuda_check.h"
#include "core/stream.h"

namespace natsl::cuda {
namespace {

template <class S, class D>
__global__ void strided_copy_kernel(const S* __restrict__ src, D* __restrict__ dst, StridedLayout L,
                                    int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t so, d_o;
    strided_offsets_of(L, i, n, so, d_o);
    dst[d_o] = convert<D>(src[so]);
  }
}

template <class D>
__global__ void fill_kernel(D* __restrict__ dst, StridedLayout L, int64_t n, D v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t unused, o;
    strided_offsets_of(L, i, n, unused, o);
    dst[o] = v;
  }
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 65535 * 8)); }

}  // namespace

void strided_copy(const void* src, DType sdt, int64_t soff, void* dst, DType ddt, int64_t doff,
                  const StridedLayout& L, int64_t numel, int device) {
  if (numel == 0) return;
  cudaStream_t s = activate(device);
  NATSL_DISPATCH_ALL(sdt, S, [&] {
    NATSL_DISPATCH_ALL(ddt, D, [&] {
      strided_copy_kernel<S, D><<<grid_for(numel), 256, 0, s>>>(static_cast<const S*>(src) + soff,
                                                               static_cast<D*>(dst) + doff, L, numel);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void fill(void* dst, DType dt, int64_t off, const StridedLayout& L, int64_t numel, double v, int device) {
  if (numel == 0) return;
  cudaStream_t s = activate(device);
  NATSL_DISPATCH_ALL(dt, D, [&] {
    fill_kernel<D><<<grid_for(numel), 256, 0, s>>>(static_cast<D*>(dst) + off, L, numel, convert<D>(v));
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::cuda
