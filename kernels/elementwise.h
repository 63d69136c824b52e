#pragma once
// Elementwise kernels: unary maps and broadcasting binary ops, forward and backward.
#include "core/tensor.h"

namespace natsl::kernels {

enum class UnaryOp { Neg, Exp, Log, Silu, Sigmoid, Softplus, Tanh, Sqrt, Square };
// Softplus is log(1 + e^x), computed stably (returns x for x > 20 as FLA does).
const char* unary_name(UnaryOp op);

// y = f(x). x, y contiguous, same shape; y may alias x.
void unary_fwd(UnaryOp op, const Tensor& x, const Tensor& y);
// dx = dy * f'(x). `y` is the forward output (used by Exp, Sigmoid, Tanh, Sqrt to avoid recomputing).
void unary_bwd(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx);

enum class BinaryOp { Add, Sub, Mul, Div };
// out = a (op) b with NumPy broadcasting. a and b may be any strided views (including stride-0 broadcast
// views); out is contiguous with the broadcast shape. out may alias a or b when it has their shape.
void binary_fwd(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);

// out = alpha * x + beta * y (same shape, contiguous); used for scaling and gradient accumulation.
void axpby(double alpha, const Tensor& x, double beta, const Tensor& y, const Tensor& out);
// out = x * s
void scale(const Tensor& x, double s, const Tensor& out);

// out += x for x of any floating dtype (same shape, contiguous): x rounded to out's dtype, then added in out's
// compute type and rounded once, the bits of x.to(out.dtype()) followed by binary_fwd's Add, in one pass (a gradient
// added into a parameter's .grad of another dtype, e.g. a bf16 run's f32 .grad).
void add_into(const Tensor& x, const Tensor& out);

// The broadcast shape of two shapes (NumPy rules); throws naming both shapes when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b);

// The device implementations: one signature list for both (as kernels/router.h, kernels/mix_norm_gate.h).
#define NATSL_ELEMENTWISE_DECLS                                                                     \
  void unary_fwd(UnaryOp op, const Tensor& x, const Tensor& y);                                     \
  void unary_bwd(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx); \
  void binary_fwd(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);                \
  void axpby(double alpha, const Tensor& x, double beta, const Tensor& y, const Tensor& out);       \
  void add_into(const Tensor& x, const Tensor& out);
namespace cpu { NATSL_ELEMENTWISE_DECLS }
namespace cuda { NATSL_ELEMENTWISE_DECLS }
#undef NATSL_ELEMENTWISE_DECLS

}  // namespace natsl::kernels
