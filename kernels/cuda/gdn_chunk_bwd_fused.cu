// Single-pass chunk gradient kernel of the CUDA GDN backward (bf16, K <= 128): the same math as
// chunk_bwd_kernel (gdn_chunk_bwd.cu; gdn-algorithm.md §4 steps 4-6), one CTA per (chunk, v head), but the
// V tiles are streamed once: each step loads dO, v_new, dv2, V and the KT tiles h[:, vt], dh[:, vt] and feeds
// all nine products that read them (dS, dT_u, dY and, per K tile, dO h^T, v_new dh^T, dv2 h^T), keeping the
// 3 KT + 2 accumulators in registers. The two-phase kernel loads dO, v_new and dv2 1 + KT times and runs
// three barriers per product pair; this one moves ~0.6x the bytes per CTA with two barriers per V tile.
// Measured (H200, issue shapes): 1.43 ms against the two-phase kernel's 0.99, so it is not the default
// (NATSL_GDN_CHUNKBWD=fused selects it); why is open (248 registers, a 104 KB first stage to wait for, and no
// loads in flight during the epilogue are the suspects; gdn_notes.md).
// Outputs (dv, dq, dk) leave through a shared tile as 16-byte rows instead of 4-byte fragment stores.
#include <cstdlib>

#include "kernels/cuda/gdn_bwd.cuh"

namespace natsl::kernels::cuda::gdn {
namespace {

using D = bf16;
constexpr int TE = kC * kLd<D>;  // elements per tile
constexpr int ld = kLd<D>;

// Stream stage: dO, v_new, dv2, V, then h[kt] (KT tiles), dh[kt] (KT tiles).
template <int KT>
constexpr int stage_tiles() {
  return 4 + 2 * KT;
}
// T, Q[KT], K[KT], the dv staging tile, two stream stages; then five rows of 64 floats and 16 floats.
template <int KT>
constexpr int fused_smem() {
  return (2 + 2 * KT + 2 * stage_tiles<KT>()) * kTileBytes<D> + (2 + 2 * kRowSlots + kRowColSlots) * kC * 4 + 16 * 4;
}

// Writes a shared 64x64 tile (rows < rows_valid) to global memory in 16-byte pieces.
__device__ __forceinline__ void tile_to_global(const D* s, D* g, int64_t gld, int rows_valid) {
  for (int idx = threadIdx.x; idx < kC * 8; idx += kThreads) {
    const int r = idx >> 3, c = (idx & 7) * 8;
    if (r < rows_valid) *reinterpret_cast<uint4*>(g + r * gld + c) = *reinterpret_cast<const uint4*>(s + r * ld + c);
  }
}

// sum over the tile of a o b (the h . dh term of dgamma at the last row), this thread's share.
__device__ __forceinline__ float tile_dot_part(const D* a, const D* b) {
  float s = 0.f;
  for (int idx = threadIdx.x; idx < kC * 8; idx += kThreads) {
    const int r = idx >> 3, c = (idx & 7) * 8;
    const uint4 x = *reinterpret_cast<const uint4*>(a + r * ld + c);
    const uint4 y = *reinterpret_cast<const uint4*>(b + r * ld + c);
    const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      s = fmaf(__uint_as_float(xs[i] << 16), __uint_as_float(ys[i] << 16), s);
      s = fmaf(__uint_as_float(xs[i] & 0xffff0000u), __uint_as_float(ys[i] & 0xffff0000u), s);
    }
  }
  return s;
}

template <int KT>
__global__ void __launch_bounds__(kThreads, 1) chunk_bwd_fused_kernel(ChunkBwdParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int ST = stage_tiles<KT>();
  D* Ts = reinterpret_cast<D*>(smem_raw);
  D* Qs = Ts + TE;          // KT tiles
  D* Ks = Qs + KT * TE;     // KT tiles
  D* Ys = Ks + KT * TE;     // dv staging
  D* S0 = Ys + TE;          // 2 * ST stream tiles; after the V loop, the tiles below
  float* gam = reinterpret_cast<float*>(S0 + 2 * ST * TE);
  float* bet = gam + kC;
  float* dbeta = bet + kC;               // [kRowSlots][kC] (acc_row_sum_add); slot 0 the total at the end
  float* dgam = dbeta + kRowSlots * kC;  // [kRowColSlots][kC] (row and column sums); the same
  float* rho = dgam + kRowColSlots * kC; // sum_k dX_ik k_ik, [kRowSlots][kC]
  float* red = rho + kRowSlots * kC;  // 16 floats
  // After the V loop the stream stages are free: dS, -dw, dT_u (f32, two tiles' room), B0-B2 of phase C and
  // staging tiles for dk (KT) and dq (KT). 7 + 2 KT <= 2 ST tiles.
  D* dSs = S0;
  D* dWs = S0 + TE;
  float* dTus = reinterpret_cast<float*>(S0 + 2 * TE);
  D* B0 = S0 + 4 * TE;
  D* B1 = S0 + 5 * TE;
  D* B2 = S0 + 6 * TE;
  D* Ydk = S0 + 7 * TE;
  D* Ydq = Ydk + KT * TE;
  static_assert(7 + 2 * KT <= 2 * stage_tiles<KT>(), "post-loop tiles must fit the stream stages");
  static_assert(2 * kTileBytes<D> >= kTileBytes<float>, "dT_u needs two tiles' room");

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
  D* dvc = p.dv + int64_t(row0) * v_ld + int64_t(hv) * p.V;
  const Frag f;
  const int tid = threadIdx.x;

  load_tile<D>(Ts, p.a_inv + (int64_t(row0) * p.HV + hv) * kC, int64_t(p.HV) * kC, len);
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    load_tile<D>(Qs + kt * TE, qc + kt * kC, qk_ld, len);
    load_tile<D>(Ks + kt * TE, kc + kt * kC, qk_ld, len);
  }
  load_row64(gam, p.gam + tile_id * kC);
  cp_async_commit();
  auto stage = [&](int vt) { return S0 + (vt & 1) * ST * TE; };
  auto issue = [&](int vt) {
    D* b = stage(vt);
    load_tile<D>(b, doc + vt * kC, v_ld, len);
    load_tile<D>(b + TE, vnc + vt * kC, p.V, kC);
    load_tile<D>(b + 2 * TE, dv2c + vt * kC, p.V, kC);
    load_tile<D>(b + 3 * TE, vc + vt * kC, v_ld, len);
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      load_tile<D>(b + (4 + kt) * TE, hc + int64_t(kt) * kC * p.V + vt * kC, p.V, kC);
      load_tile<D>(b + (4 + KT + kt) * TE, dhc + int64_t(kt) * kC * p.V + vt * kC, p.V, kC);
    }
    cp_async_commit();
  };
  issue(0);
  if (tid < kC) {
    bet[tid] = tid < len ? p.beta[int64_t(row0 + tid) * p.HV + hv] : 0.f;
    zero_slots<kRowSlots>(dbeta, tid);
    zero_slots<kRowColSlots>(dgam, tid);
    zero_slots<kRowSlots>(rho, tid);
  }

  // ---- one pass over the V tiles
  Acc dS, dTu, dq[KT], dki[KT], dw[KT];
  zero(dS);
  zero(dTu);
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    zero(dq[kt]);
    zero(dki[kt]);
    zero(dw[kt]);
  }
  float hdh = 0.f;
  const int VT = p.V / kC;
  for (int vt = 0; vt < VT; ++vt) {
    if (vt + 1 < VT) {
      issue(vt + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // this stage (and T, Q, K at vt = 0) landed; Ys free
    const D* b = stage(vt);
    const D *DO = b, *VN = b + TE, *DV2 = b + 2 * TE, *Vt = b + 3 * TE;
    {
      Acc y;
      zero(y);
      tile_mma<true, false>(y, Ts, DV2);  // dY = T^T dv2, dv = diag(beta) dY
      acc_row_sum_add(y, f, dbeta, [&](int i, int j, float x) { return x * f32(Vt[i * ld + j]); });
      acc_to_tile<D>(y, f, Ys, [&](int i, int, float x) { return bet[i] * x; });
    }
    tile_mma<false, true>(dS, DO, VN);
    tile_mma<false, true>(dTu, DV2, Vt);
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      const D *Hh = b + (4 + kt) * TE, *DHh = b + (4 + KT + kt) * TE;
      tile_mma<false, true>(dq[kt], DO, Hh);
      tile_mma<false, true>(dki[kt], VN, DHh);
      tile_mma<false, true>(dw[kt], DV2, Hh);
      hdh += tile_dot_part(Hh, DHh);
    }
    __syncthreads();  // Ys written; this stage read (the next issue may overwrite it)
    tile_to_global(Ys, dvc + vt * kC, v_ld, len);
  }
  // (the last step's second barrier freed the stream stages for the tiles below)

  const float gL = gam[len - 1], eL = __expf(gL);
  const float m = p.mask ? p.mask[tile_id] : 1.f;
  acc_to_tile<D>(dS, f, dSs, [&](int i, int j, float x) {
    return (i >= j && i < len) ? p.scale * x * __expf(gam[i] - gam[j]) : 0.f;
  });
  acc_to_tile<float>(dTu, f, dTus);
  __syncthreads();

  // ---- per K tile: dq, the inter-chunk and dS parts of dk, the WY terms through dw
  Acc dTw, kk;
  zero(dTw);
  zero(kk);
  float dm = 0.f;
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    const D *Qk = Qs + kt * TE, *Kk = Ks + kt * TE;
    tile_mma<false, true>(kk, Kk, Kk);
    // dq = scale diag(e) dO h^T + dS K
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int i = f.row(2 * hh);
      const float sc = i < len ? p.scale * __expf(gam[i]) : 0.f;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        dq[kt][nt][2 * hh] *= sc;
        dq[kt][nt][2 * hh + 1] *= sc;
      }
    }
    tile_mma<false, false>(dq[kt], dSs, Kk);
    acc_row_sum_add(dq[kt], f, dgam, [&](int i, int j, float x) { return x * f32(Qk[i * ld + j]); });
    acc_to_tile<D>(dq[kt], f, Ydq + kt * TE);
    // dk (step 4): m diag(exp(gam_L - gam)) v_new dh^T + dS^T Q
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int i = f.row(2 * hh);
      const float r = i < len ? __expf(gL - gam[i]) : 0.f;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = dki[kt][nt][2 * hh + e];
          x *= r;
          dm += x * f32(Kk[i * ld + f.col(nt, e)]);
          x *= m;
        }
    }
    tile_mma<true, false>(dki[kt], dSs, Qk);
    acc_row_sum_add(dki[kt], f, dgam, [&](int i, int j, float x) { return -x * f32(Kk[i * ld + j]); });
    acc_to_tile<D>(dw[kt], f, dWs, [](int, int, float x) { return -x; });
    __syncthreads();  // dWs and Ydq[kt] written
    tile_to_global(Ydq + kt * TE, p.dq + (int64_t(row0) * p.H + h) * p.K + kt * kC, qk_ld, len);
    // WY: dX = T^T dw; dk += diag(beta e) dX; dT_w += dw K^T
    Acc dx;
    zero(dx);
    tile_mma<true, false>(dx, Ts, dWs);
    acc_row_sum_add(dx, f, rho, [&](int i, int j, float x) { return x * f32(Kk[i * ld + j]); });
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int i = f.row(2 * hh);
      const float be = bet[i] * __expf(gam[i]);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        dki[kt][nt][2 * hh] += be * dx[nt][2 * hh];
        dki[kt][nt][2 * hh + 1] += be * dx[nt][2 * hh + 1];
      }
    }
    tile_mma<false, true>(dTw, dWs, Kk);
    __syncthreads();  // dWs read before the next K tile rewrites it
  }

  // ---- through T = (I + A)^-1 into A
  acc_to_tile<D>(dTw, f, B0, [&](int i, int j, float x) {
    return (i > j && i < len) ? x * bet[j] * __expf(gam[j]) + dTus[i * kLd<float> + j] * bet[j] : 0.f;
  });
  __syncthreads();
  {
    Acc m1;
    zero(m1);
    tile_mma<false, true>(m1, B0, Ts);  // dT T^T
    acc_to_tile<D>(m1, f, B1);
  }
  __syncthreads();
  Acc da;
  zero(da);
  tile_mma<true, false>(da, Ts, B1);  // T^T dT T^T = -dA
  // dB = StrictLower(dA o Gamma)
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
  acc_to_tile<D>(da, f, B2, [&](int i, int, float x) { return bet[i] * x; });
  __syncthreads();
  // dk += diag(beta) dB K + (diag(beta) dB)^T K
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    tile_mma<false, false>(dki[kt], B2, Ks + kt * TE);
    tile_mma<true, false>(dki[kt], B2, Ks + kt * TE);
    acc_to_tile<D>(dki[kt], f, Ydk + kt * TE);
  }

  // ---- the last row's terms, dbeta, reverse cumsum into dg
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    hdh += __shfl_xor_sync(0xffffffffu, hdh, o);
    dm += __shfl_xor_sync(0xffffffffu, dm, o);
  }
  if ((tid & 31) == 0) {
    red[tid >> 5] = hdh;
    red[8 + (tid >> 5)] = dm;
  }
  // The slots' totals (warp order), with the rho terms, into slot 0.
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
#pragma unroll
  for (int kt = 0; kt < KT; ++kt)
    tile_to_global(Ydk + kt * TE, p.dk + (int64_t(row0) * p.H + h) * p.K + kt * kC, qk_ld, len);
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

template <int KT>
void launch(const Plan& pl, const ChunkBwdParams<D>& p) {
  constexpr int smem = fused_smem<KT>();
  auto kern = chunk_bwd_fused_kernel<KT>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kern<<<dim3(unsigned(pl.s.NC), unsigned(pl.s.HV)), kThreads, smem, pl.stream>>>(p);
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool launch_chunk_bwd_fused(const Plan& pl, const ChunkBwdParams<bf16>& p) {
  const int avail = max_smem_per_block(pl.dev.index);
  if (pl.s.K == 64 && fused_smem<1>() <= avail) {
    launch<1>(pl, p);
    return true;
  }
  if (pl.s.K == 128 && fused_smem<2>() <= avail) {
    launch<2>(pl, p);
    return true;
  }
  return false;
}

}  // namespace natsl::kernels::cuda::gdn
