#pragma once
// Chunk-selected causal softmax attention: the softmax branch of NAtS-L (natsl-layer.md §3.3, router
// gradient §4.2; algorithm, index and kernels in docs/attention-kernels.md §1-§8). With every chunk selected
// it is plain causal attention (the Transformer++ baseline uses it so).
//
// Per batch b and softmax head a, with router head r = a / G (G = Ha / Hr heads share a router head) and
// chunks of C tokens (c(i) = i / C; the last chunk may be partial), query i sees
//   - keys j <= i of its own chunk, always;
//   - every key of each earlier chunk c < c(i) that router head r selected for softmax.
//   z_ij = scale q_i . k_j,  P_ij = mu_c(j) e^{z_ij} / sum_j' mu_c(j') e^{z_ij'},  o_i = sum_j P_ij v_j,
//   lse_i = log sum_j mu_c(j) e^{z_ij}
// mu = 1 for own-chunk keys and, without the optional `chunk_mult`, for selected chunks too. chunk_mult
// [B, NC, Hr] (CPU only) is the continuous mask of §4.2: it multiplies the weights of a selected earlier
// chunk, so that the router gradient can be checked against finite differences.
//
// Backward (FlashAttention-2 quantities; dS is the derivative with respect to z):
//   D_i = dO_i . o_i,  dS_ij = P_ij (dO_i . v_j - D_i)
//   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dO_i
//   dm[b, c, r] = sum_{a of r} sum_{i : c(i) > c} sum_{j in c} dS^a_ij  for a selected chunk c, 0 otherwise
//                (= mu_c dL/dmu_c: the derivative of the loss with respect to the chunk's mask at mu = 1)
// drop_own_chunk_grad leaves the own-chunk pairs (c(j) = c(i)) out of dq, dk and dv, as the reference's
// released backward does (natsl-layer.md §4.1); P still uses the full lse, so the other terms are exact.
//
// Layouts (row-major, contiguous):
//   q, k          [B, T, Ha, Dk]   data dtype D (f64, f32, bf16)
//   v, o, dout    [B, T, Ha, Dv]   D
//   lse           [B, T, Ha]       S = f64 for f64 data, else f32 (natural log)
//   dm, chunk_mult [B, NC, Hr]     S  (NC = ceil(T / C))
//
// Selection index: built once per layer call from the router's softmax mask and shared by the forward and
// the backward (the CUDA kernels use the same format):
//   chunks [B, Hr, NC]     i32: the selected chunk ids of (b, r) in ascending order, padded with NC
//   prefix [B, Hr, NC + 1] i32: prefix[b, r, c] = number of selected chunks < c; prefix[b, r, NC] = total
// Query chunk qc visits itself (causal) and chunks[b, r, 0 : prefix[b, r, qc]] (unmasked); chunk c is
// selected iff prefix[c + 1] > prefix[c], and then every query chunk > c sees all of it.
#include <cstdint>

#include "core/tensor.h"
#include "kernels/chunk.h"

namespace natsl::kernels {

struct SparseAttentionIndex {
  Tensor chunks;  // i32 [B, Hr, NC]
  Tensor prefix;  // i32 [B, Hr, NC + 1]
  int64_t chunk_size = kChunk;
  int64_t batch() const { return chunks.size(0); }
  int64_t router_heads() const { return chunks.size(1); }
  int64_t num_chunks() const { return chunks.size(2); }
};

// Allocates and fills the index from a softmax mask [B, NC, Hr] (any floating dtype; > 0.5 = selected), on
// the mask's device.
SparseAttentionIndex sparse_attention_index(const Tensor& softmax_mask, int64_t chunk_size);
// Every chunk selected (plain causal attention), or none (own chunk only), for B x Hr x NC.
SparseAttentionIndex sparse_attention_index_all(int64_t B, int64_t Hr, int64_t NC, int64_t chunk_size, bool selected,
                                                Device d = kCPU);

struct SparseAttentionArgs {
  double scale = 0.125;
  bool drop_own_chunk_grad = false;  // reproduce the reference's released backward (§4.1)
  Tensor chunk_mult;                 // optional continuous mask [B, NC, Hr] S (CPU only; tests)
};

// Writes o and lse.
void sparse_attention_fwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse);

// Writes dq, dk, dv (overwritten) and, if defined, dm (overwritten, router gradient of the softmax side).
void sparse_attention_bwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dm);

#define NATSL_SPARSE_ATTENTION_DECLS                                                                          \
  void sparse_attention_index(const Tensor& softmax_mask, const SparseAttentionIndex& index);                 \
  void sparse_attention_fwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index,               \
                            const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,               \
                            const Tensor& lse);                                                               \
  void sparse_attention_bwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index,               \
                            const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,               \
                            const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk,        \
                            const Tensor& dv, const Tensor& dm);
namespace cpu { NATSL_SPARSE_ATTENTION_DECLS }
namespace cuda { NATSL_SPARSE_ATTENTION_DECLS }
#undef NATSL_SPARSE_ATTENTION_DECLS

}  // namespace natsl::kernels
