#pragma once
// The differentiable ops. Each runs its forward kernel and, when grad mode is on and an input requires
// grad, records a Node whose backward calls the backward kernel (autograd/engine.h).
//
// Conventions: inputs may be on CPU or CUDA (all on one device); outputs are new contiguous tensors;
// floating dtypes f32, bf16, f64 (f64 on CPU only); shapes follow PyTorch.
#include <optional>
#include <vector>

#include "autograd/engine.h"
#include "core/tensor.h"

namespace natsl {

// ---- arithmetic (NumPy broadcasting) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor mul_scalar(const Tensor& a, double s);
Tensor add_scalar(const Tensor& a, double s);
Tensor neg(const Tensor& a);
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator*(const Tensor& a, double s) { return mul_scalar(a, s); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

// ---- unary ----
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor softplus(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor square(const Tensor& x);

// ---- reductions ----
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum(const Tensor& x);  // all elements -> scalar
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);

// ---- shape ----
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);  // returns a contiguous copy
Tensor permute(const Tensor& x, const std::vector<int64_t>& order);  // contiguous copy
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end);  // contiguous copy
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
Tensor to_dtype(const Tensor& x, DType dt);  // differentiable cast (grad cast back)

// ---- linear algebra ----
// a [..., M, K] @ b [..., K, N] (b may be 2-D and shared); trans_* transposes the last two dims.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x [..., in] @ w[out, in]^T (+ bias[out]) (+ residual [..., out]): the Linear layer's op. A residual is added
// in the product's epilogue (kernels::matmul's c: one rounding, no separate add kernel); its gradient is the
// output's.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(), const Tensor& residual = Tensor());

// ---- nn ----
Tensor embedding(const Tensor& weight, const Tensor& ids);  // ids i32/i64 [...] -> [..., D]
Tensor rmsnorm(const Tensor& x, const Tensor& weight, double eps);  // weight may be undefined
// rmsnorm(x, weight) * silu(z) in one node (kernels/mix_norm_gate.h norm_gate: GDN's gated output norm); x, z
// [..., D], weight [D].
Tensor rmsnorm_gate(const Tensor& x, const Tensor& weight, const Tensor& z, double eps);
Tensor l2norm(const Tensor& x, double eps = 1e-6);
Tensor softmax(const Tensor& x);      // over the last dim
Tensor log_softmax(const Tensor& x);  // over the last dim
// Mean cross-entropy over rows whose target != ignore_index (0 when none). logits [N, V], targets [N].
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// cross_entropy(linear(h, w), targets) without the [N, V] logits (Liger's fused linear cross-entropy): h [N, D],
// w [V, D] (the LM head), targets [N]. The rows go in chunks of `chunk_rows` (0: as many as 256 MiB of logits
// hold); each chunk's logits, loss and logit gradient live only while the chunk is computed. With grad, dh and
// dw are computed in the forward (the logit gradient is not kept) and the backward scales them by the incoming
// gradient: peak memory loses the logits and their gradient ([N, V] each), the FLOPs are the same. dw sums the
// chunks' products in f32 (bf16 data: as one product would). Same value as the composed ops up to the order of
// the f32 sums (not bit for bit: the products are split along N).
Tensor linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& targets, int64_t ignore_index = -100,
                            int64_t chunk_rows = 0);
Tensor short_conv(const Tensor& x, const Tensor& w, bool apply_silu = false);  // x [B,T,C], w [C,W]
// l2norm(short_conv(x, w, apply_silu)) over each group of `group` consecutive channels, in one node (the GDN front
// end's q and k: kernels::short_conv_l2norm_fwd, fused on the GPU): x [B, T, C] -> [B, T, C], the same bits as the
// two ops (on the [B, T, C / group, group] view), without the activations between them in memory.
Tensor short_conv_l2norm(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, double eps = 1e-6);
Tensor swiglu(const Tensor& gate, const Tensor& up);

// The op behind every binary/unary/etc. helper, exposed for composite ops.
namespace detail {
// Sum a broadcast gradient back to `shape`.
Tensor reduce_grad_to(const Tensor& g, const Shape& shape);
}

}  // namespace natsl
