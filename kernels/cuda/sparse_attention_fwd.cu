// Tensor-core forward of chunk-selected causal attention (FlashAttention-2 schedule, docs/attention-kernels.md
// §3 and §6): one CTA per (query chunk, head, batch), 64 query rows split over the warps (16 * MT rows
// each, so warps never share softmax state). The CTA walks its key tiles, one 64-token chunk each: the own
// chunk first with the causal mask (every row then has a finite max, so later tiles need no -inf checks),
// then the selected earlier chunks from the compacted list, K/V of tile t+1 copied (cp.async) while tile t
// is computed. Online softmax in f32 in the log2 domain (scale * log2 e folded into the scores); O is
// divided by the row sum once at the end and lse = ln 2 * (m + log2 l) is stored for the backward.
#include "core/cuda_check.h"
#include "kernels/chunk.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/sparse_attention.cuh"

namespace natsl::kernels::cuda::sparse_attn {
namespace {

using namespace mma;
using bf = __nv_bfloat16;
constexpr int kC = kChunk;  // chunk = query tile = key tile
static_assert(kC == 64, "the sparse-attention tiles assume 64-token chunks");

template <int DK, int DV, int MT, int NW>
struct FwdCfg {
  static_assert(16 * MT * NW == kC, "the warps must cover the 64 rows of a chunk");
  static constexpr int kThreads = NW * 32;
  static constexpr int kQBytes = kC * DK * 2, kKBytes = kC * DK * 2, kVBytes = kC * DV * 2;
  static constexpr int kSmem = kQBytes + 2 * (kKBytes + kVBytes);
  // Keep the Q fragments in registers when they are few (32 per thread at most).
  static constexpr bool kQInRegs = MT * DK <= 128;
};

template <int DK, int DV, int MT, int NW>
__global__ void __launch_bounds__(NW * 32) fwd_kernel(const Geometry g, const FwdPtrs p) {
  using Cfg = FwdCfg<DK, DV, MT, NW>;
  constexpr int NT = Cfg::kThreads;
  extern __shared__ __align__(128) char smem[];
  char* const q_s = smem;
  char* const k_s = smem + Cfg::kQBytes;      // two buffers
  char* const v_s = k_s + 2 * Cfg::kKBytes;  // two buffers

  // Heaviest work first: the last query chunks visit the most key chunks.
  const int per_chunk = g.Ha * g.B;
  const int qc = g.NC - 1 - int(blockIdx.x) / per_chunk;
  const auto [a, b, r, warp, lane, gq, tq, ldqk, ldv, head_qk, head_v] = tc_place<DK, DV>(g, per_chunk);
  const bf* const q = static_cast<const bf*>(p.q) + head_qk;
  const bf* const k = static_cast<const bf*>(p.k) + head_qk;
  const bf* const v = static_cast<const bf*>(p.v) + head_v;
  const int32_t* const list = g.chunks + (int64_t(b) * g.Hr + r) * g.NC;
  const int n_tiles = 1 + g.prefix[(int64_t(b) * g.Hr + r) * (g.NC + 1) + qc];
  const int q_rows = min(kC, g.T - qc * kC);

  auto load_kv = [&](int t, int buf) {
    const int c = t == 0 ? qc : list[t - 1];
    const int rows = min(kC, g.T - c * kC);
    load_tile_async<kC, DK, NT>(smem_addr(k_s + buf * Cfg::kKBytes), k + int64_t(c) * kC * ldqk, ldqk, rows);
    load_tile_async<kC, DV, NT>(smem_addr(v_s + buf * Cfg::kVBytes), v + int64_t(c) * kC * ldv, ldv, rows);
  };
  load_tile_async<kC, DK, NT>(smem_addr(q_s), q + int64_t(qc) * kC * ldqk, ldqk, q_rows);
  load_kv(0, 0);
  cp_async_commit();

  const float sl2 = g.scale * kLog2e;
  const int row0 = warp * 16 * MT;  // this warp's first row within the chunk
  const uint32_t qb = smem_addr(q_s);
  float o_acc[MT][DV / 8][4];
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    zero_frags(o_acc[m]);
#pragma unroll
    for (int h = 0; h < 2; ++h) row_max[m][h] = -INFINITY, row_sum[m][h] = 0.f;
  }
  uint32_t q_frag[Cfg::kQInRegs ? MT : 1][Cfg::kQInRegs ? DK / 16 : 1][4];

  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) {
      load_kv(t + 1, (t + 1) & 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (Cfg::kQInRegs)
      if (t == 0)
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int kk = 0; kk < DK / 16; ++kk)
            ldmatrix_x4(q_frag[m][kk], qb + Swizzled<DK>::offset(row0 + m * 16 + (lane & 15), kk * 2 + (lane >> 4)));
    const uint32_t kb = smem_addr(k_s + (t & 1) * Cfg::kKBytes);
    const uint32_t vb = smem_addr(v_s + (t & 1) * Cfg::kVBytes);

    // S = Q K^T for this warp's rows x the tile's 64 keys.
    float s[MT][8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) zero_frags(s[m]);
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
      uint32_t af[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if constexpr (Cfg::kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) af[m][e] = q_frag[m][kk][e];
        } else {
          ldmatrix_x4(af[m], qb + Swizzled<DK>::offset(row0 + m * 16 + (lane & 15), kk * 2 + (lane >> 4)));
        }
      }
#pragma unroll
      for (int jp = 0; jp < 4; ++jp) {
        uint32_t bk[4];
        ldmatrix_x4(bk, kb + Swizzled<DK>::offset(jp * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma_bf16(s[m][2 * jp], af[m], bk[0], bk[1]);
          mma_bf16(s[m][2 * jp + 1], af[m], bk[2], bk[3]);
        }
      }
    }

    // Online softmax per row (a row's 64 scores live on the 4 threads of a quad).
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + m * 16 + gq + 8 * h;
        float mx = row_max[m][h];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float x = s[m][j][2 * h + e] * sl2;
            if (t == 0 && j * 8 + 2 * tq + e > row) x = -INFINITY;  // causal, own chunk
            s[m][j][2 * h + e] = x;
            mx = fmaxf(mx, x);
          }
        mx = quad_max(mx);
        const float corr = fast_exp2(row_max[m][h] - mx);
        row_max[m][h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = fast_exp2(s[m][j][2 * h + e] - mx);
            s[m][j][2 * h + e] = pe;
            sum += pe;
          }
        row_sum[m][h] = row_sum[m][h] * corr + sum;
#pragma unroll
        for (int n = 0; n < DV / 8; ++n) {
          o_acc[m][n][2 * h] *= corr;
          o_acc[m][n][2 * h + 1] *= corr;
        }
      }

    // O += P V, P taken straight from the S fragments (k-step kk = keys 16kk .. 16kk + 15).
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) c_to_a(s[m], kk, pa[m]);
#pragma unroll
      for (int jp = 0; jp < DV / 16; ++jp) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, vb + Swizzled<DV>::offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), jp * 2 + (lane >> 4)));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma_bf16(o_acc[m][2 * jp], pa[m], bv[0], bv[1]);
          mma_bf16(o_acc[m][2 * jp + 1], pa[m], bv[2], bv[3]);
        }
      }
    }
    __syncthreads();  // buffer t & 1 is refilled by the next iteration's copy
  }

  // Epilogue: O / l staged through shared memory (V buffer 0) for 16-byte stores; lse per row.
  char* const o_s = v_s;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(row_sum[m][h]), inv = 1.f / l;
      const int row = row0 + m * 16 + gq + 8 * h;
#pragma unroll
      for (int n = 0; n < DV / 8; ++n)
        store_pair<DV>(o_s, row, n * 8 + 2 * tq, o_acc[m][n][2 * h] * inv, o_acc[m][n][2 * h + 1] * inv);
      if (tq == 0 && row < q_rows)
        p.lse[(int64_t(b) * g.T + qc * kC + row) * g.Ha + a] = (row_max[m][h] + __log2f(l)) * kLn2;
    }
  __syncthreads();
  bf* const o = static_cast<bf*>(p.o) + head_v + int64_t(qc) * kC * ldv;
  store_tile<kC, DV, NT>(o_s, o, ldv, q_rows);
}

template <int DK, int DV, int MT>
void launch(const Geometry& g, const FwdPtrs& p, cudaStream_t s) {
  constexpr int NW = kC / (16 * MT);
  using Cfg = FwdCfg<DK, DV, MT, NW>;
  auto* kern = fwd_kernel<DK, DV, MT, NW>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem));
  const int64_t blocks = int64_t(g.NC) * g.Ha * g.B;
  kern<<<unsigned(blocks), Cfg::kThreads, Cfg::kSmem, s>>>(g, p);
  NATSL_CUDA_CHECK_LAUNCH();
}

template <int DK, int DV>
void launch_dv(const Geometry& g, const FwdPtrs& p, cudaStream_t s, int rows_per_warp) {
  // 32 rows per warp reuse each K/V fragment twice (half the shared-memory traffic per MMA) but need twice
  // the accumulator registers: the default where that fits in 255 registers without spilling (Dv = 64).
  if (rows_per_warp == 0) rows_per_warp = DV == 64 ? 32 : 16;
  if constexpr (DV <= 128)
    if (rows_per_warp == 32) return launch<DK, DV, 2>(g, p, s);
  launch<DK, DV, 1>(g, p, s);
}

}  // namespace

bool tc_supported(const Geometry& g) {
  return g.C == kC && (g.Dk == 64 || g.Dk == 128) && (g.Dv == 64 || g.Dv == 128 || g.Dv == 256);
}

void tc_fwd(const Geometry& g, const FwdPtrs& p, cudaStream_t s, int rows_per_warp) {
  if (g.B == 0 || g.T == 0 || g.Ha == 0) return;
  if (g.Dk == 64) {
    if (g.Dv == 64) launch_dv<64, 64>(g, p, s, rows_per_warp);
    else if (g.Dv == 128) launch_dv<64, 128>(g, p, s, rows_per_warp);
    else launch_dv<64, 256>(g, p, s, rows_per_warp);
  } else {
    if (g.Dv == 64) launch_dv<128, 64>(g, p, s, rows_per_warp);
    else if (g.Dv == 128) launch_dv<128, 128>(g, p, s, rows_per_warp);
    else launch_dv<128, 256>(g, p, s, rows_per_warp);
  }
}

}  // namespace natsl::kernels::cuda::sparse_attn
