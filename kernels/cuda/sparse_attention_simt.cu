// Plain (no tensor core) CUDA chunk-selected attention: f32 arithmetic on f32 or bf16 data, any chunk size,
// head dims up to 128 (q/k) and 256 (v). It serves f32 models (where bf16 products would cost accuracy) and
// chunk sizes other than 64; speed is secondary. One warp per row, the lanes splitting the head dims:
//   forward  warp per query row: online softmax over the visible keys, as the CPU reference;
//   backward warp per query row for dq (no atomics), warp per key row for dk, dv and the row's share of dm.
#include "core/cuda_check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/sparse_attention.cuh"

namespace natsl::kernels::cuda::sparse_attn {
namespace {

constexpr int kMaxDk = 128, kMaxDv = 256;
constexpr int kKL = kMaxDk / 32, kVL = kMaxDv / 32;  // elements per lane
constexpr int kWarpsPerBlock = 4;

// Loads row[lane + 32u] for u < L (zero past n).
template <int L, class T>
__device__ __forceinline__ void load_row(const T* row, int n, float (&x)[L]) {
  const int lane = int(threadIdx.x) & 31;
#pragma unroll
  for (int u = 0; u < L; ++u) x[u] = lane + 32 * u < n ? to_f32(row[lane + 32 * u]) : 0.f;
}
template <int L, class T>
__device__ __forceinline__ float dot_row(const float (&x)[L], const T* row, int n) {
  const int lane = int(threadIdx.x) & 31;
  float s = 0.f;
#pragma unroll
  for (int u = 0; u < L; ++u)
    if (lane + 32 * u < n) s += x[u] * to_f32(row[lane + 32 * u]);
  return warp_sum(s);
}
template <int L, class T>
__device__ __forceinline__ void axpy_row(float (&acc)[L], float w, const T* row, int n) {
  const int lane = int(threadIdx.x) & 31;
#pragma unroll
  for (int u = 0; u < L; ++u)
    if (lane + 32 * u < n) acc[u] += w * to_f32(row[lane + 32 * u]);
}
template <int L, class T>
__device__ __forceinline__ void store_row(T* row, int n, const float (&x)[L], float mult) {
  const int lane = int(threadIdx.x) & 31;
#pragma unroll
  for (int u = 0; u < L; ++u)
    if (lane + 32 * u < n) row[lane + 32 * u] = from_f32<T>(x[u] * mult);
}

// Calls f(j0, j1, own) for the key ranges query token i of (b, r) visits: its own chunk up to i, then the
// selected earlier chunks.
template <class F>
__device__ __forceinline__ void for_each_key_block(const Geometry& g, int b, int r, int i, F&& f) {
  const int qc = i / g.C;
  f(qc * g.C, i + 1, true);
  const int32_t* list = g.chunks + (int64_t(b) * g.Hr + r) * g.NC;
  const int n = g.prefix[(int64_t(b) * g.Hr + r) * (g.NC + 1) + qc];
  for (int s = 0; s < n; ++s) f(list[s] * g.C, min(g.T, list[s] * g.C + g.C), false);
}

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) simt_fwd_kernel(const Geometry g, const FwdPtrs p) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;  // (b * T + i) * Ha + a
  if (row >= int64_t(g.B) * g.T * g.Ha) return;
  const int a = int(row % g.Ha), i = int(row / g.Ha % g.T), b = int(row / g.Ha / g.T);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  float qv[kKL], acc[kVL];
  load_row(q + row * g.Dk, g.Dk, qv);
#pragma unroll
  for (int u = 0; u < kVL; ++u) acc[u] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int64_t base = int64_t(b) * g.T * g.Ha + a;  // row of token 0
  for_each_key_block(g, b, a / g.G, i, [&](int j0, int j1, bool) {
    for (int j = j0; j < j1; ++j) {
      const int64_t kr = base + int64_t(j) * g.Ha;
      const float s = g.scale * dot_row(qv, k + kr * g.Dk, g.Dk);
      if (s > m) {
        const float corr = expf(m - s);
        l *= corr;
#pragma unroll
        for (int u = 0; u < kVL; ++u) acc[u] *= corr;
        m = s;
      }
      const float pe = expf(s - m);
      l += pe;
      axpy_row(acc, pe, v + kr * g.Dv, g.Dv);
    }
  });
  store_row(static_cast<T*>(p.o) + row * g.Dv, g.Dv, acc, 1.f / l);
  if ((threadIdx.x & 31) == 0) p.lse[row] = m + logf(l);
}

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) simt_dq_kernel(const Geometry g, const BwdPtrs p) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= int64_t(g.B) * g.T * g.Ha) return;
  const int a = int(row % g.Ha), i = int(row / g.Ha % g.T), b = int(row / g.Ha / g.T);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  float qv[kKL], dov[kVL], dq[kKL];
  load_row(static_cast<const T*>(p.q) + row * g.Dk, g.Dk, qv);
  load_row(static_cast<const T*>(p.dout) + row * g.Dv, g.Dv, dov);
#pragma unroll
  for (int u = 0; u < kKL; ++u) dq[u] = 0.f;
  const float lse = p.lse[row], D = p.delta[row];
  const int64_t base = int64_t(b) * g.T * g.Ha + a;
  for_each_key_block(g, b, a / g.G, i, [&](int j0, int j1, bool own) {
    if (own && p.drop_own) return;
    for (int j = j0; j < j1; ++j) {
      const int64_t kr = base + int64_t(j) * g.Ha;
      const float pe = expf(g.scale * dot_row(qv, k + kr * g.Dk, g.Dk) - lse);
      const float ds = pe * (dot_row(dov, v + kr * g.Dv, g.Dv) - D);
      axpy_row(dq, ds, k + kr * g.Dk, g.Dk);
    }
  });
  store_row(static_cast<T*>(p.dq) + row * g.Dk, g.Dk, dq, g.scale);
}

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) simt_dkdv_kernel(const Geometry g, const BwdPtrs p) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;  // key token j
  if (row >= int64_t(g.B) * g.T * g.Ha) return;
  const int a = int(row % g.Ha), j = int(row / g.Ha % g.T), b = int(row / g.Ha / g.T);
  const int r = a / g.G, c = j / g.C;
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  float kv[kKL], vv[kVL], dk[kKL], dv[kVL];
  load_row(static_cast<const T*>(p.k) + row * g.Dk, g.Dk, kv);
  load_row(static_cast<const T*>(p.v) + row * g.Dv, g.Dv, vv);
#pragma unroll
  for (int u = 0; u < kKL; ++u) dk[u] = 0.f;
#pragma unroll
  for (int u = 0; u < kVL; ++u) dv[u] = 0.f;
  const int32_t* pre = g.prefix + (int64_t(b) * g.Hr + r) * (g.NC + 1);
  const bool selected = pre[c + 1] > pre[c];
  const int64_t base = int64_t(b) * g.T * g.Ha + a;
  float dm_part = 0.f;
  auto visit = [&](int i0, int i1, bool own) {
    for (int i = i0; i < i1; ++i) {
      const int64_t qr = base + int64_t(i) * g.Ha;
      const float pe = expf(g.scale * dot_row(kv, q + qr * g.Dk, g.Dk) - p.lse[qr]);
      const float ds = pe * (dot_row(vv, dout + qr * g.Dv, g.Dv) - p.delta[qr]);
      axpy_row(dk, ds, q + qr * g.Dk, g.Dk);
      axpy_row(dv, pe, dout + qr * g.Dv, g.Dv);
      if (!own) dm_part += ds;
    }
  };
  if (!p.drop_own) visit(j, min(g.T, c * g.C + g.C), true);
  if (selected) visit(c * g.C + g.C, g.T, false);
  store_row(static_cast<T*>(p.dk) + row * g.Dk, g.Dk, dk, g.scale);
  store_row(static_cast<T*>(p.dv) + row * g.Dv, g.Dv, dv, 1.f);
  if (p.dm_part != nullptr && (threadIdx.x & 31) == 0) p.dm_part[row] = selected ? dm_part : 0.f;
}

unsigned blocks_for(const Geometry& g) {
  return unsigned((int64_t(g.B) * g.T * g.Ha + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

bool simt_supported(const Geometry& g) { return g.Dk >= 1 && g.Dk <= kMaxDk && g.Dv >= 1 && g.Dv <= kMaxDv; }

void simt_fwd(const Geometry& g, const FwdPtrs& p, bool bf16_data, cudaStream_t s) {
  if (int64_t(g.B) * g.T * g.Ha == 0) return;
  if (bf16_data) simt_fwd_kernel<bf16><<<blocks_for(g), kWarpsPerBlock * 32, 0, s>>>(g, p);
  else simt_fwd_kernel<float><<<blocks_for(g), kWarpsPerBlock * 32, 0, s>>>(g, p);
  NATSL_CUDA_CHECK_LAUNCH();
}

void simt_bwd(const Geometry& g, const BwdPtrs& p, bool bf16_data, cudaStream_t s) {
  if (int64_t(g.B) * g.T * g.Ha == 0) return;
  if (bf16_data) {
    simt_dq_kernel<bf16><<<blocks_for(g), kWarpsPerBlock * 32, 0, s>>>(g, p);
    simt_dkdv_kernel<bf16><<<blocks_for(g), kWarpsPerBlock * 32, 0, s>>>(g, p);
  } else {
    simt_dq_kernel<float><<<blocks_for(g), kWarpsPerBlock * 32, 0, s>>>(g, p);
    simt_dkdv_kernel<float><<<blocks_for(g), kWarpsPerBlock * 32, 0, s>>>(g, p);
  }
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda::sparse_attn
