#pragma once
// The forward kernel choice of the CUDA chunk-selected attention (kernels/cuda/sparse_attention.cu).
// `automatic` (the default) takes, for tensors whose rows start 16-byte aligned:
//   wgmma     bf16 data, 64-token chunks, Dk and Dv in {64, 128}, on a device of compute capability 9.0 (H100,
//             H200): warpgroup MMA with TMA loads (sparse_attention_fwd_wgmma.sm90a.cu);
//   mma_sync  bf16 data, 64-token chunks, Dk in {64, 128}, Dv in {64, 128, 256}, any device
//             (sparse_attention_fwd.cu); it gives the wgmma kernel's bits;
//   simt      everything else: f32 data, other chunk sizes and head dims (sparse_attention_simt.cu).
// A plan that names a kernel which does not take the tensors falls back down that list. Tests name each kernel to
// compare them bit for bit; benchmarks name them to time them (natsl_bench_attention).
#include "core/tensor.h"
#include "kernels/sparse_attention.h"

namespace natsl::kernels::cuda {

struct SparseAttentionFwdPlan {
  enum class Kernel { automatic, wgmma, mma_sync, simt };
  Kernel kernel = Kernel::automatic;
};

// Whether `kernel` takes these tensors on their device (automatic: always).
bool sparse_attention_fwd_takes(SparseAttentionFwdPlan::Kernel kernel, const SparseAttentionIndex& index,
                                const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o);

// kernels::sparse_attention_fwd with a plan; the dispatcher runs the automatic one. For tests and benchmarks: it
// does not check the tensors' shapes, dtypes and devices (kernels::sparse_attention_fwd does, then calls this).
void sparse_attention_fwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                          const SparseAttentionFwdPlan& plan);

}  // namespace natsl::kernels::cuda
