#pragma once
// Dense matrix products: cuBLASLt on CUDA, Eigen on the CPU.
#include "core/tensor.h"

namespace natsl::kernels {

// out = alpha * op(a) @ op(b) + beta * out, with op(x) = x or x^T over the last two dims; with `c` given,
// out = alpha * op(a) @ op(b) + beta * c (c like out: shape, dtype, contiguous; out is not read): a residual
// added in the product's epilogue (on the GPU cuBLASLt's C input: the product and the add rounded once; on the CPU
// out = c, then the accumulating product: the bits of a separate product and add).
// a: [..., M, K] (or [..., K, M] if trans_a), b: [..., K, N] (or [..., N, K] if trans_b), out [..., M, N].
// Batch dims of a and b must equal out's, or b may be 2-D (one matrix shared by the batch). All contiguous,
// one dtype; bf16 accumulates in f32. One mixed case: bf16 a and b with an f32 out, which is the f32 sum
// rounded once to f32 (not to bf16): the weight gradient written straight into an f32 gradient buffer
// (beta = 1 adds it to what the buffer holds).
void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a = false, bool trans_b = false,
            double alpha = 1.0, double beta = 0.0, const Tensor& c = Tensor());
// True when matmul takes operands of dtype `operands` with an out of dtype `out` (the rule above).
bool matmul_writes(DType operands, DType out);

namespace cpu {
void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
            double beta);
}
namespace cuda {
void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
            double beta, const Tensor& c = Tensor());
}

}  // namespace natsl::kernels
