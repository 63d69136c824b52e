// CUDA fused cross-entropy over logits [N, V]. A block-row per token row streams the vocabulary in
// vector-wide chunks; nothing of size N x V is allocated.
//   forward:  lse = log sum_j exp(x_j)  (online max/sum, one read),  loss = lse - x_target
//   backward: dx_j = (exp(x_j - lse) - [j == target]) * grad_scale  (one read, one write; may be in place)
//   fused:    both in one kernel: the second read of a row hits L2, so the logits cross DRAM once each way.
// Fused kernels (CrossEntropyFusedPlan, cross_entropy_fused.h): cross_entropy_fused_ring_kernel (rows prefetched
// by bulk copies into a shared-memory ring, 2-3 rows ahead; the default) or, where it does not apply or the plan
// says so, cross_entropy_fused_rows_kernel (row in registers, ~2 rows per SM).
#include <algorithm>
#include <cstdio>

#include "kernels/cuda/cross_entropy_fused.h"
#include "kernels/cuda/online_softmax.cuh"
#include "kernels/cuda/store_rn.cuh"
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

// Fused forward+backward with the row held in registers: a row of up to blockDim.x * NV vectors is loaded
// once (all NV 16-byte loads of a thread in flight together), kept raw, and read three times from
// registers: the max, sum exp(x - max), then dx = (exp(x - lse) - [j == target]) * grad_scale. The logits
// cross DRAM once each way with no second read through L2, and a 512-thread block per bf16 row of 32K
// leaves room for two rows per SM (64 registers per thread).
template <class T, int VEC>
__device__ __forceinline__ void unpack(const uint4& raw, float (&f)[VEC]) {
  load_vec<T, VEC>(reinterpret_cast<const T*>(&raw), f);
}

template <class T, class I, int VEC, int NV>
__global__ void __launch_bounds__(1024, 1)
    cross_entropy_fused_rows_kernel(const T* logits, const I* __restrict__ targets, int64_t rows, int64_t V,
                                    int64_t ignore, float* __restrict__ losses, float* __restrict__ lse,
                                    float* __restrict__ valid, const float* __restrict__ grad_scale, T* dlogits) {
  extern __shared__ float scratch[];
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * V;
    float x_target = 0.f;
    if (active && threadIdx.x == 0) {
      const int64_t t = checked_target(targets, r, V, ignore);
      if (t != ignore) x_target = to_f32(logits[off + t]);
    }
    uint4 raw[NV];
    float m = -INFINITY;
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t j = (int64_t(n) * blockDim.x + threadIdx.x) * VEC;
      raw[n] = active && j < V ? *reinterpret_cast<const uint4*>(logits + off + j) : make_uint4(0, 0, 0, 0);
    }
    // f(j, v) for each vector j of the row that this thread holds, v its values (unpacked from raw).
    auto for_each_held = [&](auto&& f) {
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t j = (int64_t(n) * blockDim.x + threadIdx.x) * VEC;
        if (!(active && j < V)) continue;
        float v[VEC];
        unpack<T, VEC>(raw[n], v);
        f(j, v);
      }
    };
    for_each_held([&](int64_t, const float (&v)[VEC]) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[k]);
    });
    const float M = row_max(m, scratch);
    const float Ms = M == -INFINITY ? 0.f : M;  // an all -inf row: sum 0, lse -inf (as the streaming kernel)
    float se = 0.f;
    for_each_held([&](int64_t, const float (&v)[VEC]) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) se += exp_for<T>(v[k] - Ms);
    });
    const float row_lse = Ms + logf(row_sum(se, scratch));
    __syncthreads();  // every read of the row (x_target too) happens before the writes below (in place)
    if (!active) continue;
    const int64_t t = checked_target(targets, r, V, ignore);
    const bool is_valid = t != ignore;
    if (threadIdx.x == 0) {
      lse[r] = row_lse;
      valid[r] = is_valid ? 1.f : 0.f;
      losses[r] = is_valid ? row_lse - x_target : 0.f;
    }
    const float scale = is_valid ? grad_scale[0] : 0.f;
    for_each_held([&](int64_t j, float (&v)[VEC]) {  // this row exists: every j < V
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = exp_for<T>(v[k] - row_lse) * scale;
      if (is_valid && t >= j && t < j + VEC) {
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          if (j + k == t) v[k] -= scale;
      }
      store_vec<T, VEC>(dlogits + off + j, v);
    });
  }
}

// Fused forward+backward with a ring of STAGES row buffers in shared memory, filled by 1-D bulk copies
// (cp.async.bulk, completing on one mbarrier per stage): while the block computes row k from the ring, rows
// k+1 .. k+STAGES-1 are already on their way, so DRAM reads never wait for the compute (max pass, sum of
// exp pass, dx pass, all from shared memory) or for the dx stores. Grid = blocks resident at once (often one
// per SM); block b takes rows b, b + grid, ... Row bytes: a multiple of 16, pointers 16-byte aligned.
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void ring_fill(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

__device__ __forceinline__ void ring_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
}

template <class T, class I, int STAGES>
__global__ void __launch_bounds__(1024)
    cross_entropy_fused_ring_kernel(const T* logits, const I* __restrict__ targets, int64_t rows, int64_t V,
                                    int64_t ignore, float* __restrict__ losses, float* __restrict__ lse,
                                    float* __restrict__ valid, const float* __restrict__ grad_scale, T* dlogits) {
  constexpr int VEC = kVec<T>;
  extern __shared__ __align__(128) unsigned char ring_raw[];
  __shared__ __align__(8) uint64_t bar[STAGES];
  __shared__ float scratch[32];
  const int64_t nvec = V / VEC;
  const uint32_t row_bytes = uint32_t(V * int64_t(sizeof(T)));
  const int64_t stride_bytes = (int64_t(row_bytes) + 127) / 128 * 128;
  auto stage_ptr = [&](int st) { return reinterpret_cast<T*>(ring_raw + st * stride_bytes); };
  if (threadIdx.x == 0) {
#pragma unroll
    for (int st = 0; st < STAGES; ++st)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bar[st])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#pragma unroll
    for (int st = 0; st < STAGES; ++st) {
      const int64_t r = blockIdx.x + int64_t(st) * gridDim.x;
      if (r < rows) ring_fill(stage_ptr(st), logits + r * V, row_bytes, &bar[st]);
    }
  }
  __syncthreads();
  int64_t k = 0;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x, ++k) {
    const int st = int(k % STAGES);
    const T* buf = stage_ptr(st);
    const int64_t t = checked_target(targets, r, V, ignore);
    const bool is_valid = t != ignore;
    ring_wait(&bar[st], uint32_t((k / STAGES) & 1));
    float m = -INFINITY;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float x[VEC];
      load_vec<T, VEC>(buf + v * VEC, x);
#pragma unroll
      for (int q = 0; q < VEC; ++q) m = fmaxf(m, x[q]);
    }
    const float M = row_max(m, scratch);
    const float Ms = M == -INFINITY ? 0.f : M;  // an all -inf row: sum 0, lse -inf (as the other kernels)
    float se = 0.f;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float x[VEC];
      load_vec<T, VEC>(buf + v * VEC, x);
#pragma unroll
      for (int q = 0; q < VEC; ++q) se += exp_for<T>(x[q] - Ms);
    }
    const float row_lse = Ms + logf(row_sum(se, scratch));
    if (threadIdx.x == 0) {
      lse[r] = row_lse;
      valid[r] = is_valid ? 1.f : 0.f;
      losses[r] = is_valid ? row_lse - to_f32(buf[t]) : 0.f;
    }
    const float scale = is_valid ? grad_scale[0] : 0.f;
    T* out = dlogits + r * V;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      const int64_t j = v * VEC;
      float x[VEC];
      load_vec<T, VEC>(buf + j, x);
#pragma unroll
      for (int q = 0; q < VEC; ++q) x[q] = exp_for<T>(x[q] - row_lse) * scale;
      if (is_valid && t >= j && t < j + VEC) {
#pragma unroll
        for (int q = 0; q < VEC; ++q)
          if (j + q == t) x[q] -= scale;
      }
      store_vec_rn<T, VEC>(out + j, x);
    }
    __syncthreads();  // every read of this stage is done before the bulk copy refills it
    const int64_t next = r + int64_t(STAGES) * gridDim.x;
    if (threadIdx.x == 0 && next < rows) ring_fill(stage_ptr(st), logits + next * V, row_bytes, &bar[st]);
  }
}

// Launches the ring kernel when STAGES >= 2 rows fit the block's shared memory; false otherwise.
template <class T, class I>
bool launch_ring(const T* xp, const I* tp, int64_t rows, int64_t V, int64_t ignore, float* lp, float* sp, float* vp,
                 const float* gs, T* dp, int dev, cudaStream_t s) {
  const int64_t row_bytes = V * int64_t(sizeof(T));
  if (row_bytes % 16 != 0 || row_bytes >= (int64_t(1) << 20)) return false;
  const int64_t stride = (row_bytes + 127) / 128 * 128;
  int max_smem = 0;
  NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  const int64_t budget = int64_t(max_smem) - 1024;  // the kernel's static shared memory
  const int stages = budget >= 3 * stride ? 3 : budget >= 2 * stride ? 2 : 0;
  if (stages == 0) return false;
  const int64_t nvec = V / kVec<T>;
  int threads = 32;
  while (threads < 1024 && threads < nvec) threads *= 2;
  const int smem = int(stages * stride);
  auto run = [&](auto kern) {
    NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    int per_sm = 0;
    NATSL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem));
    const int64_t grid = std::min<int64_t>(rows, int64_t(sm_count(dev)) * std::max(per_sm, 1));
    kern<<<unsigned(grid), unsigned(threads), smem, s>>>(xp, tp, rows, V, ignore, lp, sp, vp, gs, dp);
  };
  if (stages == 3) run(cross_entropy_fused_ring_kernel<T, I, 3>);
  else run(cross_entropy_fused_ring_kernel<T, I, 2>);
  return true;
}

template <bool FWD, bool BWD>
void launch(const CrossEntropyFusedPlan& plan, const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& losses,
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
      const bool vec = V % VC == 0 && aligned16(xp) && (!BWD || aligned16(dp));
      constexpr int kRowVecs = 8;  // vectors per thread of the register-resident fused kernel
      if (FWD && BWD && vec && plan.ring &&
          launch_ring<T, I>(xp, tp, rows, V, ignore_index, lp, sp, vp, gs, dp, dev, s)) {
        // launched
      } else if (FWD && BWD && vec && (V / VC + kRowVecs - 1) / kRowVecs <= 1024) {
        RowGrid g = row_grid(dev, rows, V, VC, kRowVecs);
        g.grid = dim3(unsigned(grid_for(dev, rows, g.block.y, std::max(1, 1024 / int(g.block.x * g.block.y)))));
        cross_entropy_fused_rows_kernel<T, I, VC, kRowVecs><<<g.grid, g.block, g.smem, s>>>(
            xp, tp, rows, V, ignore_index, lp, sp, vp, gs, dp);
      } else if (vec) {
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

template <class I>
__global__ void __launch_bounds__(1024) valid_count_kernel(const I* __restrict__ targets, int64_t n, int64_t ignore,
                                                           float* __restrict__ count, float* __restrict__ inv) {
  __shared__ float scratch[32];
  // Per-thread integer counts, summed as floats: exact below 2^24 per partial; the fixed tree is
  // deterministic either way.
  int64_t c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) c += int64_t(targets[i]) != ignore ? 1 : 0;
  const float total = row_sum(float(c), scratch);
  if (threadIdx.x == 0) {
    count[0] = total;
    inv[0] = 1.f / fmaxf(total, 1.f);
  }
}

template <class T, int VEC>
__global__ void scale_unless_one_kernel(T* x, int64_t n, const float* __restrict__ s) {
  const float a = s[0];
  if (a == 1.f) return;
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float v[W];
    load_vec<T, W>(x + i, v);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] *= a;
    store_vec<T, W>(x + i, v);
  });
}

}  // namespace

void cross_entropy_fwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& losses,
                       const Tensor& lse, const Tensor& valid) {
  launch<true, false>(CrossEntropyFusedPlan{}, logits, targets, ignore_index, losses, lse, valid, Tensor(), Tensor(), "cross_entropy_fwd");
}

void cross_entropy_bwd(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_scale,
                       int64_t ignore_index, const Tensor& dlogits) {
  launch<false, true>(CrossEntropyFusedPlan{}, logits, targets, ignore_index, Tensor(), lse, Tensor(), grad_scale, dlogits,
                      "cross_entropy_bwd");
}

void cross_entropy_fwd_bwd(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           const Tensor& grad_scale, const Tensor& losses, const Tensor& lse, const Tensor& valid,
                           const Tensor& dlogits, const CrossEntropyFusedPlan& plan) {
  launch<true, true>(plan, logits, targets, ignore_index, losses, lse, valid, grad_scale, dlogits,
                     "cross_entropy_fwd_bwd");
}

void cross_entropy_valid_count(const Tensor& targets, int64_t ignore_index, const Tensor& count,
                               const Tensor& inv_count) {
  NATSL_CHECK(count.dtype() == DType::f32 && count.numel() == 1 && inv_count.dtype() == DType::f32 &&
                  inv_count.numel() == 1,
              "cross_entropy_valid_count: count and inv_count must be f32 [1]");
  NATSL_CHECK(targets.is_contiguous(), "cross_entropy_valid_count: targets must be contiguous");
  cudaStream_t s = activate(targets.device().index);
  NATSL_CUDA_DISPATCH_INDEX(targets.dtype(), "cross_entropy_valid_count", I, [&] {
    valid_count_kernel<I><<<1, 1024, 0, s>>>(static_cast<const I*>(targets.data_ptr()), targets.numel(),
                                             ignore_index, count.data<float>(), inv_count.data<float>());
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void scale_unless_one(const Tensor& x, const Tensor& sc) {
  NATSL_CHECK(sc.dtype() == DType::f32 && sc.numel() == 1, "scale_unless_one: the scale must be f32 [1]");
  NATSL_CHECK(x.is_contiguous(), "scale_unless_one: x must be contiguous");
  const int64_t n = x.numel();
  if (n == 0) return;
  const int dev = x.device().index;
  cudaStream_t s = activate(dev);
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "scale_unless_one", T, [&] {
    T* xp = static_cast<T*>(x.data_ptr());
    constexpr int VC = kVec<T>;
    if (aligned16(xp))
      scale_unless_one_kernel<T, VC><<<grid_for(dev, n / VC + 1, 256), 256, 0, s>>>(xp, n, sc.data<float>());
    else
      scale_unless_one_kernel<T, 1><<<grid_for(dev, n, 256), 256, 0, s>>>(xp, n, sc.data<float>());
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
