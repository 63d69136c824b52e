// Hopper forward of chunk-selected causal attention (kernels/sparse_attention.h): warpgroup MMA (wgmma) with
// K/V brought in by TMA from a producer warp through mbarrier stages, and FA3's overlap of one tile's softmax
// with the previous tile's P V product. Built for the arch-specific target sm_90a (CMakeLists.txt: the
// natsl_sm90a objects), taken by sparse_attention.cu's dispatch on sm_90 devices (H100, H200) for bf16 data,
// 64-token chunks and Dk, Dv in {64, 128}; the mma.sync kernel (sparse_attention_fwd.cu) everywhere else.
// It computes what the mma.sync kernel computes in the same order (S over Dk in k-steps of 16, the own chunk
// first, then the selected chunks ascending; the online softmax in the log2 domain; P rounded to bf16), and
// gives its bits (SparseAttentionCuda.WgmmaForwardGivesTheMmaSyncBits; the kernel lab's first run, 2026-12-07,
// BENCHMARKS.md: 0.62-0.81x its time at Dk 64, Dv 128).
//
// One CTA per (query chunk qc, head a, batch b), blockIdx.x = slot * B Ha + b Ha + a with qc = NC - 1 - slot
// (heaviest chunks first, as the mma.sync kernel); 160 threads: one consumer warpgroup (warps 0-3) and a
// producer warp (warp 4) whose first thread issues every copy.
//   shared memory  Q [64 x Dk] once, then kStages stages of K [64 x Dk] and V [64 x Dv], all bf16 in the
//                  128-byte swizzle (CU_TENSOR_MAP_SWIZZLE_128B) in boxes of 64 rows x 64 columns (8 KiB, each
//                  1024-byte aligned); the full / empty mbarrier of each stage after them.
//   producer       per tile t (t = 0: the own chunk qc; t >= 1: chunks[b, r, t - 1], r = a / G, for
//                  t < 1 + prefix[b, r, qc]): waits until stage t % kStages is empty (every consumer warp
//                  arrived), then arrive.expect_tx on its full barrier and the boxes' copies (Q's with tile 0).
//                  The maps are 3-D over [B sequences, T rows, Ha D columns]: box (a D + 64 i, 64 c, b). Rows
//                  past T in a partial last chunk are TMA's zero fill, as the mma.sync kernel's zero-filled
//                  copies: masked by causality (keys) or not stored (queries).
//   S = Q K^T      Dk / 16 wgmma.m64n64k16, both operands by descriptor (K-major, sw128: SBO 1024, a k-step
//                  +32 bytes inside a box, the next box at +8 KiB), scale-d 0 on the first k-step.
//   softmax        online, f32, in the log2 domain; the accumulator fragment gives thread 32 w + l rows
//                  16 w + l / 4 (h = 0: s[4j + e]) and + 8 (h = 1: s[4j + 2 + e]), columns 8 j + 2 (l % 4) + e;
//                  row max and sum reduce over the quad; the own chunk masks key > query.
//   O += P V       P rounded to bf16 straight into the A-register fragment, 4 k-steps (64 keys) of
//                  wgmma.m64n{Dv}k16 (B = V N-major, sw128: a 16-key k-step +2 KiB, LBO 8 KiB to the next
//                  64-column box).
//   overlap        S_t and P_{t-1} V_{t-1} are issued together (two commit groups); wait_group 1 waits for S_t
//                  only, the softmax of tile t runs while the tensor cores do P_{t-1} V_{t-1}; then wait_group 0,
//                  stage t - 1 is released, O is rescaled by tile t's correction and P_t packed.
//   epilogue       O / l staged as bf16 in stage 0's V buffer (the swizzled staging of mma_sm80.cuh), 16-byte
//                  stores of the valid rows; lse = ln 2 (m + log2 l) per valid row.
#include <cuda.h>
#include <cuda_bf16.h>

#include <atomic>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/ptx_sm90.cuh"
#include "kernels/cuda/sparse_attention.cuh"
#include "kernels/cuda/tma_map.h"
#include "kernels/cuda/wgmma.cuh"

namespace natsl::kernels::cuda::sparse_attn {
namespace {

namespace mma = natsl::kernels::cuda::mma;
namespace ptx = natsl::kernels::cuda::ptx;
using bf = __nv_bfloat16;

constexpr int kC = 64, kConsumers = 128, kThreads = kConsumers + 32, kStages = 3;
constexpr int kBox = kC * 64 * 2;  // one swizzled box: 64 rows x 64 bf16 columns, 8 KiB
constexpr uint32_t kSbo = 1024, kQkLbo = 16, kQkStep = 32, kVStep = 16 * 128;

template <int DK, int DV>
struct WgCfg {
  static_assert((DK == 64 || DK == 128) && (DV == 64 || DV == 128), "wgmma forward: Dk, Dv in {64, 128}");
  static constexpr int kQBytes = kC * DK * 2, kKBytes = kC * DK * 2, kVBytes = kC * DV * 2;
  static constexpr int kStageBytes = kKBytes + kVBytes;
  static constexpr int kBarOff = kQBytes + kStages * kStageBytes;
  static constexpr int kSmem = 1024 + kBarOff + 2 * kStages * 8;  // + alignment slack, full and empty barriers
};

struct Maps {
  CUtensorMap q, k, v;
};

// The online softmax of one tile on this thread's accumulator fragment s (rows row_lo, row_lo + 8): s becomes
// P = 2^(z - m) (f32), row_max / row_sum are updated, corr[h] = 2^(m_old - m_new).
__device__ __forceinline__ void tile_softmax(float (&s)[kC / 2], bool diag, int row_lo, int tq, float sl2,
                                             float (&row_max)[2], float (&row_sum)[2], float (&corr)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row_lo + 8 * h;
    float mx = row_max[h];
#pragma unroll
    for (int j = 0; j < kC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x = s[4 * j + 2 * h + e] * sl2;
        if (diag && 8 * j + 2 * tq + e > row) x = -INFINITY;  // causal, own chunk
        s[4 * j + 2 * h + e] = x;
        mx = fmaxf(mx, x);
      }
    mx = mma::quad_max(mx);
    corr[h] = mma::fast_exp2(row_max[h] - mx);
    row_max[h] = mx;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pe = mma::fast_exp2(s[4 * j + 2 * h + e] - mx);
        s[4 * j + 2 * h + e] = pe;
        sum += pe;
      }
    row_sum[h] = row_sum[h] * corr[h] + sum;
  }
}

// P (f32 accumulator fragment) -> the bf16 A-register fragments of the 4 k-steps of P V.
__device__ __forceinline__ void pack_p(const float (&s)[kC / 2], uint32_t (&pa)[kC / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) {
    pa[kk][0] = mma::pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = mma::pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = mma::pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = mma::pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

template <int DV>
__device__ __forceinline__ void rescale_o(float (&o_acc)[DV / 2], const float (&corr)[2]) {
#pragma unroll
  for (int j = 0; j < DV / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) o_acc[4 * j + i] *= corr[i >> 1];
}

__device__ __forceinline__ void fence_pa(uint32_t (&pa)[kC / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) wg::fence_regs(pa[kk]);
}

// Issues S = Q K^T (the caller fences).
template <int DK>
__device__ __forceinline__ void issue_qk(float (&s)[kC / 2], uint32_t qb, uint32_t kb) {
#pragma unroll
  for (int ks = 0; ks < DK / 16; ++ks) {
    const uint32_t off = uint32_t(ks / 4) * kBox + uint32_t(ks % 4) * kQkStep;
    wg::wgmma_ss<kC, 0, 0>(s, wg::smem_desc(qb + off, kQkLbo, kSbo, wg::Swizzle::k128B),
                           wg::smem_desc(kb + off, kQkLbo, kSbo, wg::Swizzle::k128B), ks > 0);
  }
}

// Issues O += P V (the caller fences).
template <int DV>
__device__ __forceinline__ void issue_pv(float (&o_acc)[DV / 2], const uint32_t (&pa)[kC / 16][4], uint32_t vb) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk)
    wg::wgmma_rs<DV, 1>(o_acc, pa[kk], wg::smem_desc(vb + kk * kVStep, kBox, kSbo, wg::Swizzle::k128B), true);
}

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) fwd_wgmma_kernel(const __grid_constant__ Maps maps, const Geometry g,
                                                             const FwdPtrs p) {
  using Cfg = WgCfg<DK, DV>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const sm = smem_raw + ((1024u - (ptx::smem_addr(smem_raw) & 1023u)) & 1023u);
  unsigned char* const q_s = sm;
  auto k_at = [&](int s) { return sm + Cfg::kQBytes + s * Cfg::kStageBytes; };
  auto v_at = [&](int s) { return sm + Cfg::kQBytes + s * Cfg::kStageBytes + Cfg::kKBytes; };
  uint64_t* const full = reinterpret_cast<uint64_t*>(sm + Cfg::kBarOff);
  uint64_t* const empty = full + kStages;
  const int per_chunk = g.Ha * g.B;
  const int qc = g.NC - 1 - int(blockIdx.x) / per_chunk;
  const auto [a, b, r, warp, lane, gq, tq, ldqk, ldv, head_qk, head_v] = tc_place<DK, DV>(g, per_chunk);
  const int32_t* const list = g.chunks + (int64_t(b) * g.Hr + r) * g.NC;
  const int n_tiles = 1 + g.prefix[(int64_t(b) * g.Hr + r) * (g.NC + 1) + qc];
  const int q_rows = min(kC, g.T - qc * kC);

  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      ptx::mbar_init_count(full + i, 1);
      ptx::mbar_init_count(empty + i, kConsumers / 32);
    }
    ptx::fence_mbarrier_init();
  }
  __syncthreads();  // the last CTA-wide barrier: the producer warp leaves below

  if (threadIdx.x >= kConsumers) {  // producer warp: one thread issues every copy
    if (threadIdx.x == kConsumers) {
      for (int t = 0; t < n_tiles; ++t) {
        const int s = t % kStages;
        if (t >= kStages) ptx::mbar_wait_parity(empty + s, uint32_t(t / kStages - 1) & 1u);
        const int c = t == 0 ? qc : list[t - 1];
        ptx::mbar_arrive_expect(full + s, uint32_t(Cfg::kStageBytes + (t == 0 ? Cfg::kQBytes : 0)));
        if (t == 0)
          for (int i = 0; i < DK / 64; ++i) ptx::tma_load_3d(q_s + i * kBox, &maps.q, a * DK + 64 * i, qc * kC, b, full + s);
        for (int i = 0; i < DK / 64; ++i) ptx::tma_load_3d(k_at(s) + i * kBox, &maps.k, a * DK + 64 * i, c * kC, b, full + s);
        for (int i = 0; i < DV / 64; ++i) ptx::tma_load_3d(v_at(s) + i * kBox, &maps.v, a * DV + 64 * i, c * kC, b, full + s);
      }
    }
    return;
  }

  const float sl2 = g.scale * kLog2e;
  const int row_lo = 16 * warp + gq;  // this thread's rows: row_lo (h = 0) and row_lo + 8 (h = 1)
  float o_acc[DV / 2], s[kC / 2], corr[2];
  uint32_t pa[kC / 16][4];
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) o_acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kC / 2; ++i) s[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const uint32_t qb = ptx::smem_addr(q_s);
  auto kb_at = [&](int t) { return ptx::smem_addr(k_at(t % kStages)); };
  auto vb_at = [&](int t) { return ptx::smem_addr(v_at(t % kStages)); };
  auto wait_full = [&](int t) { ptx::mbar_wait_parity(full + t % kStages, uint32_t(t / kStages) & 1u); };
  auto release = [&](int t) {  // this warp is done with tile t's stage
    __syncwarp();
    if (lane == 0) ptx::mbar_arrive1(empty + t % kStages);
  };

  // Tile 0 (the own chunk): S, softmax, P; O is still 0, so there is no product to overlap yet.
  wait_full(0);
  wg::fence_regs(s);
  wg::fence();
  issue_qk<DK>(s, qb, kb_at(0));
  wg::commit_group();
  wg::wait_group<0>();
  wg::fence_regs(s);
  tile_softmax(s, true, row_lo, tq, sl2, row_max, row_sum, corr);
  pack_p(s, pa);
  for (int t = 1; t < n_tiles; ++t) {
    wait_full(t);
    wg::fence_regs(s);
    wg::fence_regs(o_acc);
    fence_pa(pa);
    wg::fence();
    issue_qk<DK>(s, qb, kb_at(t));
    wg::commit_group();
    issue_pv<DV>(o_acc, pa, vb_at(t - 1));  // P_{t-1} V_{t-1}, running while tile t's softmax is computed
    wg::commit_group();
    wg::wait_group<1>();  // S_t done (groups complete in order)
    wg::fence_regs(s);
    tile_softmax(s, false, row_lo, tq, sl2, row_max, row_sum, corr);
    wg::wait_group<0>();  // P_{t-1} V_{t-1} done: O and the A registers are free
    wg::fence_regs(o_acc);
    fence_pa(pa);
    release(t - 1);
    rescale_o<DV>(o_acc, corr);
    pack_p(s, pa);
  }
  wg::fence_regs(o_acc);
  fence_pa(pa);
  wg::fence();
  issue_pv<DV>(o_acc, pa, vb_at(n_tiles - 1));
  wg::commit_group();
  wg::wait_group<0>();
  wg::fence_regs(o_acc);
  fence_pa(pa);
  release(n_tiles - 1);

  // Epilogue: O / l staged in stage 0's V buffer (every copy has completed and been consumed); the barriers are
  // among the 128 consumer threads only (the producer warp has left).
  ptx::compute_sync<kConsumers>();
  char* const o_s = reinterpret_cast<char*>(v_at(0));
  float* const lse = p.lse + (int64_t(b) * g.T + qc * kC) * g.Ha + a;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = mma::quad_sum(row_sum[h]), inv = 1.f / l;
    const int row = row_lo + 8 * h;
#pragma unroll
    for (int j = 0; j < DV / 8; ++j)
      mma::store_pair<DV>(o_s, row, 8 * j + 2 * tq, o_acc[4 * j + 2 * h] * inv, o_acc[4 * j + 2 * h + 1] * inv);
    if (tq == 0 && row < q_rows) lse[int64_t(row) * g.Ha] = (row_max[h] + __log2f(l)) * kLn2;
  }
  ptx::compute_sync<kConsumers>();
  bf* const o = static_cast<bf*>(p.o) + head_v + int64_t(qc) * kC * ldv;
  mma::store_tile<kC, DV, kConsumers>(o_s, o, ldv, q_rows);
  (void)head_qk;
  (void)ldqk;
}

template <int DK, int DV>
void launch(const Geometry& g, const FwdPtrs& p, cudaStream_t s) {
  using Cfg = WgCfg<DK, DV>;
  // [B sequences, T rows, Ha D columns]: a box past a sequence's last row reads zeros (as the mma.sync kernel's
  // zero-filled copies), never the next sequence's rows.
  auto map = [&](const void* base, int D) {
    const int64_t cols = int64_t(g.Ha) * D;
    return tensor_map_3d(static_cast<const bf16*>(base), g.B, g.T, cols, cols, int64_t(g.T) * cols, kC, 64,
                         CU_TENSOR_MAP_SWIZZLE_128B);
  };
  Maps maps;
  maps.q = map(p.q, DK);
  maps.k = map(p.k, DK);
  maps.v = map(p.v, DV);
  auto* kern = fwd_wgmma_kernel<DK, DV>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem));
  const int64_t blocks = int64_t(g.NC) * g.Ha * g.B;
  kern<<<unsigned(blocks), kThreads, Cfg::kSmem, s>>>(maps, g, p);
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool wgmma_fwd_supported(const Geometry& g, int device) {
  if (g.C != kC || (g.Dk != 64 && g.Dk != 128) || (g.Dv != 64 && g.Dv != 128)) return false;
  // sm_90a code runs on compute capability 9.0 only (not on later GPUs, which need their own build).
  static std::atomic<int> cc[64] = {};  // major * 10 + minor per device, 0 = not asked yet
  if (device < 0 || device >= 64) return false;
  if (cc[device].load(std::memory_order_relaxed) == 0) {
    int major = 0, minor = 0;
    NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    cc[device].store(major * 10 + minor, std::memory_order_relaxed);
  }
  return cc[device].load(std::memory_order_relaxed) == 90;
}

void wgmma_fwd(const Geometry& g, const FwdPtrs& p, cudaStream_t s) {
  if (g.B == 0 || g.T == 0 || g.Ha == 0) return;
  if (g.Dk == 64) {
    if (g.Dv == 64) launch<64, 64>(g, p, s);
    else launch<64, 128>(g, p, s);
  } else {
    if (g.Dv == 64) launch<128, 64>(g, p, s);
    else launch<128, 128>(g, p, s);
  }
}

}  // namespace natsl::kernels::cuda::sparse_attn
