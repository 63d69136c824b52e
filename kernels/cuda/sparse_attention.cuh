#pragma once
// Internal interface of the CUDA chunk-selected attention (kernels/sparse_attention.h): the problem
// geometry handed to every kernel, and the launchers each .cu file provides.
//   sparse_attention.cu       entry points, selection index, backward pre/post-processing, path choice
//   sparse_attention_fwd.cu   tensor-core forward (bf16, chunk 64), mma.sync
//   sparse_attention_fwd_wgmma.sm90a.cu  the same forward on Hopper: wgmma, TMA, the default on sm_90
//   sparse_attention_bwd.cu   tensor-core backward (bf16, chunk 64)
//   sparse_attention_simt.cu  plain f32-arithmetic forward/backward for f32 data and other chunk sizes
#include <cuda_runtime.h>

#include <cstdint>

namespace natsl::kernels::cuda::sparse_attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Sizes and pointers of one call. Strides follow the contiguous layouts of sparse_attention.h:
// q/k rows are Ha * Dk apart, v/o/dout rows Ha * Dv.
struct Geometry {
  int B, T, Ha, Hr, G, Dk, Dv, NC, C;
  float scale;
  const int32_t* chunks;  // [B, Hr, NC]
  const int32_t* prefix;  // [B, Hr, NC + 1]
};

// Inputs/outputs as raw pointers of the storage type (float or bf16: `void` here, cast by the kernels).
struct FwdPtrs {
  const void *q, *k, *v;
  void* o;
  float* lse;
};
struct BwdPtrs {
  const void *q, *k, *v, *dout;
  const float* lse;
  const float* delta;  // D_i = dO_i . o_i  [B, T, Ha]
  float* dq_acc;       // f32 [B, T, Ha, Dk], zeroed; tensor-core path only (atomics)
  int* dq_turn;        // i32 [B, Ha, NC], zeroed, or null: add into dq_acc in key-chunk order (deterministic)
  void *dq, *dk, *dv;
  float* dm_part;  // per-head router-gradient parts, or null (no dm): tensor cores [B, NC, Ha] (one per key
                   // chunk), SIMT [B, T, Ha] (one per key token); reduced into dm [B, NC, Hr] afterwards
  bool drop_own;
};

// Where a tensor-core CTA and its thread work: blockIdx.x = slot * per_chunk + b * Ha + a (per_chunk = Ha * B;
// head a of batch b, router head r = a / G; the kernel maps slot to its chunk); the thread's warp and lane and
// its mma fragment coordinates gq = lane / 4, tq = lane % 4; the row strides of q/k (ldqk) and v/o (ldv) and
// the offsets of the head's token 0 in them (head_qk, head_v).
struct TcPlace {
  int a, b, r, warp, lane, gq, tq;
  int64_t ldqk, ldv, head_qk, head_v;
};
template <int DK, int DV>
__device__ __forceinline__ TcPlace tc_place(const Geometry& g, int per_chunk) {
  const int a = (int(blockIdx.x) % per_chunk) % g.Ha, b = (int(blockIdx.x) % per_chunk) / g.Ha;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  return {a, b, a / g.G, warp, lane, lane >> 2, lane & 3, int64_t(g.Ha) * DK, int64_t(g.Ha) * DV,
          (int64_t(b) * g.T * g.Ha + a) * DK, (int64_t(b) * g.T * g.Ha + a) * DV};
}

// Tensor-core path: bf16 data, C = 64, Dk in {64, 128}, Dv in {64, 128, 256}.
bool tc_supported(const Geometry& g);
// rows_per_warp: 16 or 32 query rows per warp (0 = the default for the head dims; benchmarks try both).
void tc_fwd(const Geometry& g, const FwdPtrs& p, cudaStream_t s, int rows_per_warp = 0);
void tc_bwd(const Geometry& g, const BwdPtrs& p, cudaStream_t s);  // writes dk, dv, dm_part, adds into dq_acc

// Hopper path (sparse_attention_fwd_wgmma.sm90a.cu, built for sm_90a): the forward with warpgroup MMA, TMA
// and mbarrier stages, for what tc_supported takes with Dv <= 128, on a device of compute capability 9.0; it
// gives tc_fwd's bits. tc_fwd stays the forward elsewhere and the reference the tests compare it with.
bool wgmma_fwd_supported(const Geometry& g, int device);
void wgmma_fwd(const Geometry& g, const FwdPtrs& p, cudaStream_t s);

// SIMT path: any chunk size, Dk <= 128, Dv <= 256; f32 or bf16 data (f32 arithmetic).
bool simt_supported(const Geometry& g);
void simt_fwd(const Geometry& g, const FwdPtrs& p, bool bf16, cudaStream_t s);
void simt_bwd(const Geometry& g, const BwdPtrs& p, bool bf16, cudaStream_t s);  // writes dq, dk, dv, dm_part

}  // namespace natsl::kernels::cuda::sparse_attn
