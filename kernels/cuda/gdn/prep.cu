// Chunk-parallel first stage of the CUDA GDN forward and backward (gdn-algorithm.md §3 steps 0-2, and the
// intra-chunk score matrix of step 4), one CTA per (chunk, v head). Kernels: prep_kernel (GdnPrepKernel::generic),
// prep2_kernel (the default: all in one, Q and V streamed) and prep3 (=3: prep2 solving T alone in the forward,
// then prep3_kernel with every load in flight at once):
//   gam = chunk-local cumsum of g;  A_ij = beta_i (k_i . k_j) exp(gam_i - gam_j) (i > j);  T = (I + A)^-1
//   w = T diag(beta e) K,  u = T diag(beta) V,  p = scale * M o Gamma o (Q K^T)
// The backward reruns it with T read back from a_inv (FLA's recompute of w and u).
#include <algorithm>
#include <type_traits>

#include "kernels/cuda/gdn/call.cuh"
#include "kernels/cuda/gdn/store.cuh"

namespace natsl::kernels::cuda::gdn {
namespace {

constexpr int kSeqsPerLaunch = 512;
struct SeqBatch {
  int count, first;  // sequences [first, first + count)
  int row0[kSeqsPerLaunch], len[kSeqsPerLaunch], chunk0[kSeqsPerLaunch];
};

__global__ void tables_kernel(SeqBatch b, ChunkInfo* chunks, SeqInfo* seqs) {
  const int i = blockIdx.x;
  if (i >= b.count) return;
  const int nch = (b.len[i] + kC - 1) / kC;
  if (threadIdx.x == 0) seqs[b.first + i] = SeqInfo{b.chunk0[i], nch, b.row0[i], b.len[i]};
  for (int c = threadIdx.x; c < nch; c += blockDim.x)
    chunks[b.chunk0[i] + c] = ChunkInfo{b.row0[i] + kC * c, min(kC, b.len[i] - kC * c), b.first + i, 0};
}

template <class D>
struct PrepParams {
  const D *q, *k, *v;
  const float *g, *beta;
  D* a_inv;           // [B*T, HV, 64]: written (forward, if store_saved) or read (recompute)
  float* g_cumsum;    // [B*T, HV] or null
  float* gam;         // [NC, HV, 64]
  D *w, *u, *p;
  const ChunkInfo* chunks;
  int H, HV, K, V;
  float scale;
  bool recompute;
  bool staged;  // prep2: bf16 w, u, p written through a shared staging tile (16-byte stores)
};

// What a prep CTA (chunk blockIdx.x, v head blockIdx.y) works on: its chunk, the first rows of its q, k, v
// and the index of its (chunk, head) tiles in the scratch outputs.
template <class D>
struct PrepCta {
  int c, hv, h, len;
  ChunkInfo ci;
  int64_t qk_ld, v_ld, tile_id;
  const D *qc, *kc, *vc;
  __device__ __forceinline__ explicit PrepCta(const PrepParams<D>& p)
      : c(blockIdx.x), hv(blockIdx.y), h(hv / (p.HV / p.H)), len(0), ci(p.chunks[c]) {
    len = ci.len;
    qk_ld = int64_t(p.H) * p.K;
    v_ld = int64_t(p.HV) * p.V;
    tile_id = int64_t(c) * p.HV + hv;
    qc = p.q + int64_t(ci.row0) * qk_ld + int64_t(h) * p.K;
    kc = p.k + int64_t(ci.row0) * qk_ld + int64_t(h) * p.K;
    vc = p.v + int64_t(ci.row0) * v_ld + int64_t(hv) * p.V;
  }
};

// The chunk's gates into shared memory: gam = the cumsum of g, bet = beta (0 past the chunk's end); gam also to
// p.gam (and p.g_cumsum when set). Ends with the barrier that makes both visible; the global writes of gam by
// threads 0..63 come after it.
template <class D>
__device__ __forceinline__ void prep_gates(const PrepParams<D>& p, const PrepCta<D>& t, float* gam, float* bet) {
  const int tid = threadIdx.x;
  chunk_cumsum(gam, p.g + int64_t(t.ci.row0) * p.HV + t.hv, p.HV, t.len);
  if (tid < kC) bet[tid] = tid < t.len ? p.beta[int64_t(t.ci.row0 + tid) * p.HV + t.hv] : 0.f;
  __syncthreads();
  if (tid < kC) {
    p.gam[t.tile_id * kC + tid] = gam[tid];
    if (p.g_cumsum && tid < t.len) p.g_cumsum[int64_t(t.ci.row0 + tid) * p.HV + t.hv] = gam[tid];
  }
}

// T (the f32 64x64 matrix at Ts, row pitch fld) rounded to D in place, and to a_inv ([B*T, HV, 64], rows < len)
// when it is set: 16 bytes a thread per access (the backward reads the stored D copy, so the forward uses the
// same values).
template <class D, int fld>
__device__ __forceinline__ void round_and_store_t(float* Ts, D* a_inv, const ChunkInfo& ci, int HV, int hv) {
  constexpr int epp = 16 / int(sizeof(D)), per_row = kC / epp;
  for (int idx = threadIdx.x; idx < kC * per_row; idx += kThreads) {
    const int i = idx / per_row, j0 = (idx % per_row) * epp;
    alignas(16) D t[epp];
#pragma unroll
    for (int e = 0; e < epp; ++e) {
      t[e] = cvt<D>(Ts[i * fld + j0 + e]);
      Ts[i * fld + j0 + e] = f32(t[e]);
    }
    if (a_inv && i < ci.len)
      *reinterpret_cast<uint4*>(a_inv + (int64_t(ci.row0 + i) * HV + hv) * kC + j0) = *reinterpret_cast<const uint4*>(t);
  }
}
// T read back from a_inv into Ts (f32, rows >= len zero), 16 bytes a thread per load.
template <class D, int fld>
__device__ __forceinline__ void load_t(float* Ts, const D* a_inv, const ChunkInfo& ci, int HV, int hv) {
  constexpr int epp = 16 / int(sizeof(D)), per_row = kC / epp;
  for (int idx = threadIdx.x; idx < kC * per_row; idx += kThreads) {
    const int i = idx / per_row, j0 = (idx % per_row) * epp;
    alignas(16) D t[epp];
    if (i < ci.len)
      *reinterpret_cast<uint4*>(t) = *reinterpret_cast<const uint4*>(a_inv + (int64_t(ci.row0 + i) * HV + hv) * kC + j0);
#pragma unroll
    for (int e = 0; e < epp; ++e) Ts[i * fld + j0 + e] = i < ci.len ? f32(t[e]) : 0.f;
  }
}

// A = StrictLower(diag(beta) K K^T o Gamma), Gamma_ij = exp(gam_i - gam_j), from the K K^T accumulator into As
// (f32, row pitch FLD; rows >= len zero).
template <int FLD>
__device__ __forceinline__ void store_a(float* As, const Acc& kk, const Frag& f, const float* bet, const float* gam,
                                        int len) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = f.row(e), j = f.col(nt, e);
      As[i * FLD + j] = (i > j && i < len) ? bet[i] * kk[nt][e] * __expf(gam[i] - gam[j]) : 0.f;
    }
}

template <class D>
__global__ void __launch_bounds__(kThreads) prep_kernel(PrepParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int ld = kLd<D>;
  constexpr int fld = 65;  // f32 64x64 matrices for the solve
  D* tA = reinterpret_cast<D*>(smem_raw);
  D* tB = tA + kC * ld;
  D* tw = tB + kC * ld;  // T diag(beta e)
  D* tu = tw + kC * ld;  // T diag(beta)
  float* As = reinterpret_cast<float*>(tu + kC * ld);
  float* Ts = As + kC * fld;
  float* gam = Ts + kC * fld;
  float* bet = gam + kC;

  const PrepCta<D> cta(p);
  const auto& [c, hv, h, len, ci, qk_ld, v_ld, tile_id, qc, kc, vc] = cta;

  prep_gates(p, cta, gam, bet);

  const Frag f;
  Acc kk, qk;
  zero(kk);
  zero(qk);
  for (int kt = 0; kt < p.K / kC; ++kt) {
    load_tile<D>(tA, kc + kt * kC, qk_ld, len);
    load_tile<D>(tB, qc + kt * kC, qk_ld, len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (!p.recompute) tile_mma<false, true>(kk, tA, tA);
    tile_mma<false, true>(qk, tB, tA);
    __syncthreads();
  }
  // Intra-chunk scores (select before exp: the upper triangle's exponent can overflow).
  acc_to_global<D>(qk, f, p.p + tile_id * kC * kC, kC, kC, [&](int i, int j, float x) {
    return (i >= j && i < len) ? p.scale * x * __expf(gam[i] - gam[j]) : 0.f;
  });

  if (!p.recompute) {
    store_a<fld>(As, kk, f, bet, gam, len);
    for (int idx = threadIdx.x; idx < kC * kC; idx += kThreads) {
      const int i = idx / kC, j = idx % kC;
      Ts[i * fld + j] = i == j ? 1.f : 0.f;
    }
    __syncthreads();
    // Forward substitution, one column per 4 lanes: T_ij = -sum_{j <= m < i} A_im T_mj for i > j.
    {
      const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
      const int j = 8 * w + (l >> 2), s = l & 3;
      for (int i = 1; i < kC; ++i) {
        float part = 0.f;
        if (i > j)
          for (int m = j + s; m < i; m += 4) part = fmaf(As[i * fld + m], Ts[m * fld + j], part);
        part += __shfl_xor_sync(0xffffffffu, part, 1);
        part += __shfl_xor_sync(0xffffffffu, part, 2);
        if (i > j && s == 0) Ts[i * fld + j] = -part;
        __syncwarp();
      }
    }
    __syncthreads();
    round_and_store_t<D, fld>(Ts, p.a_inv, ci, p.HV, hv);
  } else {
    load_t<D, fld>(Ts, p.a_inv, ci, p.HV, hv);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kC * kC; idx += kThreads) {
    const int i = idx / kC, j = idx % kC;
    const float t = Ts[i * fld + j];
    tw[i * ld + j] = cvt<D>(t * bet[j] * __expf(gam[j]));
    tu[i * ld + j] = cvt<D>(t * bet[j]);
  }
  __syncthreads();

  for (int kt = 0; kt < p.K / kC; ++kt) {
    load_tile<D>(tA, kc + kt * kC, qk_ld, len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    Acc a;
    zero(a);
    tile_mma<false, false>(a, tw, tA);
    acc_to_global<D>(a, f, p.w + tile_id * kC * p.K + kt * kC, p.K, kC);
    __syncthreads();
  }
  for (int vt = 0; vt < p.V / kC; ++vt) {
    load_tile<D>(tA, vc + vt * kC, v_ld, len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    Acc a;
    zero(a);
    tile_mma<false, false>(a, tu, tA);
    acc_to_global<D>(a, f, p.u + tile_id * kC * p.V + vt * kC, p.V, kC);
    __syncthreads();
  }
}

template <class D>
constexpr int prep_smem() {
  return 4 * kTileBytes<D> + 2 * kC * 65 * 4 + 2 * kC * 4;
}

// The same stage with its latency hidden (the default; GdnPrepKernel::generic selects prep_kernel): the K tiles
// stay resident (they serve KK^T, QK^T and w), the Q tiles and then the V tiles stream through two buffers, the
// first V tiles load while T is solved, and T = (I + A)^-1 is solved blockwise: the four 16x16 diagonal blocks
// by forward substitution in registers (one thread per column), then each 16-row block row I at once,
//   T_IJ = -T_II sum_{J <= M < I} A_IM T_MJ   (J < I),
// in f32 like the row-by-row substitution it replaces. About 74 KB of shared memory (K = 128): 3 CTAs per SM.
template <class D, int KT, bool SOLVE_ONLY = false>
constexpr int prep2_smem() {
  static_assert(kC * 65 * 4 <= 2 * kTileBytes<D>, "A must fit in the tw, tu tiles it shares");
  return (KT + (SOLVE_ONLY ? 2 : 4)) * kTileBytes<D> + kC * 65 * 4 + 2 * kC * 4 + 16 * 48 * 4;
}

// Block row I of T (rows W .. W + 15, W = 16 I; the blocks left of and on its diagonal solved):
//   S = A[W:W+16, :W] T[:W, :W],  T[W:W+16, :W] = -T_II S
// W a compile-time constant, so every loop is unrolled and its shared-memory loads are issued ahead of the
// chain of adds (with run-time trip counts the solve was one load latency per add: ~0.15 ms of prep at B8
// T4096 on the H200). The sums run over all of [0, W) and [0, 16): the extra terms are products with the zeros
// of T above its diagonal, so every sum is the one over the nonzero terms, in the same order, bit for bit.
template <int W>
__device__ __forceinline__ void solve_block_row(const float* As, float* Ts, float* Sb, int tid) {
  constexpr int fld = 65;
  static_assert((16 * W) % kThreads == 0, "whole rounds of the CTA's threads");
#pragma unroll
  for (int it = 0; it < 16 * W / kThreads; ++it) {
    const int idx = tid + it * kThreads, r = idx / W, cc = idx % W;
    float acc = 0.f;
#pragma unroll
    for (int m = 0; m < W; ++m) acc = fmaf(As[(W + r) * fld + m], Ts[m * fld + cc], acc);
    Sb[r * 48 + cc] = acc;
  }
  __syncthreads();
#pragma unroll
  for (int it = 0; it < 16 * W / kThreads; ++it) {
    const int idx = tid + it * kThreads, r = idx / W, cc = idx % W;
    float acc = 0.f;
#pragma unroll
    for (int m = 0; m < 16; ++m) acc = fmaf(Ts[(W + r) * fld + W + m], Sb[m * 48 + cc], acc);
    Ts[(W + r) * fld + cc] = -acc;
  }
  __syncthreads();
}

// SOLVE_ONLY (the forward ahead of prep3): cumsum, KK^T, the solve and a_inv only (no Q, V, w, u, p).
template <class D, int KT, bool SOLVE_ONLY = false>
__global__ void __launch_bounds__(kThreads) prep2_kernel(PrepParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int ld = kLd<D>;
  constexpr int TE = kC * ld;
  constexpr int fld = 65;
  D* Ks = reinterpret_cast<D*>(smem_raw);  // KT resident K tiles
  D* X = Ks + KT * TE;                     // two streaming buffers (Q, then V); none when SOLVE_ONLY
  D* tw = X + (SOLVE_ONLY ? 0 : 2) * TE;   // T diag(beta e)
  D* tu = tw + TE;                         // T diag(beta)
  float* As = reinterpret_cast<float*>(tw);  // A (f32) lives in tw, tu until T is solved
  float* Ts = reinterpret_cast<float*>(tu + TE);
  float* gam = Ts + kC * fld;
  float* bet = gam + kC;
  float* Sb = bet + kC;  // 16 x 48 partial sums of the block solve
  // The f32 path (exact checks) keeps direct stores: its staging tile would not fit in Ts.
  constexpr bool kStaged = kTileBytes<D> <= kC * fld * 4;

  const PrepCta<D> cta(p);
  const auto& [c, hv, h, len, ci, qk_ld, v_ld, tile_id, qc, kc, vc] = cta;
  const int tid = threadIdx.x;
  const int VT = p.V / kC;

  // Group 0: all K tiles and Q tile 0; group 1: Q tile 1.
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) load_tile<D>(Ks + kt * TE, kc + kt * kC, qk_ld, len);
  if (!SOLVE_ONLY) load_tile<D>(X, qc, qk_ld, len);
  cp_async_commit();
  if (KT > 1) {
    if (!SOLVE_ONLY) load_tile<D>(X + TE, qc + kC, qk_ld, len);
    cp_async_commit();
  }

  prep_gates(p, cta, gam, bet);

  const Frag f;
  Acc kk, qk;
  zero(kk);
  zero(qk);
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    if (kt + 1 < KT) cp_async_wait<1>();
    else cp_async_wait<0>();
    __syncthreads();
    if (!p.recompute) tile_mma<false, true>(kk, Ks + kt * TE, Ks + kt * TE);
    if (!SOLVE_ONLY) tile_mma<false, true>(qk, X + (kt & 1) * TE, Ks + kt * TE);
    __syncthreads();
    if (!SOLVE_ONLY && kt + 2 < KT) {
      load_tile<D>(X + (kt & 1) * TE, qc + (kt + 2) * kC, qk_ld, len);
      cp_async_commit();
    }
  }
  // The first V tiles load while T is solved.
  for (int vt = 0; !SOLVE_ONLY && vt < 2 && vt < VT; ++vt) {
    load_tile<D>(X + vt * TE, vc + vt * kC, v_ld, len);
    cp_async_commit();
  }
  // Intra-chunk scores (select before exp: the upper triangle's exponent can overflow).
  if (!SOLVE_ONLY) {
    auto score = [&](int i, int j, float x) { return (i >= j && i < len) ? p.scale * x * __expf(gam[i] - gam[j]) : 0.f; };
    // Staged through Ts, which the solve only writes after the store's closing barrier.
    if (kStaged && p.staged) acc_to_global_staged<D>(qk, f, reinterpret_cast<D*>(Ts), p.p + tile_id * kC * kC, kC, kC, kThreads, score);
    else acc_to_global<D>(qk, f, p.p + tile_id * kC * kC, kC, kC, score);
  }

  if (!p.recompute) {
    store_a<fld>(As, kk, f, bet, gam, len);
    for (int idx = tid; idx < kC * kC; idx += kThreads) Ts[(idx >> 6) * fld + (idx & 63)] = 0.f;
    __syncthreads();
    if (tid < kC) {  // diagonal block b, column j: t_i = -sum_{m < i} A_im t_m below the unit diagonal
      const int b = tid >> 4, j = tid & 15;
      const float* Ab = As + 16 * b * fld + 16 * b;
      float t[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        float acc = 0.f;
#pragma unroll
        for (int m = 0; m < i; ++m) acc = fmaf(Ab[i * fld + m], t[m], acc);
        t[i] = i < j ? 0.f : (i == j ? 1.f : -acc);
      }
#pragma unroll
      for (int i = 0; i < 16; ++i) Ts[(16 * b + i) * fld + 16 * b + j] = t[i];
    }
    __syncthreads();
    solve_block_row<16>(As, Ts, Sb, tid);
    solve_block_row<32>(As, Ts, Sb, tid);
    solve_block_row<48>(As, Ts, Sb, tid);
    round_and_store_t<D, fld>(Ts, p.a_inv, ci, p.HV, hv);
    if constexpr (SOLVE_ONLY) return;
  } else {
    load_t<D, fld>(Ts, p.a_inv, ci, p.HV, hv);
  }
  __syncthreads();
  for (int idx = tid; idx < kC * kC; idx += kThreads) {
    const int i = idx / kC, j = idx % kC;
    const float t = Ts[i * fld + j];
    tw[i * ld + j] = cvt<D>(t * bet[j] * __expf(gam[j]));
    tu[i * ld + j] = cvt<D>(t * bet[j]);
  }
  __syncthreads();

  // From here Ts is free: the staging tile of the w and u stores.
  D* stage = reinterpret_cast<D*>(Ts);
  const bool staged = kStaged && p.staged;
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    Acc a;
    zero(a);
    tile_mma<false, false>(a, tw, Ks + kt * TE);
    if (staged) acc_to_global_staged<D>(a, f, stage, p.w + tile_id * kC * p.K + kt * kC, p.K, kC, kThreads);
    else acc_to_global<D>(a, f, p.w + tile_id * kC * p.K + kt * kC, p.K, kC);
  }
  for (int vt = 0; vt < VT; ++vt) {
    if (vt + 1 < VT) cp_async_wait<1>();
    else cp_async_wait<0>();
    __syncthreads();
    Acc a;
    zero(a);
    tile_mma<false, false>(a, tu, X + (vt & 1) * TE);
    if (staged) acc_to_global_staged<D>(a, f, stage, p.u + tile_id * kC * p.V + vt * kC, p.V, kC, kThreads);
    else acc_to_global<D>(a, f, p.u + tile_id * kC * p.V + vt * kC, p.V, kC);
    __syncthreads();
    if (vt + 2 < VT) {
      load_tile<D>(X + (vt & 1) * TE, vc + (vt + 2) * kC, v_ld, len);
      cp_async_commit();
    }
  }
}

// ---- prep3: every tile load issued at the start, T solved by its own kernel ----
// prep2 streams Q and then V through two buffers behind barriers, one tile's load, product and store after the
// other, and 8.3 KB of in-flight loads per step leave it at ~1.3 TB/s (H200, 3 CTAs per SM). prep3 issues the
// loads of T (a_inv), K, Q and every V tile at once (three cp.async groups), keeps them all resident (~102 KB at
// K = 128, V = 256: 2 CTAs per SM, ~165 KB in flight per SM) and then runs the products as their groups land:
//   group 0 (T, K):  tw = T diag(beta e), tu = T diag(beta);  w = tw K
//   group 1 (Q):     p = scale M o Gamma o (Q K^T)
//   group 2 (V):     u = tu V
// T comes from a_inv: the backward's recompute reads the forward's copy; the forward first runs prep2 with
// solve_only (cumsum, KK^T, the blockwise solve, a_inv) and then this kernel. The products and their rounding
// are prep2's, so w, u, p are the same bits either way.
template <class D, int KT>
int prep3_smem(int VT) {
  return (2 * KT + VT + 3) * kTileBytes<D> + 3 * kC * 4;
}

template <class D, int KT>
__global__ void __launch_bounds__(kThreads, 2) prep3_kernel(PrepParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int ld = kLd<D>;
  constexpr int TE = kC * ld;
  const int VT = p.V / kC;
  D* Ks = reinterpret_cast<D*>(smem_raw);
  D* Qs = Ks + KT * TE;
  D* Vs = Qs + KT * TE;
  D* Tt = Vs + VT * TE;  // T (D), then the staging tile of the stores
  D* tw = Tt + TE;       // T diag(beta e)
  D* tu = tw + TE;       // T diag(beta)
  float* gam = reinterpret_cast<float*>(tu + TE);
  float* bet = gam + kC;
  float* ex = bet + kC;  // e_j = exp(gam_j)

  const PrepCta<D> cta(p);
  const auto& [c, hv, h, len, ci, qk_ld, v_ld, tile_id, qc, kc, vc] = cta;
  const int tid = threadIdx.x;

  load_tile<D>(Tt, p.a_inv + (int64_t(ci.row0) * p.HV + hv) * kC, int64_t(p.HV) * kC, len);
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) load_tile<D>(Ks + kt * TE, kc + kt * kC, qk_ld, len);
  cp_async_commit();
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) load_tile<D>(Qs + kt * TE, qc + kt * kC, qk_ld, len);
  cp_async_commit();
  for (int vt = 0; vt < VT; ++vt) load_tile<D>(Vs + vt * TE, vc + vt * kC, v_ld, len);
  cp_async_commit();

  prep_gates(p, cta, gam, bet);
  if (tid < kC) ex[tid] = __expf(gam[tid]);
  cp_async_wait<2>();
  __syncthreads();
  for (int idx = tid; idx < kC * kC; idx += kThreads) {
    const int i = idx >> 6, j = idx & 63;
    const float t = f32(Tt[i * ld + j]);
    tw[i * ld + j] = cvt<D>(t * bet[j] * ex[j]);  // prep2's order of the products: the same bits
    tu[i * ld + j] = cvt<D>(t * bet[j]);
  }
  __syncthreads();

  const Frag f;
  constexpr bool kStagedOk = !std::is_same_v<D, float>;
  const bool staged = kStagedOk && p.staged;
  auto store = [&](const Acc& a, D* g, int64_t gld, auto fn) {
    if (staged) acc_to_global_staged<D>(a, f, Tt, g, gld, kC, kThreads, fn);
    else acc_to_global<D>(a, f, g, gld, kC, fn);
  };
  auto ident = [](int, int, float x) { return x; };
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    Acc a;
    zero(a);
    tile_mma<false, false>(a, tw, Ks + kt * TE);
    store(a, p.w + tile_id * kC * p.K + kt * kC, p.K, ident);
  }
  cp_async_wait<1>();
  __syncthreads();
  {
    Acc qk;
    zero(qk);
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) tile_mma<false, true>(qk, Qs + kt * TE, Ks + kt * TE);
    // select before exp: the upper triangle's exponent can overflow
    store(qk, p.p + tile_id * kC * kC, kC,
          [&](int i, int j, float x) { return (i >= j && i < len) ? p.scale * x * __expf(gam[i] - gam[j]) : 0.f; });
  }
  cp_async_wait<0>();
  __syncthreads();
  for (int vt = 0; vt < VT; ++vt) {
    Acc a;
    zero(a);
    tile_mma<false, false>(a, tu, Vs + vt * TE);
    store(a, p.u + tile_id * kC * p.V + vt * kC, p.V, ident);
  }
}

}  // namespace

int max_smem_per_block(int device) {
  int v = 0;
  NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return v;
}

int max_smem_per_sm(int device) {
  int v = 0;
  NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  return v;
}

Plan make_plan(const GdnArgs& args, const GdnInputs& in, const char* op, const GdnPlan* tune) {
  Plan pl;
  if (tune) pl.tune = *tune;
  pl.s = GdnShape::of(in.q, in.v, args);
  pl.seqs = gdn_sequences(pl.s, args);
  pl.dev = in.q.device();
  pl.stream = activate(pl.dev.index);
  const GdnShape& s = pl.s;
  const std::string problem = gdn_cuda_shape_problem(s.K, s.V, in.q.dtype());
  NATSL_CHECK(problem.empty(), op, ": ", problem);
  NATSL_CHECK(s.B * s.T * std::max(s.HV, s.H) * std::max(s.K, s.V) < (int64_t(1) << 40), op, ": too large");
  for (const Tensor* t : {&in.q, &in.k, &in.v, &in.g, &in.beta, &in.h0, &in.mask}) check_aligned(*t, "input", op);
  pl.tables = Tensor::empty({4 * (s.NC + s.N)}, DType::i32, pl.dev);
  if (s.NC == 0) return pl;
  ChunkInfo* chunks = static_cast<ChunkInfo*>(pl.tables.data_ptr());
  SeqInfo* seqs = reinterpret_cast<SeqInfo*>(chunks + s.NC);
  for (int64_t first = 0; first < s.N; first += kSeqsPerLaunch) {
    SeqBatch b{};
    b.first = int(first);
    b.count = int(std::min<int64_t>(kSeqsPerLaunch, s.N - first));
    for (int i = 0; i < b.count; ++i) {
      const GdnSequence& q = pl.seqs[size_t(first + i)];
      b.row0[i] = int(q.batch * s.T + q.start);
      b.len[i] = int(q.len);
      b.chunk0[i] = int(q.first_chunk);
    }
    tables_kernel<<<b.count, 64, 0, pl.stream>>>(b, chunks, seqs);
    NATSL_CUDA_CHECK_LAUNCH();
  }
  return pl;
}

PrepOut run_prep(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, bool recompute) {
  const GdnShape& s = pl.s;
  const DType D = in.q.dtype();
  PrepOut o;
  o.gam = Tensor::empty({s.NC, s.HV, kC}, DType::f32, pl.dev);
  o.w = Tensor::empty({s.NC, s.HV, kC, s.K}, D, pl.dev);
  o.u = Tensor::empty({s.NC, s.HV, kC, s.V}, D, pl.dev);
  o.p = Tensor::empty({s.NC, s.HV, kC, kC}, D, pl.dev);
  if (s.NC == 0) return o;
  Tensor a_inv = saved.a_inv;
  if (!recompute && !a_inv.defined()) a_inv = Tensor();
  NATSL_CUDA_DISPATCH_FLOAT(D, "gdn prep", T, [&] {
    PrepParams<T> p{};
    set_qkv<T>(p, in);
    p.g = in.g.data<float>();
    p.beta = in.beta.data<float>();
    p.a_inv = data_or_null<T>(a_inv);
    p.g_cumsum = (!recompute && saved.g_cumsum.defined()) ? saved.g_cumsum.data<float>() : nullptr;
    p.gam = o.gam.data<float>();
    p.w = o.w.data<T>();
    p.u = o.u.data<T>();
    p.p = o.p.data<T>();
    p.chunks = pl.chunks();
    set_sizes(p, s, args);
    p.recompute = recompute;
    p.staged = pl.tune.prep_staged;
    const dim3 grid(unsigned(s.NC), unsigned(s.HV));
    const bool old = pl.tune.prep == GdnPrepKernel::generic;
    auto launch_with = [&](auto kern, int smem, const PrepParams<T>& pp) {
      launch_smem(kern, grid, kThreads, smem, 1, pl.stream, pp);
    };
    auto launch2 = [&](auto kern, int smem) { launch_with(kern, smem, p); };
    // prep2 solves T (forward only), prep3 does the rest: not the default, no faster than prep2 alone
    // (BENCHMARKS.md, kernel history).
    const bool want3 = pl.tune.prep == GdnPrepKernel::solve_then_products;
    const int avail = max_smem_per_block(pl.dev.index), VT = int(s.V / kC);
    auto run3 = [&](auto kt_const) -> bool {
      constexpr int KT = decltype(kt_const)::value;
      const int smem3 = prep3_smem<T, KT>(VT);
      if (!want3 || smem3 > avail || prep2_smem<T, KT>() > avail) return false;
      Tensor scratch;
      if (!recompute) {
        if (!p.a_inv) {  // a forward that saves nothing: T still goes through memory
          scratch = Tensor::empty({s.B * s.T, s.HV, kC}, D, pl.dev);
          p.a_inv = scratch.data<T>();
        }
        launch2(prep2_kernel<T, KT, true>, prep2_smem<T, KT, true>());
      }
      PrepParams<T> p3 = p;
      p3.g_cumsum = nullptr;  // written by the solve
      launch_with(prep3_kernel<T, KT>, smem3, p3);
      return true;
    };
    if (s.K == 64 && run3(std::integral_constant<int, 1>{})) {
    } else if (s.K == 128 && run3(std::integral_constant<int, 2>{})) {
    } else if (s.K == 256 && run3(std::integral_constant<int, 4>{})) {
    } else if (!old && s.K == 64) launch2(prep2_kernel<T, 1>, prep2_smem<T, 1>());
    else if (!old && s.K == 128) launch2(prep2_kernel<T, 2>, prep2_smem<T, 2>());
    else if (!old && s.K == 256 && prep2_smem<T, 4>() <= avail)
      launch2(prep2_kernel<T, 4>, prep2_smem<T, 4>());
    else launch2(prep_kernel<T>, prep_smem<T>());
  });
  return o;
}

}  // namespace natsl::kernels::cuda::gdn
