// Forward state pass (with its output fused in) whose tiles come in by the bulk tensor copy engine
// (GdnPlan::tma, the default; bf16). Why: at B2 T16384 the plain pass spends most of a step issuing ~3,800 16-byte cp.async
// (loads only 0.45 ms, compute only 0.35, together 0.71 on the H200), and one producer warp issuing them all is
// slower still (0.94). Here one thread of a producer warp issues 3 KT + 2 tensor copies and one bulk copy per
// chunk, each completing on the stage's mbarrier, while the compute warps only compute.
//
// The copied W, K, Q, P tiles are unpadded 64 x 64 bf16 tiles in the 128-byte swizzle (Swizzled128, gdn/tile.cuh),
// the U tile a dense 64 x VW tile; the state, v_new tiles the step writes itself stay padded. Rows of K past a
// partial chunk's end hold the next sequence's keys (or the copy's zeros at the end of the tensor): the compute
// warps zero them before use, as the cp.async path's zero fill does, so the sums are the same.
#include "kernels/cuda/gdn/state_fwd.cuh"
#include "kernels/cuda/gdn/tma.cuh"

namespace natsl::kernels::cuda::gdn {

namespace {

struct TmaMaps {
  CUtensorMap w, k, q, u, p;
};

template <int KT, int STAGES, int VW>
__global__ void __launch_bounds__(4 * VW + 32, 1)
    state_fwd_tma_kernel(const __grid_constant__ TmaMaps maps, StateFwdParams<bf16> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int NTH = 4 * VW;  // compute threads; the producer warp comes after them
  constexpr int SB = tma_stage_bytes<KT, VW>();
  unsigned char* sm = tma_align(smem_raw);
  bf16* Hs = reinterpret_cast<bf16*>(sm + STAGES * SB);
  uint64_t* full = reinterpret_cast<uint64_t*>(sm + STAGES * SB + (KT + 2) * kTileBytes<bf16>);
  uint64_t* empty = full + STAGES;
  auto tile_at = [&](int s, int i) { return sm + s * SB + i * kSwTileBytes; };  // i-th 8 KB tile of stage s
  auto gam_at = [&](int s) { return reinterpret_cast<float*>(sm + s * SB + tma_gamma_offset<KT, VW>()); };
  const int n = blockIdx.x, hv = blockIdx.y, c0 = blockIdx.z * VW, h = hv / (p.HV / p.H);
  const SeqInfo si = p.seqs[n];
  const int nch = si.nchunks;
  init_stage_barriers<STAGES>(full, empty, 1, NTH / 32);

  if (threadIdx.x >= NTH) {  // producer: one thread issues every copy
    if (threadIdx.x == NTH) {
      for (int ci = 0; ci < nch; ++ci) {
        const int s = ci % STAGES;
        if (ci >= STAGES) mbar_wait_parity(empty + s, uint32_t(ci / STAGES - 1) & 1u);
        const int row0 = si.row0 + kC * ci, tile_row = (si.first_chunk + ci) * p.HV * kC + hv * kC;
        mbar_arrive_expect(full + s, uint32_t(tma_gamma_offset<KT, VW>() + kC * 4));
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
          tma_load_2d(tile_at(s, kt), &maps.w, kt * kC, tile_row, full + s);
          tma_load_2d(tile_at(s, KT + kt), &maps.k, h * p.K + kt * kC, row0, full + s);
          tma_load_2d(tile_at(s, 2 * KT + kt), &maps.q, h * p.K + kt * kC, row0, full + s);
        }
        tma_load_2d(tile_at(s, 3 * KT), &maps.p, 0, tile_row, full + s);
        tma_load_2d(tile_at(s, 3 * KT + 1), &maps.u, c0, tile_row, full + s);
        bulk_g2s(gam_at(s), p.gam + int64_t(tile_row), kC * 4, full + s);
      }
    }
    return;
  }

  const Frag f;
  Acc hacc[KT];
  load_state<KT>(hacc, f, p.h0 ? p.h0 + (int64_t(n) * p.HV + hv) * p.K * p.V : nullptr, p.V, c0);
  for (int ci = 0; ci < nch; ++ci) {
    const int s = ci % STAGES, len = min(kC, si.len - kC * ci);
    mbar_wait_parity(full + s, uint32_t(ci / STAGES) & 1u);
    if (len < kC) zero_tile_rows<NTH>(tile_at(s, KT), KT, kC * 2, len);  // the K tiles
    // The step's first barrier orders the zeroing before the K tiles are read.
    state_fwd_step_on<bf16, KT, true, VW>(p, hacc, TmaStage<KT, VW>{reinterpret_cast<const bf16*>(tile_at(s, 0))}, Hs,
                                      gam_at(s), si.first_chunk + ci, si.row0 + kC * ci, len, hv, c0,
                                      [] { compute_sync<NTH>(); });
    release_stage(empty + s, /*wrote_shared=*/len < kC);  // the zeroed rows
  }
  if (p.ht) {
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
      acc_to_global<float>(hacc[kt], f, p.ht + ((int64_t(n) * p.HV + hv) * p.K + kt * kC) * p.V + c0, p.V, kC);
  }
}

template <int KT, int STAGES, int VW>
void launch_tma(const Plan& pl, const TmaMaps& maps, const StateFwdParams<bf16>& p) {
  launch_smem(state_fwd_tma_kernel<KT, STAGES, VW>, dim3(unsigned(pl.s.N), unsigned(pl.s.HV), unsigned(pl.s.V / VW)),
              4 * VW + 32, tma_smem<KT, VW, STAGES>(), 1, pl.stream, maps, p);
}

// The requested stages (1, 2 or 3), or fewer where they do not fit; false when 1 does not fit either. One stage
// (~100 KB at K = 128, V tile 32) lets two CTAs share an SM, the other CTA's step covering this one's copies.
template <int KT, int VW>
bool launch_tma_stages(const Plan& pl, const TmaMaps& maps, const StateFwdParams<bf16>& p, int stages) {
  constexpr int kSm90Max = 227 * 1024;
  const int avail = max_smem_per_block(pl.dev.index);
  if constexpr (tma_smem<KT, VW, 3>() <= kSm90Max)
    if (stages >= 3 && tma_smem<KT, VW, 3>() <= avail) return launch_tma<KT, 3, VW>(pl, maps, p), true;
  if constexpr (tma_smem<KT, VW, 2>() <= kSm90Max)
    if (stages >= 2 && tma_smem<KT, VW, 2>() <= avail) return launch_tma<KT, 2, VW>(pl, maps, p), true;
  if (tma_smem<KT, VW, 1>() <= avail) return launch_tma<KT, 1, VW>(pl, maps, p), true;
  return false;
}

}  // namespace

bool launch_state_fwd_tma(const Plan& pl, const StateFwdParams<bf16>& p, int vw, int stages) {
  const GdnShape& s = pl.s;
  const int64_t tok_rows = s.B * s.T, tile_rows = s.NC * s.HV * kC;
  // Copy coordinates are 32-bit; the tensor map needs 16-byte aligned bases (check_aligned) and row pitches.
  if (tok_rows >= (int64_t(1) << 31) || tile_rows >= (int64_t(1) << 31) || s.V % vw != 0) return false;
  if (s.K != 64 && s.K != 128) return false;  // K = 256 does not fit two stages
  TmaMaps maps;
  maps.w = tensor_map_2d(p.w, tile_rows, s.K, s.K, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.k = tensor_map_2d(p.k, tok_rows, s.H * s.K, s.H * s.K, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.q = tensor_map_2d(p.q, tok_rows, s.H * s.K, s.H * s.K, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.p = tensor_map_2d(p.p, tile_rows, kC, kC, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.u = tensor_map_2d(p.u, tile_rows, s.V, s.V, kC, vw, CU_TENSOR_MAP_SWIZZLE_NONE);
  bool ok = false;
  dispatch_kt<bf16>(s.K, "gdn state pass", [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    if constexpr (KT <= 2) {
      ok = vw == 32 ? launch_tma_stages<KT, 32>(pl, maps, p, stages) : launch_tma_stages<KT, 64>(pl, maps, p, stages);
    }
  });
  return ok;
}

}  // namespace natsl::kernels::cuda::gdn
