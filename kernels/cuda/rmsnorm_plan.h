#pragma once
// The kernel choice of the CUDA RMSNorm (kernels/cuda/rmsnorm.cu). `automatic` (the default) picks from the
// row width: in the forward, vector-aligned rows of at most kRmsnormShortRowVecsFwd 16-byte vectors go to the
// short-row kernel (a few lanes of a warp per row, several rows per warp); in the backward, rows of at most
// kRmsnormShortRowVecsBwd vectors go to the short-row kernel and wider vector-aligned rows to the
// row-in-registers kernel (one block per row, up to 512 threads); anything else (rows that are not
// vector-aligned or too wide) to the general kernels. Tests name each kernel to check it on every shape it
// takes; benchmarks name them to compare (natsl_bench_ops rows "rmsnorm fwd/bwd bf16 [kernel]", BENCHMARKS.md).
#include <cstdint>

#include "core/tensor.h"

namespace natsl::kernels::cuda {

// Widest rows (in 16-byte vectors) that `automatic` sends to the short-row kernels, which take up to 128. From
// the ops rows of 2026-12-06 (H100, bf16, natsl-340m's shapes): the short-row forward beat the general one at
// 16, 32 and 128 vectors; the short-row backward beat the row-in-registers one at 16 vectors (head dim 128) but
// not at 32 or 128.
inline constexpr int64_t kRmsnormShortRowVecsFwd = 128;
inline constexpr int64_t kRmsnormShortRowVecsBwd = 16;

struct RmsnormPlan {
  enum class Kernel {
    automatic,
    short_rows,        // TPR lanes per row (8, 16 or 32), rows of at most 128 vectors; else the general kernel
    row_in_registers,  // backward only (the forward takes the general kernel): one block per row, <= 512 threads
    general,           // several rows per block, two passes over the row
  };
  Kernel kernel = Kernel::automatic;
};

// kernels::rmsnorm_fwd / rmsnorm_bwd (kernels/nn.h) with a plan; the dispatcher runs the default one. A plan
// whose kernel does not take the tensors (not vector-aligned, too wide) falls back to the general kernel.
void rmsnorm_fwd(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd,
                 const RmsnormPlan& plan);
// accumulate_dx: dx += the gradient (in f32, one rounding to T); accumulate_dw: dw += the weight gradient; as
// kernels::rmsnorm_bwd.
void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                 const Tensor& dw, const RmsnormPlan& plan, bool accumulate_dx = false, bool accumulate_dw = false);

}  // namespace natsl::kernels::cuda
