#pragma once
// The f32 activations of the elementwise kernels (kernels/cuda/elementwise.cu), shared with the fused kernels
// that must give their bits (kernels/cuda/gdn_gates.cu): one definition, so the two cannot drift apart.
#include <cuda_runtime.h>

namespace natsl::kernels::cuda {

__device__ __forceinline__ float sigmoid_f32(float x) { return 1.f / (1.f + expf(-x)); }
// log(1 + e^x), x itself above 20 (kernels/elementwise.h).
__device__ __forceinline__ float softplus_f32(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float softplus_grad_f32(float x) { return x > 20.f ? 1.f : sigmoid_f32(x); }
// sigmoid's derivative from its output y.
__device__ __forceinline__ float sigmoid_grad_f32(float y) { return y * (1.f - y); }

}  // namespace natsl::kernels::cuda
