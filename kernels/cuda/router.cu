// CUDA NAtS-L router kernels (kernels/router.h): chunk mean-pool forward/backward and the straight-through
// choice forward/backward. All tiny next to the layer's matmuls, so each is a plain elementwise map:
// - mean-pool: a thread per (b, chunk, feature) sums the chunk's tokens in f32 (neighbouring threads read
//   neighbouring features); its backward is a thread per (b, t, feature);
// - choice: a thread per (b, chunk, router head) row, in double like the CPU reference, so the labels and the
//   Gumbel noise (Philox, core/philox.h) are the CPU's.
#include "core/philox.h"
#include "kernels/cuda/common.cuh"
#include "kernels/router.h"

namespace natsl::kernels::cuda {
namespace {

template <class T>
__global__ void pool_fwd_kernel(const T* __restrict__ x, T* __restrict__ pooled, int64_t B, int64_t L, int64_t d,
                                int64_t C, int64_t NC) {
  const int64_t n = B * NC * d;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i % d, c = (i / d) % NC, b = i / (d * NC);
    const int64_t t0 = c * C, t1 = t0 + C < L ? t0 + C : L;
    float acc = 0.f;
    for (int64_t t = t0; t < t1; ++t) acc += to_f32(x[(b * L + t) * d + e]);
    pooled[i] = from_f32<T>(acc / float(t1 - t0));
  }
}

template <class T>
__global__ void pool_bwd_kernel(const T* __restrict__ dpooled, T* __restrict__ dx, int64_t B, int64_t L, int64_t d,
                                int64_t C, int64_t NC) {
  const int64_t n = B * L * d;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i % d, t = (i / d) % L, b = i / (d * L);
    const int64_t c = t / C, t1 = c * C + C < L ? c * C + C : L;
    dx[i] = from_f32<T>(to_f32(dpooled[(b * NC + c) * d + e]) / float(t1 - c * C));
  }
}

template <class T>
__global__ void choice_fwd_kernel(const T* __restrict__ logits, float* __restrict__ probs, float* __restrict__ ms,
                                  float* __restrict__ mg, int64_t rows, int64_t NC, int64_t Hr, double tau,
                                  bool gumbel, uint64_t seed, uint64_t offset, bool force_last_both) {
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    double s[2];
#pragma unroll
    for (int op = 0; op < 2; ++op) {
      s[op] = double(to_f32(logits[2 * row + op]));
      if (gumbel) s[op] += -::log(-::log(double(philox_uniform(seed, offset + uint64_t(2 * row + op)))));
    }
    const double p1 = 1.0 / (1.0 + ::exp((s[0] - s[1]) / tau));
    probs[2 * row] = float(1.0 - p1);
    probs[2 * row + 1] = float(p1);
    const bool softmax = s[0] >= s[1];
    const bool both = force_last_both && (row / Hr) % NC == NC - 1;
    ms[row] = softmax || both ? 1.f : 0.f;
    mg[row] = !softmax || both ? 1.f : 0.f;
  }
}

// Masks / mask gradients may be null (see kernels/router.h).
template <class T>
__global__ void choice_bwd_kernel(const float* __restrict__ probs, const float* __restrict__ ms,
                                  const float* __restrict__ mg, const float* __restrict__ ds,
                                  const float* __restrict__ dg, T* __restrict__ dlogits, int64_t rows, int64_t NC,
                                  int64_t Hr, double tau, bool force_last_both) {
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    const bool dropped = force_last_both && (row / Hr) % NC == NC - 1;
    const bool sel0 = !ms || ms[row] > 0.5f, sel1 = !mg || mg[row] > 0.5f;
    const double m0 = ds && sel0 && !dropped ? double(ds[row]) : 0.0;
    const double m1 = dg && sel1 && !dropped ? double(dg[row]) : 0.0;
    const double p0 = probs[2 * row], p1 = probs[2 * row + 1];
    const double mean = m0 * p0 + m1 * p1;
    dlogits[2 * row] = from_f32<T>(float(p0 * (m0 - mean) / tau));
    dlogits[2 * row + 1] = from_f32<T>(float(p1 * (m1 - mean) / tau));
  }
}

// The mean pool (BWD false: in = x [B, L, d], out = pooled [B, NC, d]) or its backward (in = dpooled,
// out = dx), a thread per element of out, T the dtype of x (of dx for the backward).
template <bool BWD>
void launch_pool(const Tensor& in, const Tensor& out, int64_t B, int64_t L, int64_t d, int64_t C, int64_t NC,
                 const char* op) {
  const auto [n, dev, s] = flat_op(out);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT((BWD ? out : in).dtype(), op, T, [&] {
    auto* kern = BWD ? pool_bwd_kernel<T> : pool_fwd_kernel<T>;
    kern<<<grid_for(dev, n, 256), 256, 0, s>>>(cptr<T>(in), mptr<T>(out), B, L, d, C, NC);
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

const float* f32_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

}  // namespace

void chunk_mean_pool_fwd(const Tensor& x, int64_t chunk_size, const Tensor& pooled) {
  launch_pool<false>(x, pooled, x.size(0), x.size(1), x.size(2), chunk_size, pooled.size(1), "chunk_mean_pool_fwd");
}

void chunk_mean_pool_bwd(const Tensor& dpooled, int64_t chunk_size, const Tensor& dx) {
  launch_pool<true>(dpooled, dx, dx.size(0), dx.size(1), dx.size(2), chunk_size, dpooled.size(1),
                    "chunk_mean_pool_bwd");
}

void router_choice_fwd(const RouterChoiceArgs& args, const Tensor& logits, const Tensor& probs,
                       const Tensor& mask_softmax, const Tensor& mask_gdn) {
  const int64_t NC = logits.size(1), Hr = logits.size(2);
  const auto [two, rows, dev, s] = row_op(logits, 2);  // rows of two logits
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(logits.dtype(), "router_choice_fwd", T, [&] {
    choice_fwd_kernel<T><<<grid_for(dev, rows, 256), 256, 0, s>>>(
        cptr<T>(logits), probs.data<float>(), mask_softmax.data<float>(), mask_gdn.data<float>(), rows, NC, Hr,
        args.tau, args.gumbel, args.seed, args.offset, args.force_last_both);
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void router_choice_bwd(const RouterChoiceArgs& args, const Tensor& probs, const Tensor& mask_softmax,
                       const Tensor& mask_gdn, const Tensor& dm_softmax, const Tensor& dm_gdn,
                       const Tensor& dlogits) {
  const int64_t NC = probs.size(1), Hr = probs.size(2);
  const auto [two, rows, dev, s] = row_op(probs, 2);  // rows of two probabilities
  if (rows == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(dlogits.dtype(), "router_choice_bwd", T, [&] {
    choice_bwd_kernel<T><<<grid_for(dev, rows, 256), 256, 0, s>>>(
        probs.data<float>(), f32_or_null(mask_softmax), f32_or_null(mask_gdn), f32_or_null(dm_softmax),
        f32_or_null(dm_gdn), mptr<T>(dlogits), rows, NC, Hr, args.tau, args.force_last_both);
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
