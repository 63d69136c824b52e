// Kernel lab: the chunk-gradient kernel of the GDN backward (docs/gdn-algorithm.md §4 steps 4-6) with its 64x64x64
// tile products on Hopper's warpgroup MMA (wgmma), against production's mma.sync kernel
// (kernels/cuda/gdn/chunk_bwd.cu, chunk_bwd_kernel). In a natsl-340m step the GDN backward is ~40 ms over 21 layers
// and this kernel its largest stage (0.89 ms of ~1.9 ms a call at B8 T4096 H6 K128 V256 bf16 on the H100; issue 18).
// Written 2026-12-07 without a GPU to run it: its first run is the next device session's (`WHAT=lab
// LAB_ONLY=gdn_chunk_bwd_wgmma`).
//
// Same inputs and outputs (ChunkBwdParams of gdn/bwd.cuh), grid (chunk, v head), 256 threads, and the same phases,
// loads and epilogues in the same order as production; only the products move from mma.sync to wgmma:
//   products   every acc += op(A) op(B) of production's tile_mma is 4 k-steps of wgmma.m64n32k16 (A and B from
//              shared memory by descriptor): warpgroup g (threads 128 g ..) computes columns 32 g .. 32 g + 31 of the
//              64x64 result. Its accumulator fragment (row 16 w + l / 4 (+8), column 32 g + 8 j + 2 (l % 4) (+1), w the
//              warp in the warpgroup) is production's Acc of warp 4 g + w (gdn/tile.cuh's Frag) element for element,
//              d[4 nt + e] = acc[nt][e], so every epilogue (masks, exponentials, row / column sums into their fixed
//              slots, bf16 rounding of dS, dW, dT, dA tiles) is production's code and order. The k-steps run
//              k = 0..63 in 16s as mma.sync's do, and the attention forward's wgmma kernel gives its mma.sync
//              twin's bits, so every output is expected bit for bit.
//   batching   the products that do not depend on each other are issued together and waited for once: phase A's
//              dS, dT_u and T^T dv2; phase B's dO h^T, v_new dh^T and dv2 h^T per V tile (the h . dh sum runs on the
//              CUDA cores while they do), K K^T with dS K, T^T dW with dW K^T; phase C's two dA K terms.
//   layout     bf16 tiles of 64 x 64 in the core-matrix ("blocked") layout, no swizzle: element (r, c) at byte
//              (r / 8) 1024 + (c / 8) 128 + (r % 8) 16 + (c % 8) 2, 8 KiB, so every 8x8 core matrix is 128
//              contiguous bytes. One layout serves both uses the probe checked (experiments/kernel_lab/wgmma,
//              36/36 on an H100): rows = M / N index (K-major: LBO 128, SBO 1024, a k-step +256 bytes, warpgroup g's
//              B rows at +4096 g) and rows = k index (MN-major, the probe's nosw-mnfast at 64: LBO 1024, SBO 128, a
//              k-step +2048 bytes, warpgroup g's B columns at +512 g). cp.async fills it with the 16-byte pieces of
//              a core matrix on consecutive threads (no bank conflict); rows past the chunk are its zero fill.
//              f32 tiles (dk before the dA terms, dT_u) stay in production's padded layout.
//   loads      production's: cp.async into two sets of the streamed tiles, V tile n + 1 issued before tile n is
//              waited for, within phase A and within each K tile of phase B.
//   builds     (--variant; every build computes the same bits)
//     copies   op(A) = A^T (T^T dv2, dS^T Q, T^T dW, T^T (dT T^T), dB^T K) with A always K-major: T^T is built once
//              per CTA from T by a shared-memory transpose, dS^T and dB^T are stored beside dS and dB by the
//              epilogues that write those (the same rounded bits); 17 tiles.
//     imm      A^T by wgmma's transpose flag (imm-trans-a = 1) on the MN-major descriptor of the tile itself; 15
//              tiles. The probe checked A only K-major: a wrong result here and not in `copies` points at it.
//     *-xp     the streamed tiles as one sequence, prefetched across the phase and K-tile boundaries too: the next
//              K tile's (or phase B's) first V tile loads while the current one's epilogue products run, where
//              production's schedule has no load in flight.
//   visibility every shared-memory write the tensor cores read (cp.async once waited for, st.shared of the
//              epilogues) is followed by fence.proxy.async before the CTA barrier that publishes it; a buffer is
//              rewritten only after wait_group 0 and a CTA barrier.
//   shared     K 128, bf16: copies 17 x 8 KiB + 3 f32 tiles of 64 x 68 + 64-entry slots = 194,624 bytes; imm
//              178,240 (production: 193,600); one CTA an SM as production. K 64: 177,216 / 160,832.
//   registers  ptxas -v (sm_90a, CUDA 13), K 128: copies 216, imm 228, copies-xp 218, imm-xp 228; K 64: 162-164;
//              no spill, no wgmma serialisation warning (production's kernel at K 128: 229). Each row prints
//              cudaFuncGetAttributes' count.
// Shapes: K 64 or 128 (K 256 would not fit the transposed tiles), V a multiple of 64, bf16, H = HV (production's
// backward needs it).
//
// main: random bf16 inputs, q and k L2-normalised (kernels' l2norm_fwd), g = logsigmoid(N(0, 1)), beta =
// sigmoid(U(0, 1)), mask (where a case has one) U(0, 1), dout N(0, 1); production's chunked forward (saved g_cumsum,
// a_inv), then production's backward stages up to the chunk gradients (run_prep with recompute, the state passes:
// h, v_new, dh, dv2), then production's run_chunk_bwd and each lab build on those same tensors, all six outputs
// (dq, dk, dv bf16; dg, dbeta, dmask f32) poisoned with NaN first. Verdict per build: "bits" when every output
// equals production's bit for bit, "close" when not but every output is within relative RMS 2e-3 (dq, dk, dv) /
// 5e-3 (dg, dbeta, dmask) of production's with no non-finite value, else "MISMATCH" (exit 1); the differing
// elements are counted per output. Cases: B1 T4000 H6 K128 V256 with a mask (a partial last chunk), B2 T1000 H2
// K64 V128 without (K 64, the null mask), then natsl-340m's B8 T4096 H6 K128 V256 with a mask. Timing
// (bench_timing.h: median, L2 cleared before each call): production's run_chunk_bwd against the lab kernel. Each
// case and build re-arms a 120 s alarm that names it and exits 1.
//   natsl_lab_gdn_chunk_bwd_wgmma [--reps N] [--variant copies|imm|copies-xp|imm-xp|all] [--only 340m]
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/cuda/gdn/bwd.cuh"
#include "kernels/cuda/gdn/state_fwd.cuh"
#include "kernels/cuda/ptx_sm90.cuh"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/gdn.h"
#include "kernels/nn.h"

using namespace natsl;
using namespace natsl::kernels;
using namespace natsl::kernels::cuda::gdn;

namespace {

namespace wg = natsl::kernels::cuda::wg;
namespace ptx = natsl::kernels::cuda::ptx;

// ---- blocked (core-matrix) bf16 tiles ----
constexpr int kTileCm = kC * kC * 2;  // bytes
// Element offset of (r, c): 8x8 core matrices of 16-byte rows, the 8 of a tile row-band side by side.
__device__ __forceinline__ int cm_off(int r, int c) { return (r >> 3) * 512 + (c >> 3) * 64 + (r & 7) * 8 + (c & 7); }

// Descriptor of k-step ks (16 deep) of a tile whose rows are the operand's M / N index (K-major), from row row0.
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t tile, int ks, int row0) {
  return wg::smem_desc(tile + uint32_t(row0) * 128u + uint32_t(ks) * 256u, 128, 1024, wg::Swizzle::kNone);
}
// The same for a tile whose rows are the k index (M- / N-major), from column col0.
__device__ __forceinline__ uint64_t desc_mnmajor(uint32_t tile, int ks, int col0) {
  return wg::smem_desc(tile + uint32_t(ks) * 2048u + uint32_t(col0) * 16u, 1024, 128, wg::Swizzle::kNone);
}

// Issues acc += op(A) op(B) for a row-major 64x64 A and B in blocked tiles (shared addresses a, b), op(X) = X^T
// where TA / TB: production's tile_mma<TA, TB>, as 4 wgmma.m64n32k16 of this thread's warpgroup (its 32 columns).
// A^T is the transpose flag on the tile's MN-major descriptor (the imm build); B^T is B K-major (B's rows are the
// N index), B N-major otherwise. The caller commits and waits (mma_commit, mma_wait).
template <bool TA, bool TB>
__device__ __forceinline__ void mma_issue(Acc& acc, uint32_t a, uint32_t b) {
  float(&d)[16] = reinterpret_cast<float(&)[16]>(acc);
  const int n0 = 32 * int(threadIdx.x >> 7);
  wg::fence_regs(d);
  wg::fence();
#pragma unroll
  for (int ks = 0; ks < kC / 16; ++ks) {
    const uint64_t da = TA ? desc_mnmajor(a, ks, 0) : desc_kmajor(a, ks, 0);
    const uint64_t db = TB ? desc_kmajor(b, ks, n0) : desc_mnmajor(b, ks, n0);
    wg::wgmma_ss<32, TA ? 1 : 0, TB ? 0 : 1>(d, da, db, true);
  }
}
__device__ __forceinline__ void mma_commit() { wg::commit_group(); }
// Waits for every committed product; the accumulators named are then safe to read and write.
template <class... A>
__device__ __forceinline__ void mma_wait(A&... accs) {
  wg::wait_group<0>();
  (wg::fence_regs(reinterpret_cast<float(&)[16]>(accs)), ...);
}
// acc += T^T X (T^T: the transposed copy Tt as a K-major A, or T's own tile with the transpose flag).
template <bool IMM>
__device__ __forceinline__ void mma_tt(Acc& acc, uint32_t t, uint32_t tt, uint32_t x) {
  if constexpr (IMM) mma_issue<true, false>(acc, t, x);
  else mma_issue<false, false>(acc, tt, x);
}

// Queues the copy of a 64x64 bf16 tile (row pitch gld elements; rows >= rows_valid zeros) into the blocked layout,
// by the CTA's 256 threads: consecutive threads fill the 8 rows of one core matrix (128 contiguous bytes).
__device__ __forceinline__ void load_cm(bf16* s, const bf16* g, int64_t gld, int rows_valid) {
#pragma unroll
  for (int idx = int(threadIdx.x); idx < kC * 8; idx += kThreads) {
    const int r = 8 * (idx >> 6) + (idx & 7), p = (idx >> 3) & 7;
    const bool ok = r < rows_valid;
    cp_async16(s + cm_off(r, 8 * p), ok ? g + r * gld + 8 * p : g, ok);
  }
}
// Makes this thread's shared-memory writes (st.shared, and cp.async once waited for) visible to the tensor cores
// (the async proxy), then publishes everyone's with the CTA barrier.
__device__ __forceinline__ void publish() {
  wg::fence_proxy_async_smem();
  __syncthreads();
}
// production's acc_to_tile<bf16> into a blocked tile (the same rounding, round_bits2), and with tt also its transpose
// (the copies build's A^T operands: the same bits at (c, r)).
template <class Fn>
__device__ __forceinline__ void acc_to_cm(const Acc& a, const Frag& f, bf16* t, bf16* tt, Fn fn) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = f.row(2 * h), c = f.col(nt, 0);
      const uint32_t w = bf16::round_bits2(fn(r, c, a[nt][2 * h]), fn(r, c + 1, a[nt][2 * h + 1]));
      *reinterpret_cast<uint32_t*>(t + cm_off(r, c)) = w;
      if (tt != nullptr) {
        tt[cm_off(c, r)] = bf16::from_bits(uint16_t(w & 0xffffu));
        tt[cm_off(c + 1, r)] = bf16::from_bits(uint16_t(w >> 16));
      }
    }
}
__device__ __forceinline__ float at(const bf16* t, int r, int c) { return f32(t[cm_off(r, c)]); }

// Makes streamed tile n ready (production's next_vtile with the proxy fence): with `more`, tile n + 1 is issued into
// the other set first and all but its loads waited for.
template <class Issue>
__device__ __forceinline__ void next_tile(int n, bool more, const Issue& issue) {
  if (more) {
    issue(n + 1);
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  publish();
}

template <int KT, bool IMM>
constexpr int lab_smem() {  // (XP changes no size)
  return (IMM ? 15 : 17) * kTileCm + (KT + 1) * kTileBytes<float> + (2 + 2 * kRowSlots + kRowColSlots) * kC * 4 + 16 * 4;
}

template <int KT, bool IMM, bool XP>
__global__ void __launch_bounds__(kThreads, 1) chunk_bwd_wgmma_kernel(ChunkBwdParams<bf16> p) {
  using D = bf16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int TE = kC * kC, TF = kC * kLd<float>;
  constexpr int fld = kLd<float>;
  D* const Ts = reinterpret_cast<D*>(smem_raw);
  D* const Tt = IMM ? nullptr : Ts + TE;  // T^T (copies)
  D* const dSs = Ts + (IMM ? 1 : 2) * TE;
  D* const dSt = IMM ? nullptr : dSs + TE;  // dS^T (copies)
  D* const Qk = dSs + (IMM ? 1 : 2) * TE;
  D* const Kk = Qk + TE;
  D* const B0 = Kk + TE;  // two sets of 5 streamed tiles; phase C: dT, dT T^T, dB, dB^T in set 0
  D* const B1 = B0 + TE;
  D* const B2 = B1 + TE;
  D* const B2t = IMM ? nullptr : B2 + TE;
  D* const dWs = B0 + 10 * TE;
  float* const dKp = reinterpret_cast<float*>(dWs + TE);  // KT f32 tiles: dk before the dB terms
  float* const dTus = dKp + KT * TF;
  float* const gam = dTus + TF;
  float* const bet = gam + kC;
  float* const dbeta = bet + kC;               // [kRowSlots][kC]; slot 0 the total at the end
  float* const dgam = dbeta + kRowSlots * kC;  // [kRowColSlots][kC]; the same
  float* const rho = dgam + kRowColSlots * kC; // sum_k dX_ik k_ik, [kRowSlots][kC]
  float* const red = rho + kRowSlots * kC;     // 16 floats
  auto sa = [](const D* t) { return ptx::smem_addr(t); };
  const uint32_t ts_a = sa(Ts), tt_a = IMM ? 0u : sa(Tt), dss_a = sa(dSs), dst_a = IMM ? 0u : sa(dSt);
  const uint32_t qk_a = sa(Qk), kk_a = sa(Kk), dws_a = sa(dWs);

  const int c = blockIdx.x, hv = blockIdx.y, h = hv / (p.HV / p.H);
  const ChunkInfo ci = p.chunks[c];
  const int len = ci.len, row0 = ci.row0;
  const int64_t tile_id = int64_t(c) * p.HV + hv;
  const int64_t qk_ld = int64_t(p.H) * p.K, v_ld = int64_t(p.HV) * p.V;
  const D* qc = p.q + int64_t(row0) * qk_ld + int64_t(h) * p.K;
  const D* kc = p.k + int64_t(row0) * qk_ld + int64_t(h) * p.K;
  const D* vc = p.v + int64_t(row0) * v_ld + int64_t(hv) * p.V;
  const D* doc = p.dout + int64_t(row0) * v_ld + int64_t(hv) * p.V;
  const D* hc = p.h + tile_id * p.K * p.V;
  const D* dhc = p.dh + tile_id * p.K * p.V;
  const D* vnc = p.vnew + tile_id * kC * p.V;
  const D* dv2c = p.dv2 + tile_id * kC * p.V;
  const Frag f;
  const int tid = threadIdx.x;

  load_cm(Ts, p.a_inv + (int64_t(row0) * p.HV + hv) * kC, int64_t(p.HV) * kC, len);
  load_row64(gam, p.gam + tile_id * kC);
  cp_async_commit();
  if (tid < kC) {
    bet[tid] = tid < len ? p.beta[int64_t(row0 + tid) * p.HV + hv] : 0.f;
    zero_slots<kRowSlots>(dbeta, tid);
    zero_slots<kRowColSlots>(dgam, tid);
    zero_slots<kRowSlots>(rho, tid);
  }
  cp_async_wait<0>();
  publish();
  if constexpr (!IMM) {
    for (int idx = tid; idx < kC * kC; idx += kThreads) Tt[cm_off(idx & 63, idx >> 6)] = Ts[cm_off(idx >> 6, idx & 63)];
    publish();
  }
  const float gL = gam[len - 1], eL = __expf(gL);
  const float m = p.mask ? p.mask[tile_id] : 1.f;

  // The streamed tiles as one numbered sequence: n < VT phase A's V tile n (dO, v_new, dv2, v), then phase B's
  // (K tile kt, V tile vt) at n = VT + kt VT + vt (h, dh, dO, v_new, dv2), tile n in set n % 2. Without XP a tile
  // is prefetched only within its phase and K tile (production's schedule); with XP also across the boundaries, so
  // the first tile of the next K tile (or phase B's first) loads while the current one's epilogue runs.
  const int VT = p.V / kC, n_total = VT + KT * VT;
  auto set = [&](int n) { return B0 + (n & 1) * 5 * TE; };
  auto issue = [&](int n) {
    D* const b = set(n);
    if (n < VT) {
      load_cm(b, doc + n * kC, v_ld, len);
      load_cm(b + TE, vnc + n * kC, p.V, kC);
      load_cm(b + 2 * TE, dv2c + n * kC, p.V, kC);
      load_cm(b + 3 * TE, vc + n * kC, v_ld, len);
    } else {
      const int kt = (n - VT) / VT, vt = (n - VT) % VT;
      load_cm(b, hc + int64_t(kt) * kC * p.V + vt * kC, p.V, kC);
      load_cm(b + TE, dhc + int64_t(kt) * kC * p.V + vt * kC, p.V, kC);
      load_cm(b + 2 * TE, doc + vt * kC, v_ld, len);
      load_cm(b + 3 * TE, vnc + vt * kC, p.V, kC);
      load_cm(b + 4 * TE, dv2c + vt * kC, p.V, kC);
    }
    cp_async_commit();
  };
  // Whether tile n + 1 is issued while tile n is made ready (the last tile of a phase or K tile: only with XP).
  auto more = [&](int n) { return XP ? n + 1 < n_total : (n < VT ? n + 1 < VT : (n - VT) % VT + 1 < VT); };

  // ---- phase A: over V tiles
  Acc dS, dTu;
  zero(dS);
  zero(dTu);
  issue(0);
  for (int vt = 0; vt < VT; ++vt) {
    D* const b = set(vt);
    D *const A0 = b, *const A1 = b + TE, *const A2 = b + 2 * TE, *const A3 = b + 3 * TE;
    next_tile(vt, more(vt), issue);
    Acc y;
    zero(y);
    mma_issue<false, true>(dS, sa(A0), sa(A1));
    mma_issue<false, true>(dTu, sa(A2), sa(A3));
    mma_tt<IMM>(y, ts_a, tt_a, sa(A2));
    mma_commit();
    mma_wait(dS, dTu, y);
    acc_to_global<D>(y, f, p.dv + (int64_t(row0) * p.HV + hv) * p.V + vt * kC, v_ld, len,
                     [&](int i, int, float x) { return bet[i] * x; });
    acc_row_sum_add(y, f, dbeta, [&](int i, int j, float x) { return x * at(A3, i, j); });
    __syncthreads();
  }
  acc_to_cm(dS, f, dSs, dSt, [&](int i, int j, float x) {
    return (i >= j && i < len) ? p.scale * x * __expf(gam[i] - gam[j]) : 0.f;
  });
  acc_to_tile<float>(dTu, f, dTus);

  // ---- phase B: over K tiles
  Acc dTw, kk;
  zero(dTw);
  zero(kk);
  float hdh = 0.f, dm = 0.f;
  for (int kt = 0; kt < KT; ++kt) {
    // Q and K tile kt in a group of their own (with XP the K tile's first streamed tile is already in flight;
    // next_tile's wait for all but the newest group covers both).
    load_cm(Qk, qc + kt * kC, qk_ld, len);
    load_cm(Kk, kc + kt * kC, qk_ld, len);
    cp_async_commit();
    Acc dq, dki, dw;
    zero(dq);
    zero(dki);
    zero(dw);
    const int n0 = VT + kt * VT;
    if (!XP) issue(n0);
    for (int vt = 0; vt < VT; ++vt) {
      D* const b = set(n0 + vt);
      D *const Hh = b, *const DHh = b + TE, *const DO = b + 2 * TE, *const VN = b + 3 * TE, *const DV2 = b + 4 * TE;
      next_tile(n0 + vt, more(n0 + vt), issue);
      mma_issue<false, true>(dq, sa(DO), sa(Hh));
      mma_issue<false, true>(dki, sa(VN), sa(DHh));
      mma_issue<false, true>(dw, sa(DV2), sa(Hh));
      mma_commit();
      for (int idx = tid; idx < kC * kC; idx += kThreads) {  // on the CUDA cores while the tensor cores work
        const int r = idx >> 6, cc = idx & 63;
        hdh += at(Hh, r, cc) * at(DHh, r, cc);
      }
      mma_wait(dq, dki, dw);
      __syncthreads();
    }
    mma_issue<false, true>(kk, kk_a, kk_a);
    mma_commit();
    // dq = scale diag(e) dO h^T + dS K
    scale_rows_exp(dq, f, gam, len, p.scale);
    mma_issue<false, false>(dq, dss_a, kk_a);
    mma_commit();
    mma_wait(kk, dq);
    acc_to_global<D>(dq, f, p.dq + (int64_t(row0) * p.H + h) * p.K + kt * kC, qk_ld, len);
    acc_row_sum_add(dq, f, dgam, [&](int i, int j, float x) { return x * at(Qk, i, j); });
    // dk (step 4): m diag(exp(gam_L - gam)) v_new dh^T + dS^T Q
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int i = f.row(2 * hh);
      const float r = i < len ? __expf(gL - gam[i]) : 0.f;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          float& x = dki[nt][2 * hh + b];
          x *= r;
          dm += x * at(Kk, i, f.col(nt, b));
          x *= m;
        }
    }
    if constexpr (IMM) mma_issue<true, false>(dki, dss_a, qk_a);
    else mma_issue<false, false>(dki, dst_a, qk_a);
    mma_commit();
    mma_wait(dki);
    acc_row_sum_add(dki, f, dgam, [&](int i, int j, float x) { return -x * at(Kk, i, j); });
    acc_to_cm(dw, f, dWs, nullptr, [](int, int, float x) { return -x; });
    publish();
    // WY: dX = T^T dw; dk += diag(beta e) dX; dT_w += dw K^T
    Acc dx;
    zero(dx);
    mma_tt<IMM>(dx, ts_a, tt_a, dws_a);
    mma_issue<false, true>(dTw, dws_a, kk_a);
    mma_commit();
    mma_wait(dx, dTw);
    acc_row_sum_add(dx, f, rho, [&](int i, int j, float x) { return x * at(Kk, i, j); });
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int i = f.row(2 * hh);
      const float be = bet[i] * __expf(gam[i]);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        dki[nt][2 * hh] += be * dx[nt][2 * hh];
        dki[nt][2 * hh + 1] += be * dx[nt][2 * hh + 1];
      }
    }
    acc_to_tile<float>(dki, f, dKp + kt * TF);
    __syncthreads();
  }

  // ---- phase C: through T = (I + A)^-1 into A
  acc_to_cm(dTw, f, B0, nullptr, [&](int i, int j, float x) {
    return (i > j && i < len) ? x * bet[j] * __expf(gam[j]) + dTus[i * fld + j] * bet[j] : 0.f;
  });
  publish();
  {
    Acc m1;
    zero(m1);
    mma_issue<false, true>(m1, sa(B0), ts_a);  // dT T^T
    mma_commit();
    mma_wait(m1);
    acc_to_cm(m1, f, B1, nullptr, [](int, int, float x) { return x; });
  }
  publish();
  Acc da;
  zero(da);
  mma_tt<IMM>(da, ts_a, tt_a, sa(B1));  // T^T dT T^T = -dA
  mma_commit();
  mma_wait(da);
  // dB = StrictLower(dA o Gamma), in place
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = f.row(e), j = f.col(nt, e);
      da[nt][e] = (i > j && i < len) ? -da[nt][e] * __expf(gam[i] - gam[j]) : 0.f;
    }
  {
    // dbeta_i += sum_j dB_ij (k_i.k_j); dgam += rows - columns of dA o A = dB_ij beta_i (k_i.k_j)
    Acc prod;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) prod[nt][e] = da[nt][e] * kk[nt][e];
    acc_row_sum_add(prod, f, dbeta, [](int, int, float x) { return x; });
    acc_row_sum_add(prod, f, dgam, [&](int i, int, float x) { return bet[i] * x; });
    acc_col_sum_add(prod, f, dgam, [&](int i, int, float x) { return -bet[i] * x; });
  }
  acc_to_cm(da, f, B2, B2t, [&](int i, int, float x) { return bet[i] * x; });
  __syncthreads();
  for (int kt = 0; kt < KT; ++kt) {
    load_cm(Kk, kc + kt * kC, qk_ld, len);
    cp_async_commit();
    cp_async_wait<0>();
    publish();
    Acc dk;
    tile_to_acc<float>(dKp + kt * TF, f, dk);
    mma_issue<false, false>(dk, sa(B2), kk_a);
    if constexpr (IMM) mma_issue<true, false>(dk, sa(B2), kk_a);
    else mma_issue<false, false>(dk, sa(B2t), kk_a);
    mma_commit();
    mma_wait(dk);
    acc_to_global<D>(dk, f, p.dk + (int64_t(row0) * p.H + h) * p.K + kt * kC, qk_ld, len);
    __syncthreads();
  }

  // ---- the last row's terms, dbeta, reverse cumsum into dg (production's code)
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    hdh += __shfl_xor_sync(0xffffffffu, hdh, o);
    dm += __shfl_xor_sync(0xffffffffu, dm, o);
  }
  if ((tid & 31) == 0) {
    red[tid >> 5] = hdh;
    red[8 + (tid >> 5)] = dm;
  }
  float dbeta_t = 0.f, dgam_t = 0.f;
  if (tid < kC) {
    const float e = __expf(gam[tid]), rh = sum_slots<kRowSlots>(rho, tid);
    dbeta_t = sum_slots<kRowSlots>(dbeta, tid) + e * rh;
    dgam_t = sum_slots<kRowColSlots>(dgam, tid) + bet[tid] * e * rh;
  }
  __syncthreads();
  if (tid < kC) {
    dbeta[tid] = dbeta_t;
    dgam[tid] = dgam_t;
  }
  __syncthreads();
  if (tid == 0) {
    float H = 0.f, M = 0.f;
    for (int w = 0; w < 8; ++w) {
      H += red[w];
      M += red[8 + w];
    }
    dgam[len - 1] += eL * H + m * M;
    if (p.dmask) p.dmask[tile_id] = M;
  }
  __syncthreads();
  if (tid < len) {
    float s = 0.f;
    for (int i = tid; i < len; ++i) s += dgam[i];
    p.dg[int64_t(row0 + tid) * p.HV + hv] = s;
    p.dbeta[int64_t(row0 + tid) * p.HV + hv] = dbeta[tid];
  }
}

// The builds timed: A^T by transposed copies or by wgmma's transpose flag (imm); each with production's prefetch
// schedule or the cross-phase one (xp).
enum class Variant { kCopies, kImm, kCopiesXp, kImmXp };
constexpr Variant kVariants[] = {Variant::kCopies, Variant::kImm, Variant::kCopiesXp, Variant::kImmXp};
const char* variant_name(Variant v) {
  switch (v) {
    case Variant::kCopies: return "copies";
    case Variant::kImm: return "imm";
    case Variant::kCopiesXp: return "copies-xp";
    case Variant::kImmXp: return "imm-xp";
  }
  return "?";
}

template <int KT, bool IMM, bool XP>
void launch_lab(const Plan& pl, const ChunkBwdParams<bf16>& p) {
  constexpr int smem = lab_smem<KT, IMM>();
  static_assert(smem <= 227 * 1024, "the lab's tiles exceed 227 KiB of shared memory");
  auto* kern = chunk_bwd_wgmma_kernel<KT, IMM, XP>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kern<<<dim3(unsigned(pl.s.NC), unsigned(pl.s.HV)), kThreads, smem, pl.stream>>>(p);
  NATSL_CUDA_CHECK_LAUNCH();
}
// Calls fn(std::integral_constant<int, KT>, std::bool_constant<IMM>, std::bool_constant<XP>) for the build.
template <class Fn>
void dispatch(Variant variant, int64_t K, Fn&& fn) {
  auto by_k = [&](auto imm, auto xp) {
    switch (K) {
      case 64: return fn(std::integral_constant<int, 1>{}, imm, xp);
      case 128: return fn(std::integral_constant<int, 2>{}, imm, xp);
      default: NATSL_FAIL("gdn_chunk_bwd_wgmma lab: K = ", K, " (64 or 128 only)");
    }
  };
  switch (variant) {
    case Variant::kCopies: return by_k(std::false_type{}, std::false_type{});
    case Variant::kImm: return by_k(std::true_type{}, std::false_type{});
    case Variant::kCopiesXp: return by_k(std::false_type{}, std::true_type{});
    case Variant::kImmXp: return by_k(std::true_type{}, std::true_type{});
  }
}
void lab_chunk_bwd(Variant variant, const Plan& pl, const ChunkBwdParams<bf16>& p) {
  dispatch(variant, pl.s.K, [&](auto kt, auto imm, auto xp) {
    launch_lab<decltype(kt)::value, decltype(imm)::value, decltype(xp)::value>(pl, p);
  });
}
// "R regs, L B local" of the build's kernel (local memory: spills or stack).
std::string kernel_resources(Variant variant, int64_t K) {
  cudaFuncAttributes a{};
  dispatch(variant, K, [&](auto kt, auto imm, auto xp) {
    NATSL_CUDA_CHECK(cudaFuncGetAttributes(
        &a, chunk_bwd_wgmma_kernel<decltype(kt)::value, decltype(imm)::value, decltype(xp)::value>));
  });
  char buf[96];
  std::snprintf(buf, sizeof buf, "%d regs, %zu B local", a.numRegs, a.localSizeBytes);
  return buf;
}

// The hang guard: each case (and each build of it) re-arms a 120 s alarm after naming itself here.
char g_running[160] = "start-up";
void arm(const char* what) {
  std::snprintf(g_running, sizeof g_running, "%s", what);
  alarm(120);
}
void on_alarm(int) {
  const char head[] = "\ngdn_chunk_bwd_wgmma lab: ", tail[] = " still running after 120 s: a kernel hangs; FAILED\n";
  size_t n = 0;
  while (n < sizeof g_running && g_running[n] != '\0') ++n;
  (void)!write(2, head, sizeof(head) - 1);
  (void)!write(2, g_running, n);
  (void)!write(2, tail, sizeof(tail) - 1);
  _exit(1);
}

void poison(const Tensor& t, cudaStream_t s) {
  if (t.defined()) NATSL_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0xFF, t.nbytes(), s));
}

struct Diff {
  double max_diff = 0, sq_diff = 0, sq_ref = 0;
  int64_t nonfinite = 0, differ = 0;
  double rel_rms() const { return sq_ref > 0 ? std::sqrt(sq_diff / sq_ref) : std::sqrt(sq_diff); }
};
// Non-finite values on either side count (a NaN in production's output is a failure too, not skipped); differ counts
// the elements whose bits differ (f32 compares the values' bits; bf16 converts exactly).
Diff compare(const Tensor& ref, const Tensor& x) {
  Diff d;
  if (!ref.defined()) return d;
  const std::vector<float> rv = ref.to(DType::f32).to_vector<float>(), xv = x.to(DType::f32).to_vector<float>();
  for (size_t i = 0; i < rv.size(); ++i) {
    if (!std::isfinite(xv[i]) || !std::isfinite(rv[i])) {
      ++d.nonfinite;
      continue;
    }
    const double e = std::fabs(double(xv[i]) - double(rv[i]));
    d.max_diff = std::max(d.max_diff, e);
    d.sq_diff += e * e;
    d.sq_ref += double(rv[i]) * double(rv[i]);
    if (xv[i] != rv[i]) ++d.differ;
  }
  return d;
}

struct Case {
  int64_t B, T, H, K, V;
  bool mask;
};

GdnGrads make_grads(const GdnInputs& in, const GdnShape& s, Device dev) {
  return GdnGrads{Tensor::empty(in.q.shape(), DType::bf16, dev), Tensor::empty(in.k.shape(), DType::bf16, dev),
                  Tensor::empty(in.v.shape(), DType::bf16, dev), Tensor::empty(in.g.shape(), DType::f32, dev),
                  Tensor::empty(in.beta.shape(), DType::f32, dev), Tensor(),
                  in.mask.defined() ? Tensor::empty({s.NC, s.HV}, DType::f32, dev) : Tensor()};
}

// One shape: production's chunk gradients (timed once) against each chosen lab build; a row per build.
bool run_case(const Case& cs, int reps, const std::vector<Variant>& variants, Generator& gen, cudaStream_t st) {
  const Device dev = Device::cuda(0);
  char shape[96];
  std::snprintf(shape, sizeof shape, "B%lld T%lld H%lld K%lld V%lld%s", (long long)cs.B, (long long)cs.T,
                (long long)cs.H, (long long)cs.K, (long long)cs.V, cs.mask ? " mask" : "");
  char what[160];
  std::snprintf(what, sizeof what, "%s inputs and production", shape);
  arm(what);
  auto rnd = [&](const Shape& sh, DType dt) {
    Tensor t = Tensor::empty(sh, dt, dev);
    normal_(t, gen, 0.0, 1.0);
    return t;
  };
  const int64_t B = cs.B, T = cs.T, H = cs.H, K = cs.K, V = cs.V;
  GdnInputs in;
  {
    Tensor qr = rnd({B, T, H, K}, DType::bf16), kr = rnd({B, T, H, K}, DType::bf16);
    in.q = Tensor::empty(qr.shape(), DType::bf16, dev);
    in.k = Tensor::empty(kr.shape(), DType::bf16, dev);
    Tensor rq = Tensor::empty({B * T * H}, DType::f32, dev), rk = Tensor::empty({B * T * H}, DType::f32, dev);
    l2norm_fwd(qr, 1e-6, in.q, rq);
    l2norm_fwd(kr, 1e-6, in.k, rk);
  }
  in.v = rnd({B, T, H, V}, DType::bf16);
  {
    // g = logsigmoid(N(0, 1)), beta = sigmoid(U(0, 1)), as experiments/bench/bench_gdn.cu draws them.
    std::vector<float> g = rnd({B, T, H}, DType::f32).to_vector<float>();
    for (float& x : g) x = -std::log1p(std::exp(-x));
    in.g = Tensor::from_vector(g, {B, T, H}, DType::f32, dev);
    Tensor braw = Tensor::empty({B, T, H}, DType::f32, dev);
    uniform_(braw, gen, 0.0, 1.0);
    std::vector<float> b = braw.to_vector<float>();
    for (float& x : b) x = 1.f / (1.f + std::exp(-x));
    in.beta = Tensor::from_vector(b, {B, T, H}, DType::f32, dev);
  }
  GdnArgs args;
  args.scale = 1.0 / std::sqrt(double(K));
  const GdnShape s0 = GdnShape::of(in.q, in.v, args);
  if (cs.mask) {
    in.mask = Tensor::empty({s0.NC, H}, DType::f32, dev);
    uniform_(in.mask, gen, 0.0, 1.0);
  }
  Tensor dout = rnd(in.v.shape(), DType::bf16);
  GdnSaved saved{Tensor::empty({B, T, H}, DType::f32, dev), Tensor::empty({B, T, H, kGdnChunk}, DType::bf16, dev)};
  {
    Tensor o = Tensor::empty(in.v.shape(), DType::bf16, dev);
    cuda::gdn_chunk_fwd(args, in, o, Tensor(), saved);
  }
  // Production's backward up to the chunk gradients (gdn_chunk_bwd's own sequence, entry.cu).
  Plan pl = make_plan(args, in, "gdn_chunk_bwd_wgmma lab", nullptr);
  const GdnShape& s = pl.s;
  PrepOut pr = run_prep(pl, args, in, saved, /*recompute=*/true);
  Tensor h = Tensor::empty({s.NC, s.HV, s.K, s.V}, DType::bf16, dev);
  Tensor vnew = Tensor::empty({s.NC, s.HV, kC, s.V}, DType::bf16, dev);
  Tensor dh = Tensor::empty({s.NC, s.HV, s.K, s.V}, DType::bf16, dev);
  Tensor dv2 = Tensor::empty({s.NC, s.HV, kC, s.V}, DType::bf16, dev);
  if (pl.tune.joint) {
    run_state_fwd_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), h, vnew, dh, dv2);
  } else {
    run_state_fwd(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vnew});
    run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2);
  }
  const GdnGrads gp = make_grads(in, s, dev), gl = make_grads(in, s, dev);
  auto prod = [&] { run_chunk_bwd(pl, args, in, saved, pr, dout, h, vnew, dh, dv2, gp); };
  for (const Tensor* t : {&gp.dq, &gp.dk, &gp.dv, &gp.dg, &gp.dbeta, &gp.dmask}) poison(*t, st);
  prod();
  NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
  const double tp = bench::median_ms(prod, reps, st);

  // The lab's parameters: run_chunk_bwd's (chunk_bwd.cu), the outputs the lab's own.
  ChunkBwdParams<bf16> p{};
  set_qkv<bf16>(p, in);
  p.chunks = pl.chunks();
  set_sizes(p, s, args);
  p.dout = dout.data<bf16>();
  p.a_inv = saved.a_inv.data<bf16>();
  p.h = h.data<bf16>();
  p.dh = dh.data<bf16>();
  p.vnew = vnew.data<bf16>();
  p.dv2 = dv2.data<bf16>();
  p.gam = pr.gam.data<float>();
  p.beta = in.beta.data<float>();
  p.mask = data_or_null<float>(in.mask);
  p.dmask = data_or_null<float>(gl.dmask);
  p.dq = gl.dq.data<bf16>();
  p.dk = gl.dk.data<bf16>();
  p.dv = gl.dv.data<bf16>();
  p.dg = gl.dg.data<float>();
  p.dbeta = gl.dbeta.data<float>();

  bool ok_all = true;
  for (const Variant variant : variants) {
    auto lab = [&] { lab_chunk_bwd(variant, pl, p); };
    std::snprintf(what, sizeof what, "%s %s", shape, variant_name(variant));
    arm(what);
    std::printf("%-30s %-9s ", shape, variant_name(variant));  // before the run: a hang names its case
    std::fflush(stdout);
    for (const Tensor* t : {&gl.dq, &gl.dk, &gl.dv, &gl.dg, &gl.dbeta, &gl.dmask}) poison(*t, st);
    lab();
    NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
    const Diff e[6] = {compare(gp.dq, gl.dq), compare(gp.dk, gl.dk),     compare(gp.dv, gl.dv),
                       compare(gp.dg, gl.dg), compare(gp.dbeta, gl.dbeta), compare(gp.dmask, gl.dmask)};
    const char* names[6] = {"dq", "dk", "dv", "dg", "dbeta", "dmask"};
    // "bits": every output production's bits; "close": relative RMS within 2e-3 (dq, dk, dv) / 5e-3 (the f32 gate
    // and mask gradients, sums with cancellation), nothing non-finite; else a mismatch.
    bool bits = true, close = true;
    for (int i = 0; i < 6; ++i) {
      bits = bits && e[i].differ == 0 && e[i].nonfinite == 0;
      close = close && e[i].nonfinite == 0 && e[i].rel_rms() <= (i < 3 ? 2e-3 : 5e-3);
    }
    ok_all = ok_all && close;
    const double tl = bench::median_ms(lab, reps, st);
    std::printf("%9.4f %9.4f %8.3f  %-9.2e %-9.2e %-9.2e %-9.2e %-9.2e %-9.2e %-8s %s\n", tp, tl, tl / tp,
                e[0].rel_rms(), e[1].rel_rms(), e[2].rel_rms(), e[3].rel_rms(), e[4].rel_rms(), e[5].rel_rms(),
                bits ? "bits" : close ? "close" : "MISMATCH", kernel_resources(variant, K).c_str());
    if (!bits) {
      std::printf("    differing / non-finite elements:");
      for (int i = 0; i < 6; ++i)
        std::printf(" %s %lld/%lld", names[i], (long long)e[i].differ, (long long)e[i].nonfinite);
      std::printf("\n");
    }
  }
  return ok_all;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  bool only_340m = false;
  std::vector<Variant> variants(std::begin(kVariants), std::end(kVariants));
  const char* usage =
      "usage: natsl_lab_gdn_chunk_bwd_wgmma [--reps N] [--variant copies|imm|copies-xp|imm-xp|all] [--only 340m]\n";
  for (int i = 1; i < argc; i += 2) {
    const std::string key = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
    const std::string val = argv[i + 1];
    if (key == "--reps") {
      reps = std::atoi(val.c_str());
    } else if (key == "--only" && val == "340m") {
      only_340m = true;
    } else if (key == "--variant" && val != "all") {
      variants.clear();
      for (const Variant v : kVariants)
        if (val == variant_name(v)) variants.push_back(v);
      if (variants.empty()) {
        std::fprintf(stderr, "%s", usage);
        return 2;
      }
    } else if (key != "--variant") {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
  }
  std::signal(SIGALRM, on_alarm);
  arm("device start-up");
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::fprintf(stderr, "gdn_chunk_bwd_wgmma lab: no CUDA device; it needs an sm_90 GPU (H100/H200)\n");
    return 1;
  }
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9 || prop.minor != 0) {
    std::fprintf(stderr, "gdn_chunk_bwd_wgmma lab: needs an sm_90 GPU (H100/H200); this is %s\n", prop.name);
    return 1;
  }
  cudaStream_t st = activate(0);
  Generator gen(2027);
  std::printf("GDN chunk-gradient kernel, bf16, wgmma lab vs production mma.sync (%s timing, %d reps, %s)\n",
              bench::timing_method(), reps, prop.name);
  std::printf("%-30s %-9s %9s %9s %8s  %-9s %-9s %-9s %-9s %-9s %-9s %-8s %s\n", "shape", "lab", "prod ms", "lab ms",
              "lab/prod", "dq rrms", "dk rrms", "dv rrms", "dg rrms", "dbeta", "dmask", "check", "lab kernel");
  bool all_ok = true;
  std::vector<Case> cases;
  if (!only_340m) {
    cases.push_back({1, 4000, 6, 128, 256, true});   // a partial last chunk (len 32), a mask
    cases.push_back({2, 1000, 2, 64, 128, false});   // K 64 (one K tile), V 128, no mask, partial chunks
  }
  cases.push_back({8, 4096, 6, 128, 256, true});     // natsl-340m's GDN branch
  for (const Case& cs : cases) all_ok = run_case(cs, reps, variants, gen, st) && all_ok;
  alarm(0);
  std::printf("gdn_chunk_bwd_wgmma lab: %s (bits, or relative RMS 2e-3 dq dk dv / 5e-3 dg dbeta dmask)\n",
              all_ok ? "all ok" : "FAILED");
  return all_ok ? 0 : 1;
}
