// CUDA causal depthwise short convolution, x/y [B, T, C], w [C, W]:
//   pre[b,t,c] = sum_j w[c,j] x[b, t-W+1+j, c] (zero before t = 0),  y = act(pre)
//   g = dy * act'(pre);  dx[b,s,c] = sum_j w[c,j] g[b, s+W-1-j, c];  dw[c,j] = sum_{b,t} g[b,t,c] x[b,t-W+1+j,c]
// A thread owns VEC neighbouring channels: 1, or 2 for bf16 when C is even (variant 1,
// NATSL_KERNEL_VARIANT_SHORT_CONV_FWD / _BWD in variant.h: one 4-byte access per step, more registers)
// over a tile of consecutive steps and slides a W-wide register window along them (W is a template
// parameter so the window stays in registers). Neighbouring threads take neighbouring channels, so every
// access is coalesced. Steps are read kSteps at a time before any is used, so each thread keeps kSteps
// loads in flight (one at a time left the kernels latency-bound at a quarter of the copy bandwidth).
// dw: each thread writes its tile's partial sums, added in order by a second kernel (deterministic).
#include <algorithm>

#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/variant.h"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

constexpr int kMaxWidth = 8;
constexpr int kSteps = 8;  // steps loaded together per thread

__device__ __forceinline__ float act_f(float p, bool silu) { return silu ? p / (1.f + expf(-p)) : p; }
__device__ __forceinline__ float act_grad(float p, bool silu) {
  if (!silu) return 1.f;
  const float s = 1.f / (1.f + expf(-p));
  return s * (1.f + p * (1.f - s));
}

// VEC consecutive channels at p as floats (VEC = 2 only for bf16: one 4-byte access).
template <class T, int VEC>
__device__ __forceinline__ void load_ch(const T* p, float (&f)[VEC]) {
  if constexpr (VEC == 1) {
    f[0] = to_f32(p[0]);
  } else {
    static_assert(VEC == 2 && sizeof(T) == 2, "paired channels are bf16");
    const uint32_t raw = *reinterpret_cast<const uint32_t*>(p);
    f[0] = __uint_as_float(raw << 16);
    f[1] = __uint_as_float(raw & 0xffff0000u);
  }
}
template <class T, int VEC>
__device__ __forceinline__ void store_ch(T* p, const float (&f)[VEC]) {
  if constexpr (VEC == 1) {
    p[0] = from_f32<T>(f[0]);
  } else {
    *reinterpret_cast<uint32_t*>(p) =
        uint32_t(bf16::round_bits(f[0])) | (uint32_t(bf16::round_bits(f[1])) << 16);
  }
}

struct ConvShape {
  int64_t B, T, C, tile, ntiles;
};

template <class T, int W, int VEC>
__global__ void __launch_bounds__(256) short_conv_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                             T* __restrict__ y, ConvShape sh, bool silu) {
  const int64_t CV = sh.C / VEC, total = sh.B * sh.ntiles * CV;
  for (int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (id % CV) * VEC, rest = id / CV, tile = rest % sh.ntiles, b = rest / sh.ntiles;
    const int64_t t0 = tile * sh.tile, t1 = min(sh.T, t0 + sh.tile);
    const T* xb = x + b * sh.T * sh.C + c;
    T* yb = y + b * sh.T * sh.C + c;
    float wv[W][VEC], xs[W][VEC];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const int64_t t = t0 - W + j;  // xs[j] = x(t0 - W + j): after shifting in x(t0), xs[j] = x(t0 - W + 1 + j)
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        wv[j][v] = to_f32(w[(c + v) * W + j]);
        xs[j][v] = 0.f;
      }
      if (j > 0 && t >= 0) load_ch<T, VEC>(xb + t * sh.C, xs[j]);
    }
    for (int64_t tb = t0; tb < t1; tb += kSteps) {
      float xu[kSteps][VEC];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (tb + u < t1) load_ch<T, VEC>(xb + (tb + u) * sh.C, xu[u]);
      }
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (tb + u >= t1) break;
        float out[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
#pragma unroll
          for (int j = 0; j < W - 1; ++j) xs[j][v] = xs[j + 1][v];
          xs[W - 1][v] = xu[u][v];
          float pre = 0.f;
#pragma unroll
          for (int j = 0; j < W; ++j) pre += wv[j][v] * xs[j][v];
          out[v] = act_f(pre, silu);
        }
        store_ch<T, VEC>(yb + (tb + u) * sh.C, out);
      }
    }
  }
}

// dw_partial: [B * ntiles, C, W] f32, every entry written.
template <class T, int W, int VEC>
__global__ void __launch_bounds__(256) short_conv_bwd_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                             const T* __restrict__ dy, T* __restrict__ dx,
                                                             float* __restrict__ dw_partial, ConvShape sh, bool silu) {
  const int64_t CV = sh.C / VEC, total = sh.B * sh.ntiles * CV;
  for (int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (id % CV) * VEC, rest = id / CV, tile = rest % sh.ntiles, b = rest / sh.ntiles;
    const int64_t t0 = tile * sh.tile, t1 = min(sh.T, t0 + sh.tile);
    const int64_t base = b * sh.T * sh.C + c;
    float wv[W][VEC], xs[W][VEC], acc[W][VEC], dw[W][VEC];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const int64_t t = t0 - W + j;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        wv[j][v] = to_f32(w[(c + v) * W + j]);
        xs[j][v] = 0.f;
        acc[j][v] = 0.f;
        dw[j][v] = 0.f;
      }
      if (j > 0 && t >= 0) load_ch<T, VEC>(x + base + t * sh.C, xs[j]);
    }
    // Step t produces g(t) and adds w_k g(t) to dx(t - W + 1 + k) (held in acc[k]); dx(s) is complete after
    // step s + W - 1, so the loop runs W - 1 steps past the tile (g = 0 past the end of the sequence).
    const int64_t t_end = t1 + W - 1, t_read = min(sh.T, t_end);
    for (int64_t tb = t0; tb < t_end; tb += kSteps) {
      float xu[kSteps][VEC], du[kSteps][VEC];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (tb + u < t_read) {
          load_ch<T, VEC>(x + base + (tb + u) * sh.C, xu[u]);
          load_ch<T, VEC>(dy + base + (tb + u) * sh.C, du[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        const int64_t t = tb + u;
        if (t >= t_end) break;
        float out[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          float gt = 0.f;
          if (t < sh.T) {
#pragma unroll
            for (int j = 0; j < W - 1; ++j) xs[j][v] = xs[j + 1][v];
            xs[W - 1][v] = xu[u][v];
            float pre = 0.f;
#pragma unroll
            for (int j = 0; j < W; ++j) pre += wv[j][v] * xs[j][v];
            gt = du[u][v] * act_grad(pre, silu);
            if (t < t1) {
#pragma unroll
              for (int j = 0; j < W; ++j) dw[j][v] += gt * xs[j][v];
            }
          }
#pragma unroll
          for (int k = 0; k < W; ++k) acc[k][v] += wv[k][v] * gt;
          out[v] = acc[0][v];
#pragma unroll
          for (int k = 0; k < W - 1; ++k) acc[k][v] = acc[k + 1][v];
          acc[W - 1][v] = 0.f;
        }
        const int64_t s = t - W + 1;
        if (s >= t0 && s < t1) store_ch<T, VEC>(dx + base + s * sh.C, out);
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      float* pp = dw_partial + ((b * sh.ntiles + tile) * sh.C + c + v) * W;
#pragma unroll
      for (int j = 0; j < W; ++j) pp[j] = dw[j][v];
    }
  }
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

// Two bf16 channels per thread need an even C and 4-byte aligned rows.
template <class T>
bool paired_channels(const ConvShape& sh, std::initializer_list<const Tensor*> ts) {
  bool ok = std::is_same_v<T, bf16> && sh.C % 2 == 0;
  for (const Tensor* t : ts) ok = ok && reinterpret_cast<uintptr_t>(t->data_ptr()) % 4 == 0;
  return ok;
}

}  // namespace

void short_conv_fwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& y) {
  const int dev = x.device().index;
  ConvShape sh = conv_shape(x, w, dev, 8);
  if (x.numel() == 0) return;
  cudaStream_t s = activate(dev);
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "short_conv_fwd", T, [&] {
    NATSL_CHECK(w.dtype() == x.dtype() && y.dtype() == x.dtype(), "short_conv_fwd: dtypes differ");
    const bool paired = kernel_variant(kVariantShortConvFwd, kDefaultShortConvFwd) == 1 && paired_channels<T>(sh, {&x, &y});
    dispatch_width(w.size(1), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      auto launch = [&](auto vc) {
        constexpr int VEC = decltype(vc)::value;
        const int64_t total = sh.B * sh.ntiles * (sh.C / VEC);
        short_conv_fwd_kernel<T, W, VEC><<<grid_for(dev, total, 256), 256, 0, s>>>(
            static_cast<const T*>(x.data_ptr()), static_cast<const T*>(w.data_ptr()),
            static_cast<T*>(y.data_ptr()), sh, apply_silu);
      };
      if constexpr (std::is_same_v<T, bf16>) {
        if (paired) return launch(std::integral_constant<int, 2>{});
      }
      launch(std::integral_constant<int, 1>{});
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void short_conv_bwd(const Tensor& x, const Tensor& w, bool apply_silu, const Tensor& dy, const Tensor& dx,
                    const Tensor& dw) {
  const int dev = x.device().index;
  // Tiles of at least 32 steps keep the dw partial buffer small (B * T / 32 * C * W floats at most).
  ConvShape sh = conv_shape(x, w, dev, 32);
  cudaStream_t s = activate(dev);
  if (x.numel() == 0) {
    if (dw.defined()) dw.zero_();
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "short_conv_bwd", T, [&] {
    for (const Tensor* t : {&w, &dy, &dx, &dw})
      NATSL_CHECK(!t->defined() || t->dtype() == x.dtype(), "short_conv_bwd: dtypes differ");
    const bool paired =
        kernel_variant(kVariantShortConvBwd, kDefaultShortConvBwd) == 1 && paired_channels<T>(sh, {&x, &dy, &dx});
    dispatch_width(w.size(1), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int64_t total = sh.B * sh.ntiles * sh.C;
      const int64_t groups = sh.B * sh.ntiles;
      Tensor partial = scratch_f32(groups * sh.C * W, x.device());
      auto launch = [&](auto vc) {
        constexpr int VEC = decltype(vc)::value;
        short_conv_bwd_kernel<T, W, VEC><<<grid_for(dev, total / VEC, 256), 256, 0, s>>>(
            static_cast<const T*>(x.data_ptr()), static_cast<const T*>(w.data_ptr()),
            static_cast<const T*>(dy.data_ptr()), static_cast<T*>(dx.data_ptr()), partial.data<float>(), sh,
            apply_silu);
      };
      if constexpr (std::is_same_v<T, bf16>) {
        if (paired) launch(std::integral_constant<int, 2>{});
        else launch(std::integral_constant<int, 1>{});
      } else {
        launch(std::integral_constant<int, 1>{});
      }
      NATSL_CUDA_CHECK_LAUNCH();
      if (dw.defined()) column_sum<T>(partial.data<float>(), groups, sh.C * W, static_cast<T*>(dw.data_ptr()), dev, s);
    });
  });
}

}  // namespace natsl::kernels::cuda
