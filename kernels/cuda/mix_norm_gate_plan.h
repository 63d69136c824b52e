#pragma once
// The kernel choice of the CUDA output mixing and gated output norm (kernels/cuda/mix_norm_gate.cu). The default
// sends 16-byte aligned rows of at most kMixNormGateShortRowVecsFwd (forward) / kMixNormGateShortRowVecsBwd
// (backward) 16-byte vectors to the short-row kernels (a few lanes of a warp a row, the row in registers, every input
// read once; natsl-340m: the mixing's 128 and GDN's output norm's 256 bf16 channels, 16 and 32 vectors); the row
// kernels (whole warps a row) take the rest, and every row when short_rows is false. Both give the same bits but
// for dgamma (another fixed summation order). Tests pass short_rows = false to check that, and benchmarks to
// compare the two (natsl_bench_ops rows "mix_norm_gate / norm_gate fwd / bwd bf16", the default, and "... [rows]").
#include <cstdint>

#include "core/tensor.h"

namespace natsl::kernels::cuda {

// Widest rows (16-byte vectors) the short-row kernels take, each one of dispatch_short_rows' widths (8, 16, 32, 64,
// 128): every short-row kernel is bounded to 128 registers (2 blocks of 256 threads an SM) and none spills. Wider
// rows spill: the mixing forward at 4 vectors a lane (128 vectors), the backwards beyond one vector a lane (the
// mixing's holds 4 tensors' rows and 2 dgamma sums a lane); and there the row kernels leave no lane idle anyway (the
// backward's one vector a thread, whole warps a row; the forward's several vectors a lane).
inline constexpr int64_t kMixNormGateShortRowVecsFwd = 64;
inline constexpr int64_t kMixNormGateShortRowVecsBwd = 32;

struct MixNormGatePlan {
  bool short_rows = true;
};

// kernels::mix_norm_gate_fwd / _bwd and norm_gate_fwd / _bwd (kernels/mix_norm_gate.h, accumulate_dgamma as there)
// with a plan; the dispatchers run the default one.
void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,
                       const Tensor& rstd_g, const Tensor& rstd_a, const MixNormGatePlan& plan);
void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a,
                       const Tensor& dy, const Tensor& dog, const Tensor& doa, const Tensor& dwlogits,
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a, const MixNormGatePlan& plan,
                       bool accumulate_dgamma = false);
void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                   const Tensor& rstd, const MixNormGatePlan& plan);
void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                   const Tensor& do_, const Tensor& dz, const Tensor& dgamma, const MixNormGatePlan& plan,
                   bool accumulate_dgamma = false);

}  // namespace natsl::kernels::cuda
