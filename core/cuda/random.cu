// Philox fills on the GPU: the same words and the same float/double arithmetic as core/random.cpp.
#include "core/cuda_check.h"
#include "core/philox.h"
#include "core/stream.h"

namespace natsl::cuda {
namespace {
template <class T>
__global__ void philox_fill_kernel(T* d, int64_t n, uint64_t seed, uint64_t off, int kind, double a, double b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (kind == 2) {
      if constexpr (std::is_same_v<T, int32_t>) d[i] = int32_t(philox_word(seed, off + i));
    } else {
      double v = kind == 0 ? a + (b - a) * double(philox_uniform(seed, off + i))
                           : a + b * double(philox_normal(seed, off, uint64_t(i)));
      d[i] = convert<T>(v);
    }
  }
}
}  // namespace

void philox_fill(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t offset, int kind, double a, double b,
                 int device) {
  if (n == 0) return;
  cudaStream_t s = activate(device);
  int grid = int(std::min<int64_t>((n + 255) / 256, 65535 * 8));
  switch (dt) {
    case DType::f32: philox_fill_kernel<float><<<grid, 256, 0, s>>>(static_cast<float*>(dst), n, seed, offset, kind, a, b); break;
    case DType::f64: philox_fill_kernel<double><<<grid, 256, 0, s>>>(static_cast<double*>(dst), n, seed, offset, kind, a, b); break;
    case DType::bf16: philox_fill_kernel<bf16><<<grid, 256, 0, s>>>(static_cast<bf16*>(dst), n, seed, offset, kind, a, b); break;
    case DType::i32: philox_fill_kernel<int32_t><<<grid, 256, 0, s>>>(static_cast<int32_t*>(dst), n, seed, offset, kind, a, b); break;
    default: NATSL_FAIL("philox_fill: bad dtype");
  }
  NATSL_CUDA_CHECK_LAUNCH();
}
}  // namespace natsl::cuda
