// CUDA causal depthwise short convolution, x/y [B, T, C], w [C, W]:
//   pre[b,t,c] = sum_j w[c,j] x[b, t-W+1+j, c] (zero before t = 0),  y = act(pre)
//   g = dy * act'(pre);  dx[b,s,c] = sum_j w[c,j] g[b, s+W-1-j, c];  dw[c,j] = sum_{b,t} g[b,t,c] x[b,t-W+1+j,c]
// A thread owns one channel over a tile of consecutive steps and slides a W-wide register window along it
// (W is a template parameter so the window stays in registers). Neighbouring threads take neighbouring
// channels, so every access is coalesced. The forward reads kSteps steps before using any, so that each
// thread keeps kSteps loads in flight (one at a time left it latency-bound: H200, 16 x 4096 x 2048 bf16,
// 0.50 -> 0.30 ms). The same read-ahead made the backward slower (0.81 -> 1.08 ms; two channels per thread
// 0.96), so it keeps the plain loop. dw: each thread writes its tile's partial sums, added in order by a
// second kernel (deterministic; column_sum.cuh) into dw, in x's dtype or f32, or added into what dw holds with
// accumulate_dw (a parameter's f32 .grad: autograd's weight-gradient sink).
// bf16 with channels in 16-byte vectors (the default plan, short_conv_plan.h): the same per-thread walk, but a
// block of 256 channels of one (sequence, tile) first copies chunks of kChunk steps of x (and dy) into shared
// memory with 16-byte cp.async copies, double-buffered, so that each warp moves 512-byte rows instead of 64-byte
// ones and a chunk is in flight while the threads walk the previous one. Same tiles, same arithmetic in the same
// order: the same bits as the per-channel kernels.
#include <algorithm>

#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/ptx_sm80.cuh"
#include "kernels/cuda/short_conv_plan.h"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

constexpr int kMaxWidth = 8;
constexpr int kSteps = 8;  // forward: steps read together per thread

__device__ __forceinline__ float act_f(float p, bool silu) { return silu ? p / (1.f + expf(-p)) : p; }
__device__ __forceinline__ float act_grad(float p, bool silu) {
  if (!silu) return 1.f;
  const float s = 1.f / (1.f + expf(-p));
  return s * (1.f + p * (1.f - s));
}

// Every kernel's step: shifts x(t) into the W-wide window (xs[j] = x(t - W + 1 + j)) and returns pre(t).
template <int W>
__device__ __forceinline__ float shift_pre(const float (&wv)[W], float (&xs)[W], float xt) {
#pragma unroll
  for (int j = 0; j < W - 1; ++j) xs[j] = xs[j + 1];
  xs[W - 1] = xt;
  float pre = 0.f;
#pragma unroll
  for (int j = 0; j < W; ++j) pre += wv[j] * xs[j];
  return pre;
}

struct ConvShape {
  int64_t B, T, C, tile, ntiles;
};

template <class T, int W>
__global__ void __launch_bounds__(256) short_conv_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                             T* __restrict__ y, ConvShape sh, bool silu) {
  const int64_t total = sh.B * sh.ntiles * sh.C;
  for (int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = id % sh.C, rest = id / sh.C, tile = rest % sh.ntiles, b = rest / sh.ntiles;
    const int64_t t0 = tile * sh.tile, t1 = min(sh.T, t0 + sh.tile);
    const T* xb = x + b * sh.T * sh.C + c;
    T* yb = y + b * sh.T * sh.C + c;
    float wv[W], xs[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      wv[j] = to_f32(w[c * W + j]);
      const int64_t t = t0 - W + j;  // xs[j] = x(t0 - W + j): after shifting in x(t0), xs[j] = x(t0 - W + 1 + j)
      xs[j] = (j > 0 && t >= 0) ? to_f32(xb[t * sh.C]) : 0.f;
    }
    for (int64_t tb = t0; tb < t1; tb += kSteps) {
      float xu[kSteps];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) xu[u] = tb + u < t1 ? to_f32(xb[(tb + u) * sh.C]) : 0.f;
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (tb + u < t1) {
          yb[(tb + u) * sh.C] = from_f32<T>(act_f(shift_pre<W>(wv, xs, xu[u]), silu));
        }
      }
    }
  }
}

// One step t of a channel's backward walk (both backward kernels): shifts x(t) into the window, g(t) = dy(t)
// act'(pre(t)), adds g(t) x into dw (steps of the tile [t0, t1) only) and w g(t) into the dx accumulators (acc[k]
// holds dx(t - W + 1 + k)), and writes dx(t - W + 1) to dx_col (the channel's dx, stride C) once it is complete.
// in_seq: t < T (else g = 0: the steps past the end of the sequence only flush the accumulators).
template <class T, int W>
__device__ __forceinline__ void bwd_step(int64_t t, bool in_seq, float xt, float dyt, int64_t t0, int64_t t1,
                                         const float (&wv)[W], float (&xs)[W], float (&acc)[W], float (&dw)[W],
                                         T* __restrict__ dx_col, int64_t C, bool silu) {
  float gt = 0.f;
  if (in_seq) {
    gt = dyt * act_grad(shift_pre<W>(wv, xs, xt), silu);
    if (t < t1) {
#pragma unroll
      for (int j = 0; j < W; ++j) dw[j] += gt * xs[j];
    }
  }
#pragma unroll
  for (int k = 0; k < W; ++k) acc[k] += wv[k] * gt;
  const int64_t s = t - W + 1;
  if (s >= t0 && s < t1) dx_col[s * C] = from_f32<T>(acc[0]);
#pragma unroll
  for (int k = 0; k < W - 1; ++k) acc[k] = acc[k + 1];
  acc[W - 1] = 0.f;
}

// dw_partial: [B * ntiles, C, W] f32, every entry written.
template <class T, int W>
__global__ void short_conv_bwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ dy,
                                      T* __restrict__ dx, float* __restrict__ dw_partial, ConvShape sh, bool silu) {
  const int64_t total = sh.B * sh.ntiles * sh.C;
  for (int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = id % sh.C, rest = id / sh.C, tile = rest % sh.ntiles, b = rest / sh.ntiles;
    const int64_t t0 = tile * sh.tile, t1 = min(sh.T, t0 + sh.tile);
    const int64_t base = b * sh.T * sh.C + c;
    float wv[W], xs[W], acc[W], dw[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      wv[j] = to_f32(w[c * W + j]);
      const int64_t t = t0 - W + j;
      xs[j] = (j > 0 && t >= 0) ? to_f32(x[base + t * sh.C]) : 0.f;
      acc[j] = 0.f;
      dw[j] = 0.f;
    }
    // Step t produces g(t) and adds w_k g(t) to dx(t - W + 1 + k) (held in acc[k]); dx(s) is complete after
    // step s + W - 1, so the loop runs W - 1 steps past the tile (g = 0 past the end of the sequence).
    for (int64_t t = t0; t < t1 + W - 1; ++t) {
      const bool in_seq = t < sh.T;
      bwd_step<T, W>(t, in_seq, in_seq ? to_f32(x[base + t * sh.C]) : 0.f, in_seq ? to_f32(dy[base + t * sh.C]) : 0.f,
                     t0, t1, wv, xs, acc, dw, dx + base, sh.C, silu);
    }
    float* pp = dw_partial + ((b * sh.ntiles + tile) * sh.C + c) * W;
#pragma unroll
    for (int j = 0; j < W; ++j) pp[j] = dw[j];
  }
}

// ---- bf16 through shared memory (see the header) ----
constexpr int kChunkChannels = 256;  // channels (threads) per block
constexpr int kChunk = 16;           // steps per shared-memory chunk

// Rows [t_begin, t_end) of channels [c0, c0 + kChunkChannels) of sequence b of src ([B, T, C] bf16, C % 8 == 0,
// 16-byte aligned) into dst[kChunk][kChunkChannels] (row t - t_begin); vectors past C or t_end are not copied
// (and never read).
__device__ __forceinline__ void copy_chunk(const bf16* __restrict__ src, bf16* dst, const ConvShape& sh, int64_t b,
                                           int64_t c0, int64_t t_begin, int64_t t_end) {
  constexpr int kVecs = kChunkChannels / 8;  // 16-byte vectors per row
  for (int i = threadIdx.x; i < kChunk * kVecs; i += blockDim.x) {
    const int row = i / kVecs, v = i % kVecs;
    const int64_t t = t_begin + row, ch = c0 + int64_t(v) * 8;
    if (t < t_end && ch < sh.C)
      ptx::cp_async16(ptx::smem_addr(dst + row * kChunkChannels + v * 8), src + (b * sh.T + t) * sh.C + ch, true);
  }
}

// A shared-memory kernel's block: channels [c0, c0 + kChunkChannels) of sequence b's time tile [t0, t1); this
// thread's channel c (mine: c < C).
struct ChunkBlock {
  int64_t b, tile, c0, c, t0, t1;
  bool mine;
};
__device__ __forceinline__ ChunkBlock chunk_block(const ConvShape& sh) {
  const int64_t ncb = (sh.C + kChunkChannels - 1) / kChunkChannels;
  const int64_t cb = blockIdx.x % ncb, rest = blockIdx.x / ncb;
  ChunkBlock k;
  k.tile = rest % sh.ntiles;
  k.b = rest / sh.ntiles;
  k.c0 = cb * kChunkChannels;
  k.c = k.c0 + threadIdx.x;
  k.mine = k.c < sh.C;
  k.t0 = k.tile * sh.tile;
  k.t1 = min(sh.T, k.t0 + sh.tile);
  return k;
}

// The thread's channel weights and its window of x before the tile: xs[j] = x(t0 - W + j) for j > 0 (zero before
// the sequence; xs[0] is shifted out by the first step). Zeros for a channel past C.
template <int W>
__device__ __forceinline__ void load_window(const bf16* __restrict__ x, const bf16* __restrict__ w, const ConvShape& sh,
                                            const ChunkBlock& k, float (&wv)[W], float (&xs)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    wv[j] = k.mine ? to_f32(w[k.c * W + j]) : 0.f;
    const int64_t t = k.t0 - W + j;
    xs[j] = (k.mine && j > 0 && t >= 0) ? to_f32(x[(k.b * sh.T + t) * sh.C + k.c]) : 0.f;
  }
}

// The shared-memory forward's step: shifts x(t) into the window and returns act(pre(t)) rounded to bf16 (the
// per-channel kernel's arithmetic).
template <int W>
__device__ __forceinline__ bf16 fwd_step(const float (&wv)[W], float (&xs)[W], float xt, bool silu) {
  return from_f32<bf16>(act_f(shift_pre<W>(wv, xs, xt), silu));
}

// One block: kChunkChannels channels of one (sequence, tile). Dynamic shared memory: 2 x kChunk x kChunkChannels bf16.
template <int W>
__global__ void __launch_bounds__(kChunkChannels)
    short_conv_fwd_chunks_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ y,
                                 ConvShape sh, bool silu) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sx = reinterpret_cast<bf16*>(smem_raw);
  const ChunkBlock blk = chunk_block(sh);
  const int64_t b = blk.b, c0 = blk.c0, c = blk.c, t0 = blk.t0, t1 = blk.t1;
  const bool mine = blk.mine;
  const int64_t nchunks = (t1 - t0 + kChunk - 1) / kChunk;
  float wv[W], xs[W];
  load_window<W>(x, w, sh, blk, wv, xs);
  copy_chunk(x, sx, sh, b, c0, t0, t1);
  ptx::cp_async_commit();
  for (int64_t k = 0; k < nchunks; ++k) {
    __syncthreads();  // every thread is done with the buffer the next copy overwrites
    if (k + 1 < nchunks) copy_chunk(x, sx + ((k + 1) & 1) * kChunk * kChunkChannels, sh, b, c0, t0 + (k + 1) * kChunk, t1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();  // this thread's copies of chunk k are done
    __syncthreads();          // and everyone's
    const bf16* cur = sx + (k & 1) * kChunk * kChunkChannels;
    const int64_t tb = t0 + k * kChunk;
    if (mine)
      for (int u = 0; u < kChunk && tb + u < t1; ++u) {
        y[(b * sh.T + tb + u) * sh.C + c] = fwd_step<W>(wv, xs, to_f32(cur[u * kChunkChannels + threadIdx.x]), silu);
      }
  }
}

// The backward's walk over one chunk's steps tb .. tb + steps - 1 (x and the conv's dy read from shared memory: sx,
// sd at the chunk's rows), for the threads that own a channel.
template <class Step>
__device__ __forceinline__ void walk_chunk(bool mine, const bf16* sx, const bf16* sd, int64_t tb, int steps, Step& step) {
  if (!mine) return;
  for (int u = 0; u < steps; ++u)
    step(tb + u, true, to_f32(sx[u * kChunkChannels + threadIdx.x]), to_f32(sd[u * kChunkChannels + threadIdx.x]));
}

// After the last chunk: the steps from t_end to t1 + W - 2 (past the end of the sequence: g = 0) flush the dx
// accumulators, then the tile's dw sums (updated by step) go to its partial row.
template <int W, class Step>
__device__ __forceinline__ void finish_tile(const ChunkBlock& k, const ConvShape& sh, int64_t t_end, const float (&dw)[W],
                                            float* __restrict__ dw_partial, Step& step) {
  if (!k.mine) return;
  for (int64_t t = t_end; t < k.t1 + W - 1; ++t) step(t, false, 0.f, 0.f);
  float* pp = dw_partial + ((k.b * sh.ntiles + k.tile) * sh.C + k.c) * W;
#pragma unroll
  for (int j = 0; j < W; ++j) pp[j] = dw[j];
}

// dw_partial: [B * ntiles, C, W] f32 as short_conv_bwd_kernel's. Dynamic shared memory: 2 buffers x 2 tensors x
// kChunk x kChunkChannels bf16.
template <int W>
__global__ void __launch_bounds__(kChunkChannels)
    short_conv_bwd_chunks_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ dy,
                                 bf16* __restrict__ dx, float* __restrict__ dw_partial, ConvShape sh, bool silu) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sx = reinterpret_cast<bf16*>(smem_raw);
  bf16* sd = sx + 2 * kChunk * kChunkChannels;
  const ChunkBlock blk = chunk_block(sh);
  const int64_t b = blk.b, c0 = blk.c0, c = blk.c, t0 = blk.t0, t1 = blk.t1;
  const bool mine = blk.mine;
  const int64_t base = b * sh.T * sh.C + c;
  // Steps t0 .. t_end - 1 read x and dy (the W - 1 past the tile feed dx of its last steps); steps from t_end to
  // t1 + W - 2 (past the end of the sequence) only flush the dx accumulators, with g = 0.
  const int64_t t_end = min(sh.T, t1 + W - 1);
  const int64_t nchunks = (t_end - t0 + kChunk - 1) / kChunk;
  float wv[W], xs[W], acc[W] = {}, dw[W] = {};
  load_window<W>(x, w, sh, blk, wv, xs);
  auto step = [&](int64_t t, bool in_seq, float xt, float dyt) {
    bwd_step<bf16, W>(t, in_seq, xt, dyt, t0, t1, wv, xs, acc, dw, dx + base, sh.C, silu);
  };
  copy_chunk(x, sx, sh, b, c0, t0, t_end);
  copy_chunk(dy, sd, sh, b, c0, t0, t_end);
  ptx::cp_async_commit();
  for (int64_t k = 0; k < nchunks; ++k) {
    __syncthreads();
    if (k + 1 < nchunks) {
      const int64_t nb = ((k + 1) & 1) * kChunk * kChunkChannels;
      copy_chunk(x, sx + nb, sh, b, c0, t0 + (k + 1) * kChunk, t_end);
      copy_chunk(dy, sd + nb, sh, b, c0, t0 + (k + 1) * kChunk, t_end);
    }
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const int64_t cur = (k & 1) * kChunk * kChunkChannels;
    const int64_t tb = t0 + k * kChunk;
    walk_chunk(mine, sx + cur, sd + cur, tb, int(min(int64_t(kChunk), t_end - tb)), step);
  }
  finish_tile<W>(blk, sh, t_end, dw, dw_partial, step);
}

// Calls fn(std::integral_constant<int, W>) for the runtime kernel width.
template <class Fn>
void dispatch_width(int64_t W, Fn&& fn) {
  switch (W) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    case 8: return fn(std::integral_constant<int, 8>{});
  }
  NATSL_FAIL("short_conv: kernel width ", W, " not supported on the GPU (1..", kMaxWidth, ")");
}

ConvShape conv_shape(const Tensor& x, const Tensor& w, int device, int64_t min_tile) {
  NATSL_CHECK(x.dim() == 3 && w.dim() == 2 && w.size(0) == x.size(2), "short_conv: x [B, T, C] and w [C, W], got ",
              x.str(), " and ", w.str());
  ConvShape sh{x.size(0), x.size(1), x.size(2), 1, 1};
  // Long tiles amortise the W-1 step warm-up; short enough to give every SM ~4096 threads.
  const int64_t target_threads = int64_t(sm_count(device)) * 4096;
  const int64_t lanes = std::max<int64_t>(1, sh.B * sh.C);
  const int64_t want = std::max<int64_t>(1, sh.T * lanes / target_threads);
  sh.tile = std::clamp<int64_t>(want, min_tile, 256);
  sh.ntiles = std::max<int64_t>(1, (sh.T + sh.tile - 1) / sh.tile);
  return sh;
}

// The grid of the shared-memory kernels: one block per 256 channels of each (sequence, tile).
unsigned chunk_blocks(const ConvShape& sh) {
  const int64_t blocks = sh.B * sh.ntiles * ((sh.C + kChunkChannels - 1) / kChunkChannels);
  NATSL_CHECK(blocks < (int64_t(1) << 31), "short_conv: ", blocks, " blocks exceed the grid");
  return unsigned(blocks);
}

// ---- the short conv with the l2norm of its output over groups of channels (the GDN front end's q and k) ----
// The shared-memory kernels above, with l2norm.cu's short-row arithmetic on each (step, channel group) row of the
// chunk: TPR lanes of a warp a row, one 16-byte vector a lane (l2norm_short_kernel's layout for rows of at most 32
// vectors; lanes past the row's vectors hold zeros, as there), the same sums in the same order. The forward stages
// the chunk's activations in shared memory, rounded to bf16 as the conv stores them, and normalises its rows from
// there; the backward replaces the chunk's dy in shared memory by l2norm's input gradient (rounded to bf16 as
// l2norm_bwd stores it) before the conv's walk. So the bits are those of short_conv_fwd then l2norm_fwd (and of
// l2norm_bwd then short_conv_bwd), and the activations and their gradient never cross global memory. Blocks of
// 256 channels hold whole groups (group divides 256).

// The rows of chunk [tb, tb + steps) x the block's groups hb < heads: f(u, hb, lane) for every row slot
// (u < kChunk, hb < 256 / group), spread over the block's 256 / TPR lane groups. Every lane group runs the same
// number of slots (kChunk * 256 / group is a multiple of 256 / TPR), so every lane of a warp reaches the group sums.
template <int TPR, class F>
__device__ __forceinline__ void chunk_rows(int group, F&& f) {
  constexpr int kSlots = kChunkChannels / TPR;
  const int per_step = kChunkChannels / group;
  const int lane = threadIdx.x % TPR;
  for (int rr = threadIdx.x / TPR; rr < kChunk * per_step; rr += kSlots) f(rr / per_step, rr % per_step, lane);
}

template <int W, int TPR>
__global__ void __launch_bounds__(kChunkChannels)
    short_conv_l2norm_fwd_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ y,
                                 float* __restrict__ rnorm, ConvShape sh, int group, bool silu, float eps) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sx = reinterpret_cast<bf16*>(smem_raw);
  bf16* sa = sx + 2 * kChunk * kChunkChannels;  // the chunk's activations [kChunk][kChunkChannels]
  const ChunkBlock blk = chunk_block(sh);
  const int64_t b = blk.b, c0 = blk.c0, t0 = blk.t0, t1 = blk.t1;
  const bool mine = blk.mine;
  const int64_t nchunks = (t1 - t0 + kChunk - 1) / kChunk;
  const int nvec = group / 8, heads = int((min(sh.C, c0 + kChunkChannels) - c0) / group);
  const int64_t groups_per_step = sh.C / group, g0 = c0 / group;
  float wv[W], xs[W];
  load_window<W>(x, w, sh, blk, wv, xs);
  copy_chunk(x, sx, sh, b, c0, t0, t1);
  ptx::cp_async_commit();
  for (int64_t k = 0; k < nchunks; ++k) {
    __syncthreads();  // every thread is done with the buffer the next copy overwrites, and with sa
    if (k + 1 < nchunks) copy_chunk(x, sx + ((k + 1) & 1) * kChunk * kChunkChannels, sh, b, c0, t0 + (k + 1) * kChunk, t1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const bf16* cur = sx + (k & 1) * kChunk * kChunkChannels;
    const int64_t tb = t0 + k * kChunk;
    const int steps = int(min(int64_t(kChunk), t1 - tb));
    if (mine)
      for (int u = 0; u < steps; ++u) {
        sa[u * kChunkChannels + threadIdx.x] = fwd_step<W>(wv, xs, to_f32(cur[u * kChunkChannels + threadIdx.x]), silu);
      }
    __syncthreads();
    chunk_rows<TPR>(group, [&](int u, int hb, int lane) {
      const bool row_in = u < steps && hb < heads;
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = 0.f;
      if (row_in && lane < nvec) load_vec<bf16, 8>(sa + u * kChunkChannels + hb * group + lane * 8, v);
      float acc = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc += v[e] * v[e];
      acc = warp_group_sum<TPR>(acc);
      if (!row_in) return;
      const float rn = 1.f / sqrtf(acc + eps);
      const int64_t row = b * sh.T + tb + u;
      if (lane == 0) rnorm[row * groups_per_step + g0 + hb] = rn;
      if (lane >= nvec) return;
      float o[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = v[e] * rn;
      store_vec<bf16, 8>(y + row * sh.C + c0 + hb * group + lane * 8, o);
    });
  }
}

// dw_partial as short_conv_bwd_chunks_kernel's. Dynamic shared memory: 2 buffers x 3 tensors (x, y, dy) x kChunk x
// kChunkChannels bf16 (48 KiB).
template <int W, int TPR>
__global__ void __launch_bounds__(kChunkChannels)
    short_conv_l2norm_bwd_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ y,
                                 const float* __restrict__ rnorm, const bf16* __restrict__ dy, bf16* __restrict__ dx,
                                 float* __restrict__ dw_partial, ConvShape sh, int group, bool silu) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kBuf = kChunk * kChunkChannels;
  bf16* sx = reinterpret_cast<bf16*>(smem_raw);
  bf16* sy = sx + 2 * kBuf;
  bf16* sd = sy + 2 * kBuf;  // dy, then l2norm's input gradient (the conv's dy) in its place
  const ChunkBlock blk = chunk_block(sh);
  const int64_t b = blk.b, c0 = blk.c0, c = blk.c, t0 = blk.t0, t1 = blk.t1;
  const bool mine = blk.mine;
  const int64_t base = b * sh.T * sh.C + c;
  const int64_t t_end = min(sh.T, t1 + W - 1);
  const int64_t nchunks = (t_end - t0 + kChunk - 1) / kChunk;
  const int nvec = group / 8, heads = int((min(sh.C, c0 + kChunkChannels) - c0) / group);
  const int64_t groups_per_step = sh.C / group, g0 = c0 / group;
  float wv[W], xs[W], acc[W] = {}, dw[W] = {};
  load_window<W>(x, w, sh, blk, wv, xs);
  auto step = [&](int64_t t, bool in_seq, float xt, float dyt) {
    bwd_step<bf16, W>(t, in_seq, xt, dyt, t0, t1, wv, xs, acc, dw, dx + base, sh.C, silu);
  };
  auto copy = [&](int64_t kc, int buf) {
    const int64_t from = t0 + kc * kChunk;
    copy_chunk(x, sx + buf * kBuf, sh, b, c0, from, t_end);
    copy_chunk(y, sy + buf * kBuf, sh, b, c0, from, t_end);
    copy_chunk(dy, sd + buf * kBuf, sh, b, c0, from, t_end);
  };
  copy(0, 0);
  ptx::cp_async_commit();
  for (int64_t k = 0; k < nchunks; ++k) {
    __syncthreads();
    if (k + 1 < nchunks) copy(k + 1, int((k + 1) & 1));
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const int64_t cur = (k & 1) * kBuf;
    const int64_t tb = t0 + k * kChunk;
    const int steps = int(min(int64_t(kChunk), t_end - tb));
    chunk_rows<TPR>(group, [&](int u, int hb, int lane) {
      const bool row_in = u < steps && hb < heads;
      const int64_t at = cur + u * kChunkChannels + hb * group + lane * 8;
      float yv[8], g[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) yv[e] = g[e] = 0.f;
      if (row_in && lane < nvec) {
        load_vec<bf16, 8>(sy + at, yv);
        load_vec<bf16, 8>(sd + at, g);
      }
      float dot = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) dot += g[e] * yv[e];
      dot = warp_group_sum<TPR>(dot);
      if (!row_in || lane >= nvec) return;
      const float rn = rnorm[(b * sh.T + tb + u) * groups_per_step + g0 + hb];
      float o[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = rn * (g[e] - yv[e] * dot);
      store_vec<bf16, 8>(sd + at, o);
    });
    __syncthreads();
    walk_chunk(mine, sx + cur, sd + cur, tb, steps, step);
  }
  finish_tile<W>(blk, sh, t_end, dw, dw_partial, step);
}

// Lanes per row of the fused kernels for groups of nvec 16-byte vectors: l2norm's own choice (dispatch_short_rows),
// so that the fused sums follow its layout whatever it is tuned to; the fused kernels hold one vector a lane.
template <class Fn>
void dispatch_group_lanes(int64_t nvec, Fn&& fn) {
  const bool taken = dispatch_short_rows(nvec, [&](auto tpr, auto nv) {
    if constexpr (decltype(nv)::value == 1) fn(tpr);
    else NATSL_FAIL("short_conv_l2norm: l2norm lays ", nvec, " vectors out ", decltype(nv)::value, " a lane");
  });
  NATSL_CHECK(taken, "short_conv_l2norm: ", nvec, " vectors a group is no short row");
}

}  // namespace

bool short_conv_takes_chunks(const Tensor& x, const Tensor& dy, const ShortConvPlan& plan) {
  return plan.shared_memory_chunks && x.dim() == 3 && x.dtype() == DType::bf16 && x.size(2) % 8 == 0 &&
         aligned16(x) && aligned16(dy);
}

void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y) {
  short_conv_fwd(x, w, apply_silu, y, ShortConvPlan{});
}

void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,
                    const Tensor& dw, bool accumulate_dw) {
  short_conv_bwd(x, w, apply_silu, dy, dx, dw, ShortConvPlan{}, accumulate_dw);
}

void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y, const ShortConvPlan& plan) {
  const int dev = x.device().index;
  ConvShape sh = conv_shape(x, w, dev, 8);
  if (x.numel() == 0) return;
  cudaStream_t s = activate(dev);
  if (short_conv_takes_chunks(x, Tensor(), plan)) {
    NATSL_CHECK(w.dtype() == x.dtype() && y.dtype() == x.dtype(), "short_conv_fwd: dtypes differ");
    dispatch_width(w.size(1), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      short_conv_fwd_chunks_kernel<W><<<chunk_blocks(sh), kChunkChannels, 2 * kChunk * kChunkChannels * sizeof(bf16),
                                        s>>>(static_cast<const bf16*>(x.data_ptr()), static_cast<const bf16*>(w.data_ptr()),
                                             static_cast<bf16*>(y.data_ptr()), sh, apply_silu);
    });
    NATSL_CUDA_CHECK_LAUNCH();
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "short_conv_fwd", T, [&] {
    NATSL_CHECK(w.dtype() == x.dtype() && y.dtype() == x.dtype(), "short_conv_fwd: dtypes differ");
    dispatch_width(w.size(1), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int64_t total = sh.B * sh.ntiles * sh.C;
      short_conv_fwd_kernel<T, W><<<grid_for(dev, total, 256), 256, 0, s>>>(
          static_cast<const T*>(x.data_ptr()), static_cast<const T*>(w.data_ptr()), static_cast<T*>(y.data_ptr()),
          sh, apply_silu);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,
                    const Tensor& dw, const ShortConvPlan& plan, bool accumulate_dw) {
  const int dev = x.device().index;
  // Tiles of at least 32 steps keep the dw partial buffer small (B * T / 32 * C * W floats at most).
  ConvShape sh = conv_shape(x, w, dev, 32);
  cudaStream_t s = activate(dev);
  if (x.numel() == 0) {
    if (dw.defined() && !accumulate_dw) dw.zero_();
    return;
  }
  for (const Tensor* t : {&w, &dy, &dx})
    NATSL_CHECK(!t->defined() || t->dtype() == x.dtype(), "short_conv_bwd: dtypes differ");
  NATSL_CHECK(!dw.defined() || weight_grad_writes(x.dtype(), dw.dtype()), "short_conv_bwd: dw ", dw.str(),
              " for data ", x.str());
  if (short_conv_takes_chunks(x, dy, plan)) {
    dispatch_width(w.size(1), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int64_t groups = sh.B * sh.ntiles;
      Tensor partial = scratch_f32(groups * sh.C * W, x.device());
      short_conv_bwd_chunks_kernel<W><<<chunk_blocks(sh), kChunkChannels, 4 * kChunk * kChunkChannels * sizeof(bf16),
                                        s>>>(static_cast<const bf16*>(x.data_ptr()), static_cast<const bf16*>(w.data_ptr()),
                                             static_cast<const bf16*>(dy.data_ptr()), static_cast<bf16*>(dx.data_ptr()),
                                             partial.data<float>(), sh, apply_silu);
      NATSL_CUDA_CHECK_LAUNCH();
      if (dw.defined()) column_sum(partial.data<float>(), groups, sh.C * W, dw, s, accumulate_dw);
    });
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "short_conv_bwd", T, [&] {
    dispatch_width(w.size(1), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int64_t total = sh.B * sh.ntiles * sh.C;
      const int64_t groups = sh.B * sh.ntiles;
      Tensor partial = scratch_f32(groups * sh.C * W, x.device());
      short_conv_bwd_kernel<T, W><<<grid_for(dev, total, 256), 256, 0, s>>>(
          static_cast<const T*>(x.data_ptr()), static_cast<const T*>(w.data_ptr()),
          static_cast<const T*>(dy.data_ptr()), static_cast<T*>(dx.data_ptr()), partial.data<float>(), sh,
          apply_silu);
      NATSL_CUDA_CHECK_LAUNCH();
      if (dw.defined()) column_sum(partial.data<float>(), groups, sh.C * W, dw, s, accumulate_dw);
    });
  });
}

namespace {
bool short_conv_l2norm_takes(const Tensor& x, const Tensor& w, int64_t group, std::initializer_list<const Tensor*> rows) {
  if (x.dim() != 3 || x.dtype() != DType::bf16 || w.dim() != 2 || w.size(1) < 1 || w.size(1) > kMaxWidth) return false;
  if (group < 8 || group > kChunkChannels || group % 8 != 0 || kChunkChannels % group != 0 || x.size(2) % group != 0)
    return false;
  if (!aligned16(x)) return false;
  for (const Tensor* t : rows)
    if (!aligned16(*t)) return false;
  return true;
}
}  // namespace

bool short_conv_l2norm_fwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, double eps, const Tensor& y,
                           const Tensor& rnorm) {
  if (!short_conv_l2norm_takes(x, w, group, {&y}) || rnorm.dtype() != DType::f32) return false;
  if (x.numel() == 0) return true;
  const int dev = x.device().index;
  const ConvShape sh = conv_shape(x, w, dev, 8);  // short_conv_fwd's tiles
  cudaStream_t s = activate(dev);
  dispatch_width(w.size(1), [&](auto wc) {
    dispatch_group_lanes(group / 8, [&](auto lanes) {
      constexpr int W = decltype(wc)::value, TPR = decltype(lanes)::value;
      short_conv_l2norm_fwd_kernel<W, TPR><<<chunk_blocks(sh), kChunkChannels,
                                             3 * kChunk * kChunkChannels * sizeof(bf16), s>>>(
          static_cast<const bf16*>(x.data_ptr()), static_cast<const bf16*>(w.data_ptr()),
          static_cast<bf16*>(y.data_ptr()), rnorm.data<float>(), sh, int(group), apply_silu, float(eps));
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
  return true;
}

bool short_conv_l2norm_bwd(const Tensor& x, const Tensor& w, bool apply_silu, int64_t group, const Tensor& y,
                           const Tensor& rnorm, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                           bool accumulate_dw) {
  if (!short_conv_l2norm_takes(x, w, group, {&y, &dy}) || rnorm.dtype() != DType::f32) return false;
  const int dev = x.device().index;
  const ConvShape sh = conv_shape(x, w, dev, 32);  // short_conv_bwd's tiles, so dw adds up in its order
  cudaStream_t s = activate(dev);
  if (x.numel() == 0) {
    if (dw.defined() && !accumulate_dw) dw.zero_();
    return true;
  }
  dispatch_width(w.size(1), [&](auto wc) {
    constexpr int W = decltype(wc)::value;
    const int64_t groups = sh.B * sh.ntiles;
    Tensor partial = scratch_f32(groups * sh.C * W, x.device());
    dispatch_group_lanes(group / 8, [&](auto lanes) {
      constexpr int TPR = decltype(lanes)::value;
      short_conv_l2norm_bwd_kernel<W, TPR><<<chunk_blocks(sh), kChunkChannels,
                                             6 * kChunk * kChunkChannels * sizeof(bf16), s>>>(
          static_cast<const bf16*>(x.data_ptr()), static_cast<const bf16*>(w.data_ptr()),
          static_cast<const bf16*>(y.data_ptr()), rnorm.data<float>(), static_cast<const bf16*>(dy.data_ptr()),
          static_cast<bf16*>(dx.data_ptr()), partial.data<float>(), sh, int(group), apply_silu);
    });
    NATSL_CUDA_CHECK_LAUNCH();
    if (dw.defined()) column_sum(partial.data<float>(), groups, sh.C * W, dw, s, accumulate_dw);
  });
  return true;
}

}  // namespace natsl::kernels::cuda
