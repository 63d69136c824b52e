#pragma once
// Gated DeltaNet (GDN) kernels: the gated delta rule, forward and backward, as the chunked algorithm of
// docs/gdn-algorithm.md §3-§4 (FLA semantics), plus the token recurrence that serves as the
// oracle. An optional per-(sequence, chunk, head) state-write mask m turns it into the GDN branch of NAtS-L
// (docs/natsl-layer.md §3.4, §4.2).
//
// Per sequence and v head, with state h in R^{K x V} (h = S^T of the paper), per token t:
//   h   = exp(g_t) h                     decay first
//   u_t = beta_t (v_t - h^T k_t)          delta against the decayed state
//   h   = h + k_t u_t^T                   rank-1 write
//   o_t = scale h^T q_t                   read after the write
// q/k head of v head hv is hv / (HV / H) (grouped values). The kernels do not L2-normalise q and k and do not
// compute g or beta from projections: the caller (layer) does those elementwise front ends.
//
// State-write mask (NAtS-L). Chunks are the 64-token blocks of each sequence (the last one may be partial).
// With H_c the carried state entering chunk c and W_c what the chunk would write:
//   every token of chunk c runs the rule above starting from H_c (so its output is the normal GDN output);
//   H_{c+1} = exp(gamma_L) H_c + m_c W_c,   W_c = sum_{i in c} exp(gamma_L - gamma_i) k_i v_new_i^T
// where gamma is the chunk-local cumsum of g and L the chunk's last token: m = 1 is plain GDN, m = 0 lets
// the state decay through the chunk without committing its writes. A continuous m in [0, 1] is allowed (the
// router gradient dm_c = <dL/dH_{c+1}, W_c> is checked against finite differences of it).
//
// Layouts (row-major, contiguous):
//   q, k    [B, T, H, K]      data dtype D (f64, f32 or bf16)
//   v, o    [B, T, HV, V]     D
//   g, beta [B, T, HV]        S = the state dtype: f64 when D is f64, f32 otherwise
//   h0, ht  [N, HV, K, V]     S; N sequences: B, or cu_seqlens.size() - 1 when packed
//   mask    [NC, HV]          S; NC = total number of chunks, sequence after sequence (gdn_sequences)
// Packed sequences: cu_seqlens holds N+1 token offsets (0 = first, last = T) with B = 1; the state resets
// (to that sequence's h0) at every start, and chunks never straddle two sequences.
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/chunk.h"

namespace natsl::kernels {

inline constexpr int64_t kGdnChunk = kChunk;

struct GdnArgs {
  double scale = 1.0;                // usually K^-1/2
  std::vector<int64_t> cu_seqlens;   // empty, or N+1 host-side token offsets into T (B must be 1)
};

// Sizes of one call, derived from q, v and the args (GdnShape::of checks the offsets).
struct GdnShape {
  int64_t B = 0, T = 0, H = 0, HV = 0, K = 0, V = 0;
  int64_t N = 0;   // sequences
  int64_t NC = 0;  // chunks over all sequences
  static GdnShape of(const Tensor& q, const Tensor& v, const GdnArgs& args);
};

// One sequence: batch row `batch`, tokens [start, start + len) of it, chunks [first_chunk, first_chunk +
// chunks()) in the global chunk numbering used by mask / dmask.
struct GdnSequence {
  int64_t batch = 0, start = 0, len = 0, first_chunk = 0;
  int64_t chunks() const { return (len + kGdnChunk - 1) / kGdnChunk; }
};
std::vector<GdnSequence> gdn_sequences(const GdnShape& s, const GdnArgs& args);

// Why the CUDA kernels cannot run heads of K x V in dtype dt ("" when they can): they take K in {64, 128, 192,
// 256} and V a multiple of 64 (f32 also needs K <= 128: shared memory). The CPU path takes any size. Checked by
// the kernels and, before a run starts, by the trainer (one error naming model.head_dim instead of a failure at
// the first forward).
std::string gdn_cuda_shape_problem(int64_t K, int64_t V, DType dt);

struct GdnInputs {
  Tensor q, k;   // L2-normalised by the caller
  Tensor v;
  Tensor g;      // log decay per token (<= 0 in the layer; any value is computed correctly)
  Tensor beta;
  Tensor h0;     // optional: undefined = zero initial state
  Tensor mask;   // optional: undefined = plain GDN (m = 1 everywhere)
};

// What the chunked forward saves for the backward, besides the inputs (as FLA: w, u, the chunk states and
// v_new are recomputed by the backward).
//   g_cumsum [B, T, HV] S: gamma, the inclusive cumsum of g restarting at every chunk start.
//   a_inv    [B, T, HV, 64] D: row t holds row (t - chunk start) of T = (I + A)^-1 of its chunk, with
//            A_ij = beta_i (k_i . k_j) exp(gamma_i - gamma_j) for i > j; columns past the row are zero.
struct GdnSaved {
  Tensor g_cumsum, a_inv;
};

// Gradients (all overwritten, same layouts and dtypes as the inputs they belong to). dq/dk are summed over
// the v heads sharing a q/k head. Any of dh0 / dmask may be undefined (not computed); dmask needs a mask.
// dh0 is valid with or without an h0 (undefined h0 = a zero initial state).
// dmask[c, hv] = dL/dm_c = <dL/dH_{c+1}, W_c> (natsl-layer.md §4.2, GDN side) for EVERY chunk, whatever its
// m; the reference layer keeps it only for GDN-labelled chunks and discards the last chunk's: the layer,
// not this kernel, zeroes those entries.
struct GdnGrads {
  Tensor dq, dk, dv, dg, dbeta, dh0, dmask;
};

// The oracle: token-by-token recurrence (with the mask: the chunk loop of natsl-layer.md §3.4, each chunk
// started from the carried state H and committed as H <- m S + (1 - m) exp(sum of the chunk's g) H, S the
// state at the chunk's end). Writes o and, if defined, ht. With T = 1 and h0 it is one decoding step.
void gdn_recurrent_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht);

// Chunked forward. Writes o; ht if defined; saved.g_cumsum / saved.a_inv if defined (both are needed by
// gdn_chunk_bwd; inference may leave them undefined).
void gdn_chunk_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht,
                   const GdnSaved& saved);

// Chunked backward. dout [B, T, HV, V] D is dL/do; dht (optional, [N, HV, K, V] S) is dL/d(final state).
// What an autograd op must keep from the forward: in.q, in.k, in.v, in.beta, in.h0, in.mask (the tensors
// the forward read; in.g only for its shape, the backward reads saved.g_cumsum instead) and both saved
// tensors. w, u, the chunk states h_n and v_new are recomputed (one more forward state pass).
void gdn_chunk_bwd(const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout,
                   const Tensor& dht, const GdnGrads& grads);

namespace cpu {
void gdn_recurrent_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht);
void gdn_chunk_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht,
                   const GdnSaved& saved);
void gdn_chunk_bwd(const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout,
                   const Tensor& dht, const GdnGrads& grads);
}  // namespace cpu

// The CUDA versions take an optional kernel plan (kernels/cuda/gdn/plan.h; nullptr: the default layouts
// chosen from the shapes and the device). Tests and benchmarks pass one to reach the other layouts.
namespace cuda {
struct GdnPlan;
void gdn_recurrent_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht);
void gdn_chunk_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht,
                   const GdnSaved& saved, const GdnPlan* plan = nullptr);
void gdn_chunk_bwd(const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout,
                   const Tensor& dht, const GdnGrads& grads, const GdnPlan* plan = nullptr);
}  // namespace cuda

}  // namespace natsl::kernels
