#pragma once
// The neural-network kernel families: embedding, rmsnorm, l2norm, softmax / log-softmax, fused
// cross-entropy, causal depthwise short conv, swiglu. Each has a forward and a backward; rows are the last
// dim, everything before it is flattened. All tensors contiguous. Statistics (rstd, lse, norms) are f32
// (f64 when the data is f64) whatever the data dtype.
#include "core/tensor.h"

namespace natsl::kernels {

// The dtype of the statistics (rstd, rnorm, lse, losses, valid) for data of dtype `data`.
inline DType stat_dtype(DType data) { return data == DType::f64 ? DType::f64 : DType::f32; }

// Weight gradients (rmsnorm's dw, the short convs' dw, the embedding's dweight) are written in the data's dtype or,
// for bf16 data, in f32: the f32 .grad of a bf16 run's parameters, from the kernels' f32 sums with no bf16 rounding.
// With accumulate_dw a kernel adds its gradient into what dw holds (dw = dw + g, g rounded to dw's dtype first, the
// sum rounded once: the bits of the plain gradient followed by a separate add, e.g. AccumulateGrad's), so autograd
// writes it straight into the parameter's .grad (autograd/engine.h, grad_sink).
inline bool weight_grad_writes(DType data, DType dw) {
  return is_floating(dw) && (dw == data || (data == DType::bf16 && dw == DType::f32));
}
// Throws naming `op`, dw and the data unless weight_grad_writes(data, dw); an undefined dw (not computed) passes.
void check_weight_grad(const Tensor& data, const Tensor& dw, const char* op);

// out[..., :] = weight[ids[...], :]. ids i32 or i64; out-of-range ids throw on CPU (checked on GPU by a
// device assert).
void embedding_fwd(const Tensor& weight, const Tensor& ids, const Tensor& out);
// dweight[v, :] += the sum of the rows dout[i, :] with ids[i] = v, summed in ascending i from zero and then added
// once (dweight is accumulated, not overwritten). dweight in dout's dtype, or f32 for bf16 dout (weight_grad_writes:
// the rows summed in f32 straight into an f32 .grad).
void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight);

// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps). w may be undefined (no weight).
void rmsnorm_fwd(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd);
// dx overwritten, or with accumulate_dx the gradient is added into dx (dx += ..., the bits of a separate add: the
// autograd op adds into its input's pending gradient that way); dw (if defined; weight_grad_writes) overwritten with
// the sum over rows, or added into with accumulate_dw.
void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                 const Tensor& dw, bool accumulate_dx = false, bool accumulate_dw = false);

// y = x * rnorm, rnorm = 1 / sqrt(sum(x^2) + eps) (eps inside the root, as FLA's l2norm).
void l2norm_fwd(const Tensor& x, double eps, const Tensor& y, const Tensor& rnorm);
void l2norm_bwd(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx);

void softmax_fwd(const Tensor& x, const Tensor& y);
void softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx);
void log_softmax_fwd(const Tensor& x, const Tensor& y);
void log_softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx);

// Fused cross-entropy over logits [N, V] and targets [N] (i32/i64). Writes losses[N] (0 where target ==
// ignore_index), lse[N] (log-sum-exp of each row) and valid[N] (1 or 0), all f32 (f64 for f64 logits).
// No probability tensor is formed.
void cross_entropy_fwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& losses,
                       const Tensor& lse, const Tensor& valid);
// dlogits[i, :] = (softmax(logits[i]) - onehot(target_i)) * grad_scale[0] for valid rows, 0 for ignored.
// grad_scale is a 1-element device tensor (dL/dmean / count, computed on the device: no host sync).
// dlogits may alias logits (the gradient overwrites the logits buffer).
void cross_entropy_bwd(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_scale,
                       int64_t ignore_index, const Tensor& dlogits);

// Causal depthwise conv, kernel W = w.size(1) (4): y[b,t,c] = act(sum_j w[c,j] x[b, t-W+1+j, c]), zero
// padding before t = 0. x, y [B, T, C]; w [C, W]; act = SiLU when apply_silu, else identity.
void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y);
// dx overwritten; dw (weight_grad_writes) overwritten, or added into with accumulate_dw.
void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,
                    const Tensor& dw, bool accumulate_dw = false);

// The Gated DeltaNet front end's q and k in one op: the short conv above, then l2norm (eps inside the root) over each
// group of `group` consecutive channels: y [B, T, C], rnorm [B, T, C / group] (stat dtype). The bits of
// short_conv_fwd into a temporary followed by l2norm_fwd on its [B, T, C / group, group] view: the CPU composes
// the two; the CUDA kernel fuses them where it takes the tensors (bf16, 16-byte aligned, group a multiple of 8
// dividing 256 and C) and composes them elsewhere.
void short_conv_l2norm_fwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, double eps,
                           const Tensor& y, const Tensor& rnorm);
// dx, dw overwritten (dw may be undefined; added into with accumulate_dw): short_conv_bwd(x, w, apply_silu,
// l2norm_bwd(y, rnorm, dy)), the same bits.
void short_conv_l2norm_bwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, const Tensor& y,
                           const Tensor& rnorm, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                           bool accumulate_dw = false);

// y = silu(gate) * up, all the same shape.
void swiglu_fwd(const Tensor& gate, const Tensor& up, const Tensor& y);
void swiglu_bwd(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup);

#define NATSL_NN_DECLS                                                                                        \
  void embedding_fwd(const Tensor& weight, const Tensor& ids, const Tensor& out);                             \
  void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight);                           \
  void rmsnorm_fwd(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd);        \
  void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, const Tensor& dx,  \
                   const Tensor& dw, bool accumulate_dx = false, bool accumulate_dw = false);                 \
  void l2norm_fwd(const Tensor& x, double eps, const Tensor& y, const Tensor& rnorm);                         \
  void l2norm_bwd(const Tensor& y, const Tensor& rnorm, const Tensor& dy, const Tensor& dx);                  \
  void softmax_fwd(const Tensor& x, const Tensor& y);                                                         \
  void softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx);                                      \
  void log_softmax_fwd(const Tensor& x, const Tensor& y);                                                     \
  void log_softmax_bwd(const Tensor& y, const Tensor& dy, const Tensor& dx);                                  \
  void cross_entropy_fwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index,                   \
                         const Tensor& losses, const Tensor& lse, const Tensor& valid);                       \
  void cross_entropy_bwd(const Tensor& logits, const Tensor& targets, const Tensor& lse,                      \
                         const Tensor& grad_scale, int64_t ignore_index, const Tensor& dlogits);              \
  void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y);                    \
  void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,  \
                      const Tensor& dw, bool accumulate_dw = false);                                          \
  void swiglu_fwd(const Tensor& gate, const Tensor& up, const Tensor& y);                                     \
  void swiglu_bwd(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate,                \
                  const Tensor& dup);
namespace cpu { NATSL_NN_DECLS }
namespace cuda { NATSL_NN_DECLS }
namespace cuda {
// The fused short conv + l2norm kernels (kernels/cuda/short_conv.cu): false, with nothing done, where they do not
// take the tensors (the dispatcher then composes the two ops).
bool short_conv_l2norm_fwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, double eps,
                           const Tensor& y, const Tensor& rnorm);
bool short_conv_l2norm_bwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, const Tensor& y,
                           const Tensor& rnorm, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                           bool accumulate_dw = false);
}  // namespace cuda
#undef NATSL_NN_DECLS

}  // namespace natsl::kernels
