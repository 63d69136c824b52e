// CUDA fused cross-entropy over logits [N, V]. A block-row per token row streams the vocabulary in
// vector-wide chunks; nothing of size N x V is allocated.
//   forward:  lse = log sum_j exp(x_j)  (online max/sum, one read),  loss = lse - x_target
//   backward: dx_j = (exp(x_j - lse) - [j == target]) * grad_scale  (one read, one write; may be in place)
//   fused:    both in one kernel: the second read of a row hits L2, so the logits cross DRAM once each way.
#include <cstdio>

#include "kernels/cuda/cross_entropy_fused.h"
#include "kernels/cuda/online_softmax.cuh"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

template <class I>
__device__ __forceinline__ int64_t checked_target(const I* targets, int64_t r, int64_t V, int64_t ignore) {
  const int64_t t = int64_t(targets[r]);
  if (t != ignore && (t < 0 || t >= V)) {
    printf("natsl cross_entropy: target %lld of row %lld is outside [0, %lld) and is not ignore_index %lld\n",
           (long long)t, (long long)r, (long long)V, (long long)ignore);
    __trap();
  }
  return t;
}

// FWD: write losses/lse/valid. BWD: write dlogits (from lse computed here when FWD, else read from lse).
template <class T, class I, int VEC, bool FWD, bool BWD>
__global__ void __launch_bounds__(1024)
    cross_entropy_kernel(const T* logits, const I* __restrict__ targets, int64_t rows, int64_t V, int64_t ignore,
                         float* __restrict__ losses, float* lse, float* __restrict__ valid,
                         const float* __restrict__ grad_scale, T* dlogits) {
  extern __shared__ float scratch[];
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * V;
    float row_lse = 0.f, x_target = 0.f;
    if constexpr (FWD) {
      // Read the target logit before any thread of the block can overwrite the row (in-place fused mode).
      if (active && threadIdx.x == 0) {
        const int64_t t = checked_target(targets, r, V, ignore);
        if (t != ignore) x_target = to_f32(logits[off + t]);
      }
      MaxSum ms;
      if (active)
#pragma unroll 4
        for (int64_t j = int64_t(threadIdx.x) * VEC; j < V; j += int64_t(blockDim.x) * VEC) {
          float v[VEC];
          load_vec<T, VEC>(logits + off + j, v);
          ms.add<T, VEC>(v);
        }
      row_lse = row_logsumexp<T>(ms, scratch);
      if constexpr (BWD) __syncthreads();  // every read of the row above happens before the writes below
    }
    if (!active) continue;
    const int64_t t = checked_target(targets, r, V, ignore);
    const bool is_valid = t != ignore;
    if constexpr (FWD) {
      if (threadIdx.x == 0) {
        lse[r] = row_lse;
        valid[r] = is_valid ? 1.f : 0.f;
        losses[r] = is_valid ? row_lse - x_target : 0.f;
      }
    } else {
      row_lse = lse[r];
    }
    if constexpr (BWD) {
      const float scale = grad_scale[0];
#pragma unroll 4
      for (int64_t j = int64_t(threadIdx.x) * VEC; j < V; j += int64_t(blockDim.x) * VEC) {
        float v[VEC];
        load_vec<T, VEC>(logits + off + j, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float p = exp_for<T>(v[k] - row_lse);
          v[k] = is_valid ? (p - (j + k == t ? 1.f : 0.f)) * scale : 0.f;
        }
        store_vec<T, VEC>(dlogits + off + j, v);
      }
    }
  }
}

template <bool FWD, bool BWD>
void launch(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& losses,
            const Tensor& lse, const Tensor& valid, const Tensor& grad_scale, const Tensor& dlogits, const char* op) {
  NATSL_CHECK(logits.dim() == 2, op, ": logits must be [N, V], got ", logits.str());
  const int64_t rows = logits.size(0), V = logits.size(1);
  NATSL_CHECK(targets.numel() == rows, op, ": ", rows, " rows but ", targets.numel(), " targets");
  NATSL_CHECK(lse.dtype() == DType::f32 && lse.numel() == rows, op, ": lse must be f32 [N]");
  if (FWD)
    NATSL_CHECK(losses.dtype() == DType::f32 && losses.numel() == rows && valid.dtype() == DType::f32 &&
                    valid.numel() == rows,
                op, ": losses and valid must be f32 [N]");
  if (BWD) {
    NATSL_CHECK(grad_scale.defined() && grad_scale.dtype() == DType::f32 && grad_scale.numel() == 1, op,
                ": grad_scale must be a 1-element f32 tensor");
    NATSL_CHECK(dlogits.shape() == logits.shape() && dlogits.dtype() == logits.dtype(), op,
                ": dlogits must match logits");
  }
  if (rows == 0) return;
  NATSL_CHECK(V > 0, op, ": empty vocabulary");
  const int dev = logits.device().index;
  cudaStream_t s = activate(dev);
  NATSL_CUDA_DISPATCH_FLOAT(logits.dtype(), op, T, [&] {
    NATSL_CUDA_DISPATCH_INDEX(targets.dtype(), op, I, [&] {
      const T* xp = static_cast<const T*>(logits.data_ptr());
      const I* tp = static_cast<const I*>(targets.data_ptr());
      float* lp = FWD ? losses.data<float>() : nullptr;
      float* sp = lse.data<float>();
      float* vp = FWD ? valid.data<float>() : nullptr;
      const float* gs = BWD ? grad_scale.data<float>() : nullptr;
      T* dp = BWD ? static_cast<T*>(dlogits.data_ptr()) : nullptr;
      constexpr int VC = kVec<T>;
      if (V % VC == 0 && aligned16(xp) && (!BWD || aligned16(dp))) {
        RowGrid g = row_grid(dev, rows, V, VC);
        cross_entropy_kernel<T, I, VC, FWD, BWD><<<g.grid, g.block, g.smem, s>>>(xp, tp, rows, V, ignore_index, lp,
                                                                               sp, vp, gs, dp);
      } else {
        RowGrid g = row_grid(dev, rows, V, 1);
        cross_entropy_kernel<T, I, 1, FWD, BWD><<<g.grid, g.block, g.smem, s>>>(xp, tp, rows, V, ignore_index, lp,
                                                                              sp, vp, gs, dp);
      }
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void cross_entropy_fwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& losses,
                       const Tensor& lse, const Tensor& valid) {
  launch<true, false>(logits, targets, ignore_index, losses, lse, valid, Tensor(), Tensor(), "cross_entropy_fwd");
}

void cross_entropy_bwd(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_scale,
                       int64_t ignore_index, const Tensor& dlogits) {
  launch<false, true>(logits, targets, ignore_index, Tensor(), lse, Tensor(), grad_scale, dlogits,
                      "cross_entropy_bwd");
}

void cross_entropy_fwd_bwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           const Tensor& grad_scale, const Tensor& losses, const Tensor& lse, const Tensor& valid,
                           const Tensor& dlogits) {
  launch<true, true>(logits, targets, ignore_index, losses, lse, valid, grad_scale, dlogits,
                     "cross_entropy_fwd_bwd");
}

}  // namespace natsl::kernels::cuda
