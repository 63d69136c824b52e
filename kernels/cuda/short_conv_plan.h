#pragma once
// The kernel choice of the CUDA short convolution (kernels/cuda/short_conv.cu). The default stages bf16 inputs
// through shared memory in chunks of steps (one block per 256 channels of a sequence's time tile, 16-byte copies;
// experiments/kernel_lab/short_conv measured it against the per-channel kernels, which load 2 bytes per thread
// per step); the per-channel kernels stay as the fallback (f32, channel counts that are not a multiple of 8,
// tensors not 16-byte aligned) and compute the same bits. Tests pass shared_memory_chunks = false to check
// that fallback, and that both give the same bits.
#include "core/tensor.h"

namespace natsl::kernels::cuda {

struct ShortConvPlan {
  bool shared_memory_chunks = true;
};

// kernels::short_conv_fwd / short_conv_bwd (kernels/nn.h) with a plan; the dispatchers run the default one.
void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y, const ShortConvPlan& plan);
void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,
                    const Tensor& dw, const ShortConvPlan& plan, bool accumulate_dw = false);
// Whether the plan takes the shared-memory kernels for x (and dy, undefined for the forward): bf16, channels a
// multiple of 8, both 16-byte aligned.
bool short_conv_takes_chunks(const Tensor& x, const Tensor& dy, const ShortConvPlan& plan);

}  // namespace natsl::kernels::cuda
