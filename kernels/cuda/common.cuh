#pragma once
// Shared pieces of the CUDA kernels: dtype dispatch (f32, bf16; f64 is CPU-only), 128-bit vector
// loads/stores that convert to f32, launch sizing, and block/row reductions.
//
// Conventions used by every kernel in this folder:
// - all work is queued on the device's compute stream (core/stream.h); nothing synchronises the host;
// - storage types are float or natsl::bf16, arithmetic is f32;
// - memory-bound kernels move 16 bytes per access (VEC = 16 / sizeof(T) elements) when every pointer is
//   16-byte aligned and the row length is a multiple of VEC, else one element per access (VEC = 1).
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/dtype.h"
#include "core/stream.h"
#include "core/tensor.h"

namespace natsl::kernels::cuda {

// Runs the body with T bound to float or natsl::bf16; f64 (CPU-only) and integer dtypes are refused.
#define NATSL_CUDA_DISPATCH_FLOAT(DT, OP, T, ...)                                                       \
  [&] {                                                                                                 \
    switch (DT) {                                                                                       \
      case ::natsl::DType::f32: { using T = float; return __VA_ARGS__(); }                              \
      case ::natsl::DType::bf16: { using T = ::natsl::bf16; return __VA_ARGS__(); }                     \
      case ::natsl::DType::f64:                                                                         \
        NATSL_FAIL(OP, ": f64 is not supported on the GPU (CPU only); use f32 or bf16");                \
      default: NATSL_FAIL(OP, ": expected a floating dtype, got ", ::natsl::dtype_name(DT));            \
    }                                                                                                   \
  }()

// Runs the body with I bound to int32_t or int64_t (token ids / targets).
#define NATSL_CUDA_DISPATCH_INDEX(DT, OP, I, ...)                                                       \
  [&] {                                                                                                 \
    switch (DT) {                                                                                       \
      case ::natsl::DType::i32: { using I = int32_t; return __VA_ARGS__(); }                            \
      case ::natsl::DType::i64: { using I = int64_t; return __VA_ARGS__(); }                            \
      default: NATSL_FAIL(OP, ": expected i32 or i64 indices, got ", ::natsl::dtype_name(DT));          \
    }                                                                                                   \
  }()

// ---- scalar conversions (storage <-> f32) ----
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __uint_as_float(uint32_t(v.bits) << 16); }
template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) { return bf16(v); }

template <class T> constexpr int kVec = 16 / int(sizeof(T));  // elements in 16 bytes

// Loads VEC consecutive elements at p (16-byte aligned when VEC > 1) as floats.
template <class T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&f)[VEC]) {
  if constexpr (VEC == 1) {
    f[0] = to_f32(p[0]);
  } else {
    static_assert(VEC * sizeof(T) == 16, "vector access must be 16 bytes");
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    if constexpr (std::is_same_v<T, float>) {
      f[0] = __uint_as_float(raw.x);
      f[1] = __uint_as_float(raw.y);
      f[2] = __uint_as_float(raw.z);
      f[3] = __uint_as_float(raw.w);
    } else {
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      }
    }
  }
}

template <class T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&f)[VEC]) {
  if constexpr (VEC == 1) {
    p[0] = from_f32<T>(f[0]);
  } else {
    static_assert(VEC * sizeof(T) == 16, "vector access must be 16 bytes");
    uint4 raw;
    if constexpr (std::is_same_v<T, float>) {
      raw = make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
    } else {
      uint32_t w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        w[i] = bf16::round_bits2(f[2 * i], f[2 * i + 1]);
      raw = make_uint4(w[0], w[1], w[2], w[3]);
    }
    *reinterpret_cast<uint4*>(p) = raw;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline bool aligned16(const Tensor& t) { return !t.defined() || aligned16(t.data_ptr()); }

// exp in f32: the accurate expf for f32 data, the fast hardware exp for bf16 data (whose 8-bit mantissa
// hides its few-ulp error).
template <class T> __device__ __forceinline__ float exp_for(float x) {
  if constexpr (std::is_same_v<T, float>) return expf(x);
  else return __expf(x);
}

// ---- flat grid-stride loops ----
template <int W>
using Width = std::integral_constant<int, W>;

// Calls f(i, Width<VEC>) for every vector start i < n rounded down to VEC, then f(i, Width<1>) for the
// tail, grid-stride.
template <int VEC, class F>
__device__ __forceinline__ void for_each_vec(int64_t n, F&& f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  for (int64_t v = tid; v < nvec; v += stride) f(v * VEC, Width<VEC>{});
  if constexpr (VEC > 1)
    for (int64_t i = nvec * VEC + tid; i < n; i += stride) f(i, Width<1>{});
}

// ---- launch sizing ----
inline int sm_count(int device) {
  static std::atomic<int> cache[64];
  int d = device < 64 ? device : 63;
  int n = cache[d].load(std::memory_order_relaxed);
  if (n == 0) {
    NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[d].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Blocks for a grid-stride loop over `work` items of `per_block` each: enough to fill the device
// (`blocks_per_sm` resident blocks per SM), never more than the work needs.
inline int grid_for(int device, int64_t work, int64_t per_block, int blocks_per_sm = 8) {
  int64_t need = (work + per_block - 1) / per_block;
  int64_t cap = int64_t(sm_count(device)) * blocks_per_sm;
  int64_t g = need < cap ? need : cap;
  return int(g < 1 ? 1 : g);
}

// Launches a flat grid-stride kernel (for_each_vec) over n elements of T through f(Width<W>{}, blocks):
// W = kVec<T> (16-byte vectors) when `vec`, else 1, and blocks of `threads` threads.
template <class T, class F>
void launch_flat(bool vec, int dev, int64_t n, int threads, F&& f) {
  constexpr int V = kVec<T>;
  if (vec) f(Width<V>{}, grid_for(dev, n / V + 1, threads));
  else f(Width<1>{}, grid_for(dev, n, threads));
}

// ---- reductions ----
// The associative ops of the reductions below, with their identity (what an absent value contributes).
struct SumOp {
  static constexpr float kIdentity = 0.f;
  __device__ __forceinline__ static float apply(float a, float b) { return a + b; }
};
struct MaxOp {
  static constexpr float kIdentity = -INFINITY;
  __device__ __forceinline__ static float apply(float a, float b) { return fmaxf(a, b); }
};

// Op over the 32 lanes of a warp (xor butterfly: every lane gets the result, in a fixed order).
template <class Op>
__device__ __forceinline__ float warp_reduce(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<SumOp>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<MaxOp>(v); }

// Sum over aligned groups of TPR lanes (a power of two <= 32) of a warp, to every lane of the group (xor
// butterfly: a fixed order, deterministic). Every lane of the caller's group must call it; the shuffles name
// only that group's lanes, so the warp's other groups may be elsewhere (a short-row kernel whose groups leave
// their row loop at different passes and wait at a barrier after it).
template <int TPR>
__device__ __forceinline__ float group_sum(float v) {
  const unsigned mask = TPR == 32 ? 0xffffffffu : ((1u << TPR) - 1u) << ((threadIdx.x & 31u) & ~unsigned(TPR - 1));
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  return v;
}

// group_sum<TPR> with the full-warp mask, for callers whose whole warp calls it together (l2norm's short-row
// kernels, the fused short conv + l2norm): the same butterfly, so the same order and bits. With a constant full
// mask and a warp-uniform loop, ptxas knows the warp is converged at the shuffles: no convergence check before
// each sum (group_sum's lane-group mask adds a MATCH, REDUX and VOTE there, and registers: the bf16 l2norm
// backward would lose one of its blocks per SM).
template <int TPR>
__device__ __forceinline__ float warp_group_sum(float v) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// A short-row kernel's loads (dispatch_short_rows' layout): rows r0 .. r0 + RPG - 1 of [rows, D] tensors a (and b
// when LOAD_B), this lane's NV vectors of each (vector n * TPR + lane), zero where the row or vector is absent.
template <class T, int VEC, int TPR, int NV, int RPG, bool LOAD_B>
__device__ __forceinline__ void load_short_rows(const T* __restrict__ a, const T* __restrict__ b, int64_t r0,
                                                int64_t rows, int64_t D, int lane, float (&va)[RPG][NV][VEC],
                                                float (&vb)[RPG][NV][VEC]) {
  const int64_t nvec = D / VEC;
#pragma unroll
  for (int q = 0; q < RPG; ++q)
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t vi = int64_t(n) * TPR + lane;
#pragma unroll
      for (int k = 0; k < VEC; ++k) va[q][n][k] = vb[q][n][k] = 0.f;
      if (r0 + q < rows && vi < nvec) {
        load_vec<T, VEC>(a + (r0 + q) * D + vi * VEC, va[q][n]);
        if constexpr (LOAD_B) load_vec<T, VEC>(b + (r0 + q) * D + vi * VEC, vb[q][n]);
      }
    }
}

// The short-row kernels' layout for rows of `nvec` vectors (at most 128: head-sized rows): TPR lanes of a
// warp per row, each with NV vectors of it, called as go(Width<TPR>{}, Width<NV>{}). False (go not called)
// for wider rows.
template <class F>
bool dispatch_short_rows(int64_t nvec, F&& go) {
  if (nvec <= 8) go(Width<8>{}, Width<1>{});
  else if (nvec <= 16) go(Width<16>{}, Width<1>{});
  else if (nvec <= 32) go(Width<32>{}, Width<1>{});
  else if (nvec <= 64) go(Width<32>{}, Width<2>{});
  else if (nvec <= 128) go(Width<32>{}, Width<4>{});
  else return false;
  return true;
}

// Row kernels use blockDim = (threads per row, rows per block), threads per row a power of two >= 32,
// so that each row is whole warps. row_reduce returns Op of v over the threads of this thread's row, to
// every thread of the row, in a fixed order (deterministic). `scratch` holds 32 floats per row of the
// block; it may be reused right after the call returns (a trailing barrier protects it).
template <class Op>
__device__ __forceinline__ float row_reduce(float v, float* scratch) {
  v = warp_reduce<Op>(v);
  if (blockDim.x == 32) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  float* s = scratch + threadIdx.y * 32;
  if (lane == 0) s[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? s[lane] : Op::kIdentity;
  r = warp_reduce<Op>(r);
  __syncthreads();
  return r;
}
__device__ __forceinline__ float row_sum(float v, float* scratch) { return row_reduce<SumOp>(v, scratch); }
__device__ __forceinline__ float row_max(float v, float* scratch) { return row_reduce<MaxOp>(v, scratch); }

// Row-kernel shape for rows of `cols` elements moved VEC at a time: threads per row (power of two in
// [32, 1024]) and rows per block (so a block has at least 128 threads).
struct RowLaunch {
  int threads_x = 32, rows_per_block = 4;
};
// `vecs_per_thread`: how many vectors a thread takes per row before the block widens (several loads in
// flight per thread, fewer rows per SM).
inline RowLaunch row_launch(int64_t cols, int vec, int vecs_per_thread = 4, int max_threads = 1024) {
  int64_t vecs = (cols + vec - 1) / vec;
  int tx = 32;
  while (tx < max_threads && int64_t(tx) * vecs_per_thread < vecs) tx *= 2;
  RowLaunch r;
  r.threads_x = tx;
  r.rows_per_block = tx >= 128 ? 1 : 128 / tx;
  return r;
}

// Grid, block and dynamic shared memory (row_sum/row_max scratch) of a row kernel over `rows` rows.
struct RowGrid {
  dim3 grid, block;
  size_t smem = 0;
};
inline RowGrid row_grid(int device, int64_t rows, int64_t cols, int vec, int vecs_per_thread = 4) {
  RowLaunch l = row_launch(cols, vec, vecs_per_thread);
  RowGrid g;
  g.block = dim3(unsigned(l.threads_x), unsigned(l.rows_per_block));
  const int threads = l.threads_x * l.rows_per_block;
  g.grid = dim3(unsigned(grid_for(device, rows, l.rows_per_block, 2048 / threads)));
  g.smem = size_t(32) * l.rows_per_block * sizeof(float);
  return g;
}

// Row kernels loop over rows with this: every thread of a block runs the same iterations (the row
// reductions synchronise the block), `row < rows` says whether this thread's row exists.
#define NATSL_FOR_EACH_ROW(row, rows)                                                                  \
  for (int64_t row##_base = int64_t(blockIdx.x) * blockDim.y; row##_base < (rows);                      \
       row##_base += int64_t(gridDim.x) * blockDim.y)                                                   \
    if (const int64_t row = row##_base + threadIdx.y; true)

// The offsets j of the VEC-element vectors of a row that this thread takes, strided by the row's threads.
#define NATSL_FOR_ROW_VEC(j, D, VEC) \
  for (int64_t j = int64_t(threadIdx.x) * (VEC); j < (D); j += int64_t(blockDim.x) * (VEC))

// The two-pass row kernel over rows of D elements: per row, NS f32 sums acc[i] = sum over the row of what
// add(off, j, acc) adds for each of this thread's vectors j (in order, from 0), combined over the row by
// row_sum; then out(r, off, acc) for the rows that exist (off = r * D). Every thread of the block reaches
// the reductions, also those whose row slot is past the end.
template <int VEC, int NS, class Add, class Out>
__device__ __forceinline__ void rows_with_sums(int64_t rows, int64_t D, float* scratch, Add&& add, Out&& out) {
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    float acc[NS];
#pragma unroll
    for (int i = 0; i < NS; ++i) acc[i] = 0.f;
    if (active) NATSL_FOR_ROW_VEC(j, D, VEC) add(off, j, acc);
#pragma unroll
    for (int i = 0; i < NS; ++i) acc[i] = row_sum(acc[i], scratch);
    if (!active) continue;
    out(r, off, acc);
  }
}

// acc += sum_k p[k]^2 over the VEC elements at p (in order).
template <class T, int VEC>
__device__ __forceinline__ void add_squares(const T* __restrict__ p, float& acc) {
  float v[VEC];
  load_vec<T, VEC>(p, v);
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc += v[k] * v[k];
}

// Rows of a tensor seen as [rows, D] (0 when D is 0).
inline int64_t rows_of(const Tensor& x, int64_t D) { return D > 0 ? x.numel() / D : 0; }

// A (defined) tensor's storage as T.
template <class T>
const T* cptr(const Tensor& t) { return static_cast<const T*>(t.data_ptr()); }
template <class T>
T* mptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// An elementwise op over the n elements of x, and x's device, made current, with its compute stream.
struct FlatOp {
  int64_t n;
  int dev;
  cudaStream_t s;
};
inline FlatOp flat_op(const Tensor& x) {
  const int dev = x.device().index;
  return {x.numel(), dev, activate(dev)};
}

// A row op's input x seen as [rows, D], and x's device, made current, with its compute stream.
struct RowOp {
  int64_t D, rows;
  int dev;
  cudaStream_t s;
};
inline RowOp row_op(const Tensor& x, int64_t D) {
  const int dev = x.device().index;
  return {D, rows_of(x, D), dev, activate(dev)};
}

// Launches a row kernel through f(Width<W>{}, grid): W = V (16-byte vectors) when `vec`, else 1.
template <int V, class F>
void launch_rows(bool vec, int dev, int64_t rows, int64_t D, F&& f, int vecs_per_thread = 4) {
  if (vec) f(Width<V>{}, row_grid(dev, rows, D, V, vecs_per_thread));
  else f(Width<1>{}, row_grid(dev, rows, D, 1, vecs_per_thread));
}

// A device scratch tensor from the stream-ordered pool (freed back to the pool, in stream order, when the
// returned tensor dies: safe for use by kernels queued before that).
inline Tensor scratch_f32(int64_t n, Device d) { return Tensor::empty({n < 1 ? 1 : n}, DType::f32, d); }

}  // namespace natsl::kernels::cuda
