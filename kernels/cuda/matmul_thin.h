#pragma once
// Thin matrix products: one dimension of at most kThinMax (Gated DeltaNet's a and b projections, d -> one value a
// head: 1024 -> 6 in natsl-340m), which cuBLASLt runs far from memory bandwidth even on padded copies (2.3-3.2x
// their bytes' copy time, BENCHMARKS.md 2026-12-07). Three memory-bound kernels, one per use in a linear layer,
// in kernels::matmul's terms (out [M, N] = alpha op(a) op(b) + beta C, C = c when given, else out):
//   rows    out = a b^T,  N <= kThinMax  (y = x W^T):   one warp a row of a, the N dot products of its K elements,
//           each lane's 16-byte vectors in order, then the warp's xor butterfly; out row written by lanes 0..N-1.
//   spread  out = a b,    K <= kThinMax  (dx = dy W):   one thread an 8-wide (16-byte) vector of an out row,
//           sum over k = 0..K-1 of a[m, k] b[k, :] in order.
//   gather  out = a^T b,  M <= kThinMax  (dW = dy^T x): the reduction over a's R rows in slabs of a fixed size
//           (from R alone, so the bits do not depend on the GPU): per slab and thread an 8-wide column vector's
//           M sums over its rows (row-interleaved thread groups, added in group order through shared memory) into
//           a partial [slab, M, N] f32 buffer; then one thread an output element sums the slabs in order.
// All three are deterministic; each output element is the unpadded product's dot product up to the order of its
// additions, so compared against the CPU reference with a tolerance. Operands f32 or bf16 (f32 sums), out of the
// operands' dtype or f32 for bf16 operands (a weight gradient added into the f32 gradient buffer); the wide rows
// 16-byte aligned and a multiple of 16 bytes long. Anything else returns false (matmul takes cuBLASLt).
#include "core/tensor.h"

namespace natsl::kernels::cuda {

constexpr int64_t kThinMax = 8;

// True when thin_matmul takes this problem (2-D a, b, out; `c` may be undefined); nothing is launched.
bool thin_matmul_applies(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b,
                         const Tensor& c);
// Runs the product on a thin kernel and returns true, or returns false (and does nothing) when it does not apply.
bool thin_matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
                 double beta, const Tensor& c);

}  // namespace natsl::kernels::cuda
