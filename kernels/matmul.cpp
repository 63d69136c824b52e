#include "kernels/matmul.h"

#include "kernels/dispatch.h"

namespace natsl::kernels {

bool matmul_writes(DType operands, DType out) {
  return is_floating(out) && (operands == out || (operands == DType::bf16 && out == DType::f32));
}

void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
            double beta, const Tensor& c) {
  Device d = common_device({&a, &b, &out, &c}, "matmul");
  check_contiguous({&a, &b, &out, &c}, "matmul");
  NATSL_CHECK(!c.defined() || (c.shape() == out.shape() && c.dtype() == out.dtype()), "matmul: c ", c.str(),
              " must be like out ", out.str());
  if (c.defined() && c.data_ptr() != out.data_ptr()) {
    const auto* cb = static_cast<const char*>(c.data_ptr());
    const auto* ob = static_cast<const char*>(out.data_ptr());
    NATSL_CHECK(cb + c.nbytes() <= ob || ob + out.nbytes() <= cb, "matmul: c ", c.str(), " partly overlaps out ",
                out.str());
  }
  NATSL_CHECK(a.dtype() == b.dtype() && matmul_writes(a.dtype(), out.dtype()),
              "matmul: expects one floating dtype (or bf16 operands with an f32 out), got a ", dtype_name(a.dtype()),
              ", b ", dtype_name(b.dtype()), ", out ", dtype_name(out.dtype()));
  NATSL_CHECK(a.dim() >= 2 && b.dim() >= 2 && out.dim() == a.dim(), "matmul: expects a [..., M, K], b [..., K, N] ",
              "or [K, N], out [..., M, N] with a's rank; got a ", a.str(), ", b ", b.str(), ", out ", out.str());
  const int64_t M = a.size(trans_a ? -1 : -2), K = a.size(trans_a ? -2 : -1);
  const int64_t Kb = b.size(trans_b ? -1 : -2), N = b.size(trans_b ? -2 : -1);
  NATSL_CHECK(K == Kb, "matmul: inner dims differ: op(a) is ", M, "x", K, ", op(b) is ", Kb, "x", N, " (a ",
              a.str(), ", b ", b.str(), ", trans_a ", trans_a, ", trans_b ", trans_b, ")");
  NATSL_CHECK(out.size(-2) == M && out.size(-1) == N, "matmul: out ", out.str(), " for a ", M, "x", N, " product");
  const Shape batch(out.shape().begin(), out.shape().end() - 2);
  NATSL_CHECK(Shape(a.shape().begin(), a.shape().end() - 2) == batch, "matmul: batch dims of a ", a.str(),
              " differ from out ", out.str());
  NATSL_CHECK(b.dim() == 2 || Shape(b.shape().begin(), b.shape().end() - 2) == batch, "matmul: b ", b.str(),
              " must be 2-D or have out's batch dims ", out.str());
  if (d.is_cuda()) {
    // cuBLASLt reads c as its C input and writes out (D): the product and the add rounded once.
    NATSL_CUDA_ONLY(cuda::matmul(a, b, out, trans_a, trans_b, alpha, beta, c));
  } else {
    // out = c, then the accumulating product: the bits of a separate product and add in f32 / f64
    // (kernels/cpu/matmul.cpp).
    if (c.defined() && beta != 0.0 && c.data_ptr() != out.data_ptr()) out.copy_(c);
    cpu::matmul(a, b, out, trans_a, trans_b, alpha, beta);
  }
}

}  // namespace natsl::kernels
