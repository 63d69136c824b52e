#pragma once
// Every CPU kernel includes Eigen through this header so that its matrix products round the same way on every
// x86-64 CPU for a given build.
//
// Why: Eigen's GEMM splits the reduction dimension into kc-long panels sized from the L1 data cache that it
// reads with CPUID at run time (GeneralBlockPanelKernel.h, evaluateProductBlockingSizesHeuristic). A product
// over K = 4096 tokens (a weight gradient) is then summed in panels of different lengths on a CPU with a
// 32 KiB L1 than on one with 48 KiB, the f32 sums round differently, and a training run takes another path:
// the same binary learned MQAR on one machine and stayed on the ln(V) plateau on another. Fixing the cache
// sizes Eigen plans with removes the machine from the arithmetic. (Threads do not enter: the build sets
// EIGEN_DONT_PARALLELIZE and natsl splits work itself in fixed blocks, kernels/cpu/parallel.h.)
#include <Eigen/Dense>

namespace natsl::kernels::cpu {

// The cache sizes every natsl build plans Eigen's products with, whatever the CPU reports: a common server
// core (32 KiB L1d, 1 MiB L2, 32 MiB L3). Changing them changes results; they are part of the numerics.
inline constexpr std::ptrdiff_t kEigenL1Bytes = 32 * 1024;
inline constexpr std::ptrdiff_t kEigenL2Bytes = 1024 * 1024;
inline constexpr std::ptrdiff_t kEigenL3Bytes = 32 * 1024 * 1024;

// Sets Eigen's cache sizes to the constants above (whatever set them before: Eigen's CPUID query, a test or
// a library sharing the process). Every CPU entry point that multiplies matrices with Eigen calls it first,
// outside its parallel region.
inline void fix_eigen_blocking() {
  if (Eigen::l1CacheSize() != kEigenL1Bytes || Eigen::l2CacheSize() != kEigenL2Bytes ||
      Eigen::l3CacheSize() != kEigenL3Bytes)
    Eigen::setCpuCacheSizes(kEigenL1Bytes, kEigenL2Bytes, kEigenL3Bytes);
}

}  // namespace natsl::kernels::cpu
