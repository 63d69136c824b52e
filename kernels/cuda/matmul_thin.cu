// Thin matrix products (kernels/cuda/matmul_thin.h: the three kernels and their summation orders).
#include "kernels/cuda/matmul_thin.h"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// V consecutive out elements (V = the operands' 16-byte vector): one 16-byte access, or two for f32 out from bf16
// operands (8 floats).
template <class O, int V>
__device__ __forceinline__ void load_out(const O* __restrict__ p, float (&f)[V]) {
  constexpr int OV = kVec<O>;
  static_assert(V % OV == 0, "out vector");
#pragma unroll
  for (int h = 0; h < V / OV; ++h) load_vec<O, OV>(p + h * OV, reinterpret_cast<float(&)[OV]>(f[h * OV]));
}
template <class O, int V>
__device__ __forceinline__ void store_out(O* __restrict__ p, const float (&f)[V]) {
  constexpr int OV = kVec<O>;
#pragma unroll
  for (int h = 0; h < V / OV; ++h) store_vec<O, OV>(p + h * OV, reinterpret_cast<const float(&)[OV]>(f[h * OV]));
}

// rows: out[m, n] = alpha sum_k a[m, k] b[n, k] + beta C[m, n], n < N; one warp a row.
template <class T, class O, int N>
__global__ void __launch_bounds__(kThreads) thin_rows_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                                             const O* __restrict__ c, O* __restrict__ out,
                                                             int64_t M, int64_t K, float alpha, float beta) {
  constexpr int V = kVec<T>;
  const int lane = threadIdx.x & 31;
  const int64_t m = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  if (m >= M) return;  // whole warps leave together
  const T* __restrict__ ar = a + m * K;
  float acc[N];
#pragma unroll
  for (int n = 0; n < N; ++n) acc[n] = 0.f;
  const int64_t nv = K / V;
#pragma unroll 4
  for (int64_t v = lane; v < nv; v += 32) {
    float x[V];
    load_vec<T, V>(ar + v * V, x);
#pragma unroll
    for (int n = 0; n < N; ++n) {
      float w[V];
      load_vec<T, V>(b + n * K + v * V, w);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[n] = fmaf(x[i], w[i], acc[n]);
    }
  }
#pragma unroll
  for (int n = 0; n < N; ++n) {
    const float s = warp_sum(acc[n]);
    if (lane == n) {
      float r = alpha * s;
      if (beta != 0.f) r += beta * to_f32(c[m * N + n]);
      out[m * N + n] = from_f32<O>(r);
    }
  }
}

// spread: out[m, j] = alpha sum_k a[m, k] b[k, j] + beta C[m, j], k < K; one thread V consecutive j.
template <class T, class O, int K>
__global__ void __launch_bounds__(kThreads) thin_spread_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                                               const O* __restrict__ c, O* __restrict__ out,
                                                               int64_t M, int64_t N, float alpha, float beta) {
  constexpr int V = kVec<T>;
  const int64_t nvr = N / V;
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= M * nvr) return;
  const int64_t m = idx / nvr, j = (idx - m * nvr) * V;
  float acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float ak = to_f32(a[m * K + k]);
    float w[V];
    load_vec<T, V>(b + k * N + j, w);
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = fmaf(ak, w[i], acc[i]);
  }
  float r[V];
  if (beta != 0.f) {
    float cv[V];
    load_out<O, V>(c + m * N + j, cv);
#pragma unroll
    for (int i = 0; i < V; ++i) r[i] = alpha * acc[i] + beta * cv[i];
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) r[i] = alpha * acc[i];
  }
  store_out<O, V>(out + m * N + j, r);
}

// gather, first pass: part[s, i, j] = sum over slab s's rows r of a[r, i] b[r, j], i < M. Block (blockIdx.x: VB
// column vectors, blockIdx.y: the slab); thread t owns vector t % VB and the rows g, g + G, ... of the slab
// (g = t / VB, G = kThreads / VB); the G groups' sums are added in group order through shared memory.
template <class T, int M>
__global__ void __launch_bounds__(kThreads) thin_gather_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                                               float* __restrict__ part, int64_t R, int64_t N,
                                                               int64_t slab_rows, int VB) {
  constexpr int V = kVec<T>;
  __shared__ float red[kThreads][V + 1];  // +1: no bank conflicts between the groups' rows
  const int t = threadIdx.x, G = kThreads / VB, g = t / VB;
  const int64_t nvec = N / V, vec = int64_t(blockIdx.x) * VB + t % VB;
  const int64_t r0 = int64_t(blockIdx.y) * slab_rows, r1 = std::min(R, r0 + slab_rows);
  float acc[M][V];
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[i][e] = 0.f;
  if (vec < nvec) {
#pragma unroll 2
    for (int64_t r = r0 + g; r < r1; r += G) {
      float x[V];
      load_vec<T, V>(b + r * N + vec * V, x);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        const float ai = to_f32(a[r * M + i]);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[i][e] = fmaf(ai, x[e], acc[i][e]);
      }
    }
  }
  float* __restrict__ ps = part + int64_t(blockIdx.y) * M * N;
#pragma unroll
  for (int i = 0; i < M; ++i) {
    if (G > 1) {
#pragma unroll
      for (int e = 0; e < V; ++e) red[t][e] = acc[i][e];
      __syncthreads();
      if (g == 0) {
        for (int h = 1; h < G; ++h)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[i][e] += red[h * VB + t][e];
      }
      __syncthreads();
    }
    if (g == 0 && vec < nvec) store_out<float, V>(ps + i * N + vec * V, acc[i]);
  }
}

// gather, second pass: out[i, j] = alpha sum_s part[s, i, j] (s in order) + beta C[i, j].
template <class O>
__global__ void __launch_bounds__(kThreads) thin_gather_finish_kernel(const float* __restrict__ part,
                                                                      const O* __restrict__ c, O* __restrict__ out,
                                                                      int64_t MN, int64_t slabs, float alpha,
                                                                      float beta) {
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= MN) return;
  float s = 0.f;
  for (int64_t q = 0; q < slabs; ++q) s += part[q * MN + idx];
  float r = alpha * s;
  if (beta != 0.f) r += beta * to_f32(c[idx]);
  out[idx] = from_f32<O>(r);
}

// f(Width<n>) for n = 1 .. kThinMax.
template <class F>
void with_thin(int64_t n, F&& f) {
  switch (n) {
    case 1: return f(Width<1>{});
    case 2: return f(Width<2>{});
    case 3: return f(Width<3>{});
    case 4: return f(Width<4>{});
    case 5: return f(Width<5>{});
    case 6: return f(Width<6>{});
    case 7: return f(Width<7>{});
    case 8: return f(Width<8>{});
    default: NATSL_FAIL("thin_matmul: dim ", n, " out of 1..", kThinMax);
  }
}

enum class Kind { None, Rows, Spread, Gather };

struct Problem {
  Kind kind = Kind::None;
  int64_t M = 0, N = 0, K = 0;  // out [M, N] (a folded batch in M), K the contracted length
};

bool row_ok(int64_t len, DType dt) { return (len * int64_t(dtype_size(dt))) % 16 == 0; }

Problem classify(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, const Tensor& c) {
  Problem p;
  const DType dt = a.dtype(), odt = out.dtype();
  if ((dt != DType::f32 && dt != DType::bf16) || b.dtype() != dt) return p;
  if (odt != dt && !(dt == DType::bf16 && odt == DType::f32)) return p;
  if (c.defined() && (c.dtype() != odt || c.shape() != out.shape() || !c.is_contiguous())) return p;
  if (b.dim() != 2 || out.dim() < 2 || !a.is_contiguous() || !b.is_contiguous() || !out.is_contiguous()) return p;
  if (!aligned16(a) || !aligned16(b) || !aligned16(out) || !aligned16(c)) return p;
  p.N = out.size(-1);
  if (p.N == 0) return p;
  p.M = out.numel() / p.N;
  p.K = trans_a ? a.size(-2) : a.size(-1);
  if (p.M == 0 || p.K == 0) return p;
  if (trans_a) {  // a [K, M]: no batch
    if (trans_b || a.numel() != p.K * p.M || out.dim() != 2 || p.M > kThinMax) return p;
    if (row_ok(p.N, dt) && row_ok(p.N, odt)) p.kind = Kind::Gather;
    return p;
  }
  if (a.numel() != p.M * p.K) return p;
  if (trans_b) {  // b [N, K]
    if (b.size(0) == p.N && b.size(1) == p.K && p.N <= kThinMax && row_ok(p.K, dt)) p.kind = Kind::Rows;
  } else {  // b [K, N]
    if (b.size(0) == p.K && b.size(1) == p.N && p.K <= kThinMax && row_ok(p.N, dt) && row_ok(p.N, odt))
      p.kind = Kind::Spread;
  }
  return p;
}

// The gather's slab: a function of the reduced length R only (so the bits do not depend on the GPU), about 256
// slabs for long R (natsl-340m: R 32768 -> 128 rows a slab), at least 64 rows.
int64_t slab_rows_for(int64_t R) { return std::max<int64_t>(64, (R + 255) / 256); }

}  // namespace

bool thin_matmul_applies(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b,
                         const Tensor& c) {
  return classify(a, b, out, trans_a, trans_b, c).kind != Kind::None;
}

bool thin_matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
                 double beta, const Tensor& c) {
  const Problem p = classify(a, b, out, trans_a, trans_b, c);
  if (p.kind == Kind::None) return false;
  cudaStream_t s = activate(out.device().index);
  const float al = float(alpha), be = float(beta);
  NATSL_CUDA_DISPATCH_FLOAT(a.dtype(), "thin_matmul", T, [&] {
    NATSL_CUDA_DISPATCH_FLOAT(out.dtype(), "thin_matmul", O, [&] {
      if constexpr (std::is_same_v<T, O> || (std::is_same_v<T, bf16> && std::is_same_v<O, float>)) {
        const T* ap = static_cast<const T*>(a.data_ptr());
        const T* bp = static_cast<const T*>(b.data_ptr());
        O* op = static_cast<O*>(out.data_ptr());
        const O* cp = c.defined() ? static_cast<const O*>(c.data_ptr()) : op;
        constexpr int V = kVec<T>;
        if (p.kind == Kind::Rows) {
          const int64_t blocks = (p.M * 32 + kThreads - 1) / kThreads;
          with_thin(p.N, [&](auto n) {
            thin_rows_kernel<T, O, decltype(n)::value><<<unsigned(blocks), kThreads, 0, s>>>(ap, bp, cp, op, p.M, p.K,
                                                                                           al, be);
          });
        } else if (p.kind == Kind::Spread) {
          const int64_t blocks = (p.M * (p.N / V) + kThreads - 1) / kThreads;
          with_thin(p.K, [&](auto k) {
            thin_spread_kernel<T, O, decltype(k)::value><<<unsigned(blocks), kThreads, 0, s>>>(ap, bp, cp, op, p.M,
                                                                                              p.N, al, be);
          });
        } else {  // Gather: out [M, N] = a^T b, a [R, M], b [R, N], R = p.K
          const int64_t R = p.K, nvec = p.N / V;
          int VB = 32;
          while (VB < kThreads && VB < nvec) VB *= 2;
          const int64_t slab = slab_rows_for(R), slabs = (R + slab - 1) / slab;
          Tensor part = Tensor::empty({slabs, p.M, p.N}, DType::f32, out.device());
          const dim3 grid(unsigned((nvec + VB - 1) / VB), unsigned(slabs));
          with_thin(p.M, [&](auto m) {
            thin_gather_kernel<T, decltype(m)::value><<<grid, kThreads, 0, s>>>(
                ap, bp, static_cast<float*>(part.data_ptr()), R, p.N, slab, VB);
          });
          NATSL_CUDA_CHECK(cudaGetLastError());
          const int64_t MN = p.M * p.N;
          thin_gather_finish_kernel<O><<<unsigned((MN + kThreads - 1) / kThreads), kThreads, 0, s>>>(
              static_cast<const float*>(part.data_ptr()), cp, op, MN, slabs, al, be);
        }
        NATSL_CUDA_CHECK(cudaGetLastError());
      }
    });
  });
  return true;
}

}  // namespace natsl::kernels::cuda
