// Chunk-parallel gradient kernel of the CUDA GDN backward (gdn-algorithm.md §4 steps 4-6), one CTA per
// (chunk, v head). With h_n, dh[n] (state leaving the chunk), v_new and dv2 from the two state passes:
//   phase A (over V tiles): dS = scale M o Gamma o (dO v_new^T), dT_u = dv2 V^T, dY = T^T dv2 -> dv = beta dY
//   phase B (over K tiles): dq = scale diag(e) dO h_n^T + dS K
//                           dk = m diag(exp(gam_L - gam)) v_new dh^T + dS^T Q + diag(beta e) T^T dw,
//                           dw = -dv2 h_n^T,  dT_w = dw K^T,  KK^T
//   phase C: dT = StrictLower(dT_w diag(beta e) + dT_u diag(beta)), dA = -T^T dT T^T, dB = dA o Gamma,
//            dk += diag(beta) dB K + (diag(beta) dB)^T K
//   dgamma from row dots (dq.q - dk.k, dX.X, dA o A rows minus columns, the e_L and write terms at the last
//   row), then dg = reverse cumsum of dgamma within the chunk. dmask = <dh[n], W_n> = sum(dk_inter_raw o K).
#include "kernels/cuda/gdn/bwd.cuh"

namespace natsl::kernels::cuda::gdn {
namespace {

// PIPE: two sets of the five streamed tiles, so the next V tile loads while this one computes (bf16; the f32
// path has no room for the second set).
template <class D, int KT, bool PIPE>
constexpr int chunk_bwd_smem() {
  return (PIPE ? 15 : 10) * kTileBytes<D> + (KT + 1) * kTileBytes<float> + (2 + 2 * kRowSlots + kRowColSlots) * kC * 4 + 16 * 4;
}

// Makes V tile vt's streamed tiles ready: with PIPE tile vt + 1 is issued first (into the other set) and all but
// its loads waited for; without, tile vt is issued and waited for here. Ends with the barrier that publishes them.
template <bool PIPE, class Issue>
__device__ __forceinline__ void next_vtile(int vt, int VT, const Issue& issue) {
  if (!PIPE) {
    issue(vt);
    cp_async_wait<0>();
  } else if (vt + 1 < VT) {
    issue(vt + 1);
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

template <class D, int KT, bool PIPE>
__global__ void __launch_bounds__(kThreads, 1) chunk_bwd_kernel(ChunkBwdParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int TE = kC * kLd<D>, TF = kC * kLd<float>;
  constexpr int ld = kLd<D>, fld = kLd<float>;
  D* Ts = reinterpret_cast<D*>(smem_raw);
  D* dSs = Ts + TE;
  D* Qk = dSs + TE;
  D* Kk = Qk + TE;
  D* B0 = Kk + TE;
  D* B1 = B0 + TE;
  D* B2 = B1 + TE;
  D* dWs = B0 + (PIPE ? 10 : 5) * TE;
  float* dKp = reinterpret_cast<float*>(dWs + TE);  // KT f32 tiles: dk before the dB terms
  float* dTus = dKp + KT * TF;
  float* gam = dTus + TF;
  float* bet = gam + kC;
  float* dbeta = bet + kC;               // [kRowSlots][kC] (acc_row_sum_add); slot 0 the total at the end
  float* dgam = dbeta + kRowSlots * kC;  // [kRowColSlots][kC] (row and column sums); the same
  float* rho = dgam + kRowColSlots * kC; // sum_k dX_ik k_ik, [kRowSlots][kC]
  float* red = rho + kRowSlots * kC;  // 16 floats

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

  load_tile<D>(Ts, p.a_inv + (int64_t(row0) * p.HV + hv) * kC, int64_t(p.HV) * kC, len);
  load_row64(gam, p.gam + tile_id * kC);
  cp_async_commit();
  if (tid < kC) {
    bet[tid] = tid < len ? p.beta[int64_t(row0 + tid) * p.HV + hv] : 0.f;
    zero_slots<kRowSlots>(dbeta, tid);
    zero_slots<kRowColSlots>(dgam, tid);
    zero_slots<kRowSlots>(rho, tid);
  }
  cp_async_wait<0>();
  __syncthreads();
  const float gL = gam[len - 1], eL = __expf(gL);
  const float m = p.mask ? p.mask[tile_id] : 1.f;

  // ---- phase A: over V tiles
  Acc dS, dTu;
  zero(dS);
  zero(dTu);
  const int VT = p.V / kC;
  auto set = [&](int it) { return B0 + (PIPE ? (it & 1) : 0) * 5 * TE; };
  auto issue_a = [&](int vt) {
    D* b = set(vt);
    load_tile<D>(b, doc + vt * kC, v_ld, len);
    load_tile<D>(b + TE, vnc + vt * kC, p.V, kC);
    load_tile<D>(b + 2 * TE, dv2c + vt * kC, p.V, kC);
    load_tile<D>(b + 3 * TE, vc + vt * kC, v_ld, len);
    cp_async_commit();
  };
  if (PIPE) issue_a(0);
  for (int vt = 0; vt < VT; ++vt) {
    D* const b = set(vt);
    D *const A0 = b, *const A1 = b + TE, *const A2 = b + 2 * TE, *const A3 = b + 3 * TE;
    next_vtile<PIPE>(vt, VT, issue_a);
    tile_mma<false, true>(dS, A0, A1);
    tile_mma<false, true>(dTu, A2, A3);
    Acc y;
    zero(y);
    tile_mma<true, false>(y, Ts, A2);
    acc_to_global<D>(y, f, p.dv + (int64_t(row0) * p.HV + hv) * p.V + vt * kC, v_ld, len,
                     [&](int i, int, float x) { return bet[i] * x; });
    acc_row_sum_add(y, f, dbeta, [&](int i, int j, float x) { return x * f32(A3[i * ld + j]); });
    __syncthreads();
  }
  acc_to_tile<D>(dS, f, dSs, [&](int i, int j, float x) {
    return (i >= j && i < len) ? p.scale * x * __expf(gam[i] - gam[j]) : 0.f;
  });
  acc_to_tile<float>(dTu, f, dTus);

  // ---- phase B: over K tiles
  Acc dTw, kk;
  zero(dTw);
  zero(kk);
  float hdh = 0.f, dm = 0.f;
  for (int kt = 0; kt < KT; ++kt) {
    load_tile<D>(Qk, qc + kt * kC, qk_ld, len);
    load_tile<D>(Kk, kc + kt * kC, qk_ld, len);
    Acc dq, dki, dw;
    zero(dq);
    zero(dki);
    zero(dw);
    auto issue_b = [&](int vt) {
      D* b = set(vt);
      load_tile<D>(b, hc + int64_t(kt) * kC * p.V + vt * kC, p.V, kC);
      load_tile<D>(b + TE, dhc + int64_t(kt) * kC * p.V + vt * kC, p.V, kC);
      load_tile<D>(b + 2 * TE, doc + vt * kC, v_ld, len);
      load_tile<D>(b + 3 * TE, vnc + vt * kC, p.V, kC);
      load_tile<D>(b + 4 * TE, dv2c + vt * kC, p.V, kC);
      cp_async_commit();
    };
    if (PIPE) issue_b(0);
    for (int vt = 0; vt < VT; ++vt) {
      D* const b = set(vt);
      D *const Hh = b, *const DHh = b + TE, *const DO = b + 2 * TE, *const VN = b + 3 * TE, *const DV2 = b + 4 * TE;
      next_vtile<PIPE>(vt, VT, issue_b);
      tile_mma<false, true>(dq, DO, Hh);
      tile_mma<false, true>(dki, VN, DHh);
      tile_mma<false, true>(dw, DV2, Hh);
      for (int idx = tid; idx < kC * kC; idx += kThreads) {
        const int r = idx >> 6, cc = idx & 63;
        hdh += f32(Hh[r * ld + cc]) * f32(DHh[r * ld + cc]);
      }
      __syncthreads();
    }
    tile_mma<false, true>(kk, Kk, Kk);
    // dq = scale diag(e) dO h^T + dS K
    scale_rows_exp(dq, f, gam, len, p.scale);
    tile_mma<false, false>(dq, dSs, Kk);
    acc_to_global<D>(dq, f, p.dq + (int64_t(row0) * p.H + h) * p.K + kt * kC, qk_ld, len);
    acc_row_sum_add(dq, f, dgam, [&](int i, int j, float x) { return x * f32(Qk[i * ld + j]); });
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
          dm += x * f32(Kk[i * ld + f.col(nt, b)]);
          x *= m;
        }
    }
    tile_mma<true, false>(dki, dSs, Qk);
    acc_row_sum_add(dki, f, dgam, [&](int i, int j, float x) { return -x * f32(Kk[i * ld + j]); });
    acc_to_tile<D>(dw, f, dWs, [](int, int, float x) { return -x; });
    __syncthreads();
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
        dki[nt][2 * hh] += be * dx[nt][2 * hh];
        dki[nt][2 * hh + 1] += be * dx[nt][2 * hh + 1];
      }
    }
    acc_to_tile<float>(dki, f, dKp + kt * TF);
    tile_mma<false, true>(dTw, dWs, Kk);
    __syncthreads();
  }

  // ---- phase C: through T = (I + A)^-1 into A
  acc_to_tile<D>(dTw, f, B0, [&](int i, int j, float x) {
    return (i > j && i < len) ? x * bet[j] * __expf(gam[j]) + dTus[i * fld + j] * bet[j] : 0.f;
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
  acc_to_tile<D>(da, f, B2, [&](int i, int, float x) { return bet[i] * x; });
  __syncthreads();
  for (int kt = 0; kt < KT; ++kt) {
    load_tile<D>(Kk, kc + kt * kC, qk_ld, len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    Acc dk;
    tile_to_acc<float>(dKp + kt * TF, f, dk);
    tile_mma<false, false>(dk, B2, Kk);
    tile_mma<true, false>(dk, B2, Kk);
    acc_to_global<D>(dk, f, p.dk + (int64_t(row0) * p.H + h) * p.K + kt * kC, qk_ld, len);
    __syncthreads();
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

template <class D, int KT>
void launch(const Plan& pl, const ChunkBwdParams<D>& p) {
  const int avail = max_smem_per_block(pl.dev.index);
  const dim3 grid(unsigned(pl.s.NC), unsigned(pl.s.HV));
  if constexpr (std::is_same_v<D, bf16>)
    if (chunk_bwd_smem<D, KT, true>() <= avail)
      return launch_smem(chunk_bwd_kernel<D, KT, true>, grid, kThreads, chunk_bwd_smem<D, KT, true>(), 1, pl.stream, p);
  constexpr int smem = chunk_bwd_smem<D, KT, false>();
  NATSL_CHECK(smem <= avail, "gdn chunk backward: K = ", pl.s.K, " needs more shared memory than this GPU has");
  launch_smem(chunk_bwd_kernel<D, KT, false>, grid, kThreads, smem, 1, pl.stream, p);
}

}  // namespace

void run_chunk_bwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved,
                   const PrepOut& pr, const Tensor& dout, const Tensor& h, const Tensor& vnew, const Tensor& dh,
                   const Tensor& dv2, const GdnGrads& grads) {
  const GdnShape& s = pl.s;
  if (s.NC == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(in.q.dtype(), "gdn chunk backward", T, [&] {
    ChunkBwdParams<T> p{};
    set_qkv<T>(p, in);
    p.chunks = pl.chunks();
    set_sizes(p, s, args);
    p.dout = dout.data<T>();
    p.a_inv = saved.a_inv.data<T>();
    p.h = h.data<T>();
    p.dh = dh.data<T>();
    p.vnew = vnew.data<T>();
    p.dv2 = dv2.data<T>();
    p.gam = pr.gam.data<float>();
    p.beta = in.beta.data<float>();
    p.mask = data_or_null<float>(in.mask);
    p.dmask = data_or_null<float>(grads.dmask);
    p.dq = grads.dq.data<T>();
    p.dk = grads.dk.data<T>();
    p.dv = grads.dv.data<T>();
    p.dg = grads.dg.data<float>();
    p.dbeta = grads.dbeta.data<float>();
    dispatch_kt<T>(s.K, "gdn chunk backward", [&](auto kt) { launch<T, decltype(kt)::value>(pl, p); });
  });
}

}  // namespace natsl::kernels::cuda::gdn
