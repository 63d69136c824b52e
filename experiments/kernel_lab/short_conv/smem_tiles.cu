// Kernel lab (issue 18): the causal depthwise short convolution (kernels/cuda/short_conv.cu) with its inputs
// staged through shared memory, against the production kernels. The production kernels give each thread one
// channel and walk it along time with 2-byte loads: a warp moves 64 bytes per load and the backward keeps one
// step's loads in flight, so both are bound by memory latency (H200: forward 2.84x, backward 4.10x the time of a
// copy of the same bytes, 16 x 4096 x 2048 bf16; natsl-340m spends ~14.7 ms of its backward in 63 calls).
// Here a block of 256 threads takes 256 channels of one (sequence, time tile) and copies chunks of S steps of x
// (and dy) into shared memory with 16-byte cp.async copies, double-buffered (the next chunk is in flight while
// the threads walk the current one); each thread then walks its channel exactly as the production kernel does,
// reading its steps from shared memory. The tiles (conv_shape's), the per-thread arithmetic and the dw partial
// rows are production's, so the outputs must be bit-identical; this program checks that and times both:
//   build-gpu/experiments/kernel_lab/natsl_lab_short_conv [--reps N]   (exit 1 when any output differs)
// Promote (into kernels/cuda/short_conv.cu, with the CUDA tests) only if it wins on natsl-340m's shapes.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/ptx_sm80.cuh"
#include "kernels/nn.h"

using namespace natsl;
using namespace natsl::kernels::cuda;

namespace {

constexpr int kCB = 256;  // channels (threads) per block
constexpr int kS = 16;    // steps per shared-memory chunk

__device__ __forceinline__ float act_f(float p, bool silu) { return silu ? p / (1.f + expf(-p)) : p; }
__device__ __forceinline__ float act_grad(float p, bool silu) {
  if (!silu) return 1.f;
  const float s = 1.f / (1.f + expf(-p));
  return s * (1.f + p * (1.f - s));
}

// Production's tiling (kernels/cuda/short_conv.cu, conv_shape): the dw partial rows are per (sequence, tile),
// so the tiles must be the same for the dw bits to match.
struct ConvShape {
  int64_t B, T, C, tile, ntiles;
};
ConvShape conv_shape(const Tensor& x, const Tensor& w, int device, int64_t min_tile) {
  ConvShape sh{x.size(0), x.size(1), x.size(2), 1, 1};
  const int64_t target_threads = int64_t(sm_count(device)) * 4096;
  const int64_t lanes = std::max<int64_t>(1, sh.B * sh.C);
  const int64_t want = std::max<int64_t>(1, sh.T * lanes / target_threads);
  sh.tile = std::clamp<int64_t>(want, min_tile, 256);
  sh.ntiles = std::max<int64_t>(1, (sh.T + sh.tile - 1) / sh.tile);
  (void)w;
  return sh;
}

// Rows [t_begin, t_end) of channels [c0, c0 + kCB) of sequence b of src ([B, T, C] bf16, C % 8 == 0) into
// dst[kS][kCB] (row t - t_begin), 16 bytes per copy; vectors past C or t_end are not read (left as they are).
__device__ __forceinline__ void load_chunk(const bf16* __restrict__ src, bf16* dst, const ConvShape& sh, int64_t b,
                                           int64_t c0, int64_t t_begin, int64_t t_end) {
  constexpr int kVecs = kCB / 8;  // 16-byte vectors per row
  for (int i = threadIdx.x; i < kS * kVecs; i += blockDim.x) {
    const int row = i / kVecs, v = i % kVecs;
    const int64_t t = t_begin + row, ch = c0 + int64_t(v) * 8;
    if (t < t_end && ch < sh.C)
      ptx::cp_async16(ptx::smem_addr(dst + row * kCB + v * 8), src + (b * sh.T + t) * sh.C + ch, true);
  }
}

// One block: 256 channels of one (sequence, tile). Dynamic shared memory: 2 buffers x kS x kCB bf16.
template <int W>
__global__ void __launch_bounds__(kCB) fwd_smem_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                       bf16* __restrict__ y, ConvShape sh, bool silu) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sx = reinterpret_cast<bf16*>(smem_raw);
  const int64_t ncb = (sh.C + kCB - 1) / kCB;
  const int64_t cb = blockIdx.x % ncb, rest = blockIdx.x / ncb, tile = rest % sh.ntiles, b = rest / sh.ntiles;
  const int64_t c0 = cb * kCB, c = c0 + threadIdx.x;
  const bool mine = c < sh.C;
  const int64_t t0 = tile * sh.tile, t1 = min(sh.T, t0 + sh.tile);
  const int64_t nchunks = (t1 - t0 + kS - 1) / kS;
  float wv[W], xs[W];
#pragma unroll
  for (int j = 0; j < W; ++j) {
    wv[j] = mine ? to_f32(w[c * W + j]) : 0.f;
    const int64_t t = t0 - W + j;
    xs[j] = (mine && j > 0 && t >= 0) ? to_f32(x[(b * sh.T + t) * sh.C + c]) : 0.f;
  }
  load_chunk(x, sx, sh, b, c0, t0, t1);
  ptx::cp_async_commit();
  for (int64_t k = 0; k < nchunks; ++k) {
    __syncthreads();  // everyone is done with the buffer the next copy overwrites
    if (k + 1 < nchunks) load_chunk(x, sx + ((k + 1) & 1) * kS * kCB, sh, b, c0, t0 + (k + 1) * kS, t1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const bf16* cur = sx + (k & 1) * kS * kCB;
    const int64_t tb = t0 + k * kS;
    if (mine)
      for (int u = 0; u < kS && tb + u < t1; ++u) {
#pragma unroll
        for (int j = 0; j < W - 1; ++j) xs[j] = xs[j + 1];
        xs[W - 1] = to_f32(cur[u * kCB + threadIdx.x]);
        float pre = 0.f;
#pragma unroll
        for (int j = 0; j < W; ++j) pre += wv[j] * xs[j];
        y[(b * sh.T + tb + u) * sh.C + c] = from_f32<bf16>(act_f(pre, silu));
      }
  }
}

// dw_partial: [B * ntiles, C, W] f32, every entry of this block's channels written (production's layout).
// Dynamic shared memory: 2 buffers x 2 tensors x kS x kCB bf16.
template <int W>
__global__ void __launch_bounds__(kCB)
    bwd_smem_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ dy,
                    bf16* __restrict__ dx, float* __restrict__ dw_partial, ConvShape sh, bool silu) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sx = reinterpret_cast<bf16*>(smem_raw);
  bf16* sd = sx + 2 * kS * kCB;
  const int64_t ncb = (sh.C + kCB - 1) / kCB;
  const int64_t cb = blockIdx.x % ncb, rest = blockIdx.x / ncb, tile = rest % sh.ntiles, b = rest / sh.ntiles;
  const int64_t c0 = cb * kCB, c = c0 + threadIdx.x;
  const bool mine = c < sh.C;
  const int64_t base = b * sh.T * sh.C + c;
  const int64_t t0 = tile * sh.tile, t1 = min(sh.T, t0 + sh.tile);
  // Steps t0 .. t_end - 1 read x and dy (the W - 1 past the tile feed dx of the tile's last steps); steps from
  // t_end to t1 + W - 2 (past the sequence) only flush the dx accumulators, with g = 0.
  const int64_t t_end = min(sh.T, t1 + W - 1);
  const int64_t nchunks = (t_end - t0 + kS - 1) / kS;
  float wv[W], xs[W], acc[W], dw[W];
#pragma unroll
  for (int j = 0; j < W; ++j) {
    wv[j] = mine ? to_f32(w[c * W + j]) : 0.f;
    const int64_t t = t0 - W + j;
    xs[j] = (mine && j > 0 && t >= 0) ? to_f32(x[base + t * sh.C]) : 0.f;
    acc[j] = 0.f;
    dw[j] = 0.f;
  }
  // One step of production's loop (kernels/cuda/short_conv.cu, short_conv_bwd_kernel), x(t) and dy(t) given
  // (in_seq: t < T).
  auto step = [&](int64_t t, bool in_seq, float xt, float dyt) {
    float gt = 0.f;
    if (in_seq) {
#pragma unroll
      for (int j = 0; j < W - 1; ++j) xs[j] = xs[j + 1];
      xs[W - 1] = xt;
      float pre = 0.f;
#pragma unroll
      for (int j = 0; j < W; ++j) pre += wv[j] * xs[j];
      gt = dyt * act_grad(pre, silu);
      if (t < t1) {
#pragma unroll
        for (int j = 0; j < W; ++j) dw[j] += gt * xs[j];
      }
    }
#pragma unroll
    for (int k = 0; k < W; ++k) acc[k] += wv[k] * gt;
    const int64_t s = t - W + 1;
    if (s >= t0 && s < t1) dx[base + s * sh.C] = from_f32<bf16>(acc[0]);
#pragma unroll
    for (int k = 0; k < W - 1; ++k) acc[k] = acc[k + 1];
    acc[W - 1] = 0.f;
  };
  load_chunk(x, sx, sh, b, c0, t0, t_end);
  load_chunk(dy, sd, sh, b, c0, t0, t_end);
  ptx::cp_async_commit();
  for (int64_t k = 0; k < nchunks; ++k) {
    __syncthreads();
    if (k + 1 < nchunks) {
      const int64_t nb = ((k + 1) & 1) * kS * kCB;
      load_chunk(x, sx + nb, sh, b, c0, t0 + (k + 1) * kS, t_end);
      load_chunk(dy, sd + nb, sh, b, c0, t0 + (k + 1) * kS, t_end);
    }
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const int64_t cur = (k & 1) * kS * kCB;
    const int64_t tb = t0 + k * kS;
    if (mine)
      for (int u = 0; u < kS && tb + u < t_end; ++u)
        step(tb + u, true, to_f32(sx[cur + u * kCB + threadIdx.x]), to_f32(sd[cur + u * kCB + threadIdx.x]));
  }
  if (mine) {
    for (int64_t t = t_end; t < t1 + W - 1; ++t) step(t, false, 0.f, 0.f);
    float* pp = dw_partial + ((b * sh.ntiles + tile) * sh.C + c) * W;
#pragma unroll
    for (int j = 0; j < W; ++j) pp[j] = dw[j];
  }
}

void lab_fwd(const Tensor& x, const Tensor& w, bool silu, const Tensor& y) {
  const int dev = x.device().index;
  const ConvShape sh = conv_shape(x, w, dev, 8);
  NATSL_CHECK(sh.C % 8 == 0 && w.size(1) == 4, "lab: C % 8 == 0 and W = 4 only");
  cudaStream_t s = activate(dev);
  const int64_t blocks = sh.B * sh.ntiles * ((sh.C + kCB - 1) / kCB);
  fwd_smem_kernel<4><<<unsigned(blocks), kCB, 2 * kS * kCB * sizeof(bf16), s>>>(
      cptr<bf16>(x), cptr<bf16>(w), mptr<bf16>(y), sh, silu);
  NATSL_CUDA_CHECK_LAUNCH();
}

void lab_bwd(const Tensor& x, const Tensor& w, bool silu, const Tensor& dy, const Tensor& dx, const Tensor& dw) {
  const int dev = x.device().index;
  const ConvShape sh = conv_shape(x, w, dev, 32);
  NATSL_CHECK(sh.C % 8 == 0 && w.size(1) == 4, "lab: C % 8 == 0 and W = 4 only");
  cudaStream_t s = activate(dev);
  const int64_t groups = sh.B * sh.ntiles;
  Tensor partial = scratch_f32(groups * sh.C * 4, x.device());
  const int64_t blocks = groups * ((sh.C + kCB - 1) / kCB);
  bwd_smem_kernel<4><<<unsigned(blocks), kCB, 4 * kS * kCB * sizeof(bf16), s>>>(
      cptr<bf16>(x), cptr<bf16>(w), cptr<bf16>(dy), mptr<bf16>(dx), partial.data<float>(), sh, silu);
  NATSL_CUDA_CHECK_LAUNCH();
  column_sum<bf16>(partial.data<float>(), groups, sh.C * 4, mptr<bf16>(dw), dev, s);
}

Tensor rnd(const Shape& sh, uint64_t seed) {
  Tensor t = Tensor::empty(sh, DType::bf16, Device::cuda(0));
  Generator g(seed);
  normal_(t, g, 0.0, 1.0);
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  return ha.numel() == hb.numel() &&
         std::memcmp(ha.data_ptr(), hb.data_ptr(), size_t(ha.numel()) * dtype_size(ha.dtype())) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--reps") reps = std::atoi(argv[i + 1]);
  cudaStream_t s = activate(0);
  bool all = true;
  std::printf("short_conv W4 SiLU bf16 (%s timing, %d reps): production vs shared-memory chunks of %d steps\n",
              bench::timing_method(), reps, kS);
  // natsl-340m's q/k (768 channels) and v (1536) convolutions, the ops benchmark's shape, and awkward ones
  // (a partial channel block, a sequence that is not a multiple of the tile or of the chunk).
  const std::vector<std::vector<int64_t>> shapes = {
      {8, 4096, 768}, {8, 4096, 1536}, {16, 4096, 2048}, {3, 1000, 264}, {1, 77, 8}};
  for (const auto& shp : shapes) {
    const int64_t B = shp[0], T = shp[1], C = shp[2];
    Tensor x = rnd({B, T, C}, 1), dy = rnd({B, T, C}, 2), w = rnd({C, 4}, 3);
    auto e = [&](const Shape& sh) { return Tensor::empty(sh, DType::bf16, Device::cuda(0)); };
    Tensor y_p = e({B, T, C}), y_l = e({B, T, C}), dx_p = e({B, T, C}), dx_l = e({B, T, C});
    Tensor dw_p = e({C, 4}), dw_l = e({C, 4});
    auto pf = [&] { natsl::kernels::cuda::short_conv_fwd(x, w, true, y_p); };
    auto lf = [&] { lab_fwd(x, w, true, y_l); };
    auto pb = [&] { natsl::kernels::cuda::short_conv_bwd(x, w, true, dy, dx_p, dw_p); };
    auto lb = [&] { lab_bwd(x, w, true, dy, dx_l, dw_l); };
    pf();
    lf();
    pb();
    lb();
    NATSL_CUDA_CHECK(cudaDeviceSynchronize());
    const bool ok_y = same_bits(y_p, y_l), ok_dx = same_bits(dx_p, dx_l), ok_dw = same_bits(dw_p, dw_l);
    all = all && ok_y && ok_dx && ok_dw;
    const double t = double(B * T * C) * 2;  // bytes of one tensor
    const double tpf = bench::median_ms(pf, reps, s), tlf = bench::median_ms(lf, reps, s);
    const double tpb = bench::median_ms(pb, reps, s), tlb = bench::median_ms(lb, reps, s);
    std::printf("  B%lld T%lld C%lld  fwd %.4f -> %.4f ms (%.3f, %.0f GB/s) y %s | bwd %.4f -> %.4f ms (%.3f, %.0f GB/s) "
                "dx %s dw %s\n",
                (long long)B, (long long)T, (long long)C, tpf, tlf, tlf / tpf, 2 * t / (tlf * 1e6),
                ok_y ? "same" : "DIFFERENT", tpb, tlb, tlb / tpb, 3 * t / (tlb * 1e6), ok_dx ? "same" : "DIFFERENT",
                ok_dw ? "same" : "DIFFERENT");
  }
  return all ? 0 : 1;
}
