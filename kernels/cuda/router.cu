// CUDA NAtS-L router kernels (kernels/router.h): chunk mean-pool forward/backward and the straight-through
// choice forward/backward. All tiny next to the layer's matmuls, so each is a plain elementwise map:
// - mean-pool: a thread per (b, chunk, feature) sums the chunk's tokens in f32 (neighbouring threads read
//   neighbouring features); its backward a row of threads per token, 16-byte vectors of features;
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

// A row of threads per token (b, t): the token's chunk index once per row, then VEC features at a time (a thread
// per element, with three 64-bit divisions each, was bound by the integer divisions).
template <class T, int VEC>
__global__ void pool_bwd_kernel(const T* __restrict__ dpooled, T* __restrict__ dx, int64_t rows, int64_t L,
                                int64_t d, int64_t C, int64_t NC, bool accumulate) {
  NATSL_FOR_EACH_ROW(r, rows) {
    if (r >= rows) continue;  // no block-wide step below
    const int64_t b = r / L, t = r - b * L, c = t / C;
    const float len = float(c * C + C < L ? C : L - c * C);
    const T* src = dpooled + (b * NC + c) * d;
    T* dst = dx + r * d;
    NATSL_FOR_ROW_VEC(j, d, VEC) {
      float v[VEC];
      load_vec<T, VEC>(src + j, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = v[k] / len;
      if (accumulate) {  // the gradient rounded to T, then added to dx's value in f32 and rounded once
        float prior[VEC];
        load_vec<T, VEC>(dst + j, prior);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = prior[k] + to_f32(from_f32<T>(v[k]));
      }
      store_vec<T, VEC>(dst + j, v);
    }
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

}  // namespace

void chunk_mean_pool_fwd(const Tensor& x, int64_t chunk_size, const Tensor& pooled) {
  // A thread per element of pooled [B, NC, d].
  const auto [n, dev, s] = flat_op(pooled);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "chunk_mean_pool_fwd", T, [&] {
    pool_fwd_kernel<T><<<grid_for(dev, n, 256), 256, 0, s>>>(cptr<T>(x), mptr<T>(pooled), x.size(0), x.size(1),
                                                             x.size(2), chunk_size, pooled.size(1));
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void chunk_mean_pool_bwd(const Tensor& dpooled, int64_t chunk_size, const Tensor& dx, bool accumulate) {
  const auto [d, rows, dev, s] = row_op(dx, dx.size(2));  // rows = B * L tokens
  if (rows == 0) return;
  const int64_t L = dx.size(1);
  NATSL_CUDA_DISPATCH_FLOAT(dx.dtype(), "chunk_mean_pool_bwd", T, [&] {
    constexpr int V = kVec<T>;
    const bool vec = d % V == 0 && aligned16(dpooled) && aligned16(dx);
    launch_rows<V>(vec, dev, rows, d, [&](auto width, const RowGrid& g) {
      pool_bwd_kernel<T, decltype(width)::value><<<g.grid, g.block, 0, s>>>(cptr<T>(dpooled), mptr<T>(dx), rows, L,
                                                                          d, chunk_size, dpooled.size(1), accumulate);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

namespace {

const float* f32_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

}  // namespace

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
