// Kernel lab: NAtS-L's output mixing (kernels/cuda/mix_norm_gate.cu) for SHORT rows, the layout of l2norm's and
// RMSNorm's short-row kernels (l2norm_short_kernel, rmsnorm_short_kernel; common.cuh's dispatch_short_rows): TPR
// lanes of a warp own a row, NV 16-byte vectors per lane, RPG rows per lane group in flight. Production gives every
// row at least a whole warp (row_launch), so at natsl-340m's 128 bf16 channels (16 vectors) half of every row's
// threads hold no vector; and its forward reads og and oa twice (the sums of squares, then the output). Measured:
//   forward  (mix_fwd_short_kernel): one pass, og, oa and z loaded once into registers (raw 16-byte words), the
//            sums of squares and the output from them; production's per-element expressions, copied from
//            mix_fwd_kernel, so y, rstd_g and rstd_a are its bits (the row sums add in its order: per lane in vector
//            order, then the xor butterfly, whose first steps in production only add the idle lanes' zeros).
//   backward (mix_bwd_short_kernel): production's one-pass backward (mix::bwd_onepass_kernel) with TPR lanes a row;
//            mix::add_row_dots / mix::outputs do the arithmetic, and the row dots add in production's order (one
//            butterfly per vector slot, then the slots as production's second, cross-warp stage adds them), so
//            dog, doa, dz and dwlogits are its bits. dgamma_g / dgamma_a: per-lane register sums over the lane
//            group's rows, then per block through shared memory (slots in order) into one partial row, then
//            column_sum (deterministic, as rmsnorm_short_kernel): another order than production's, so compared with
//            a tolerance (max abs diff and max abs diff / max |production|).
// Each variant is checked against production (outputs poisoned with NaN first, so unwritten elements show), then
// both are timed (experiments/bench/bench_timing.h: median of --reps, L2 flushed before each call):
//   build-gpu/experiments/kernel_lab/natsl_lab_mix_norm_gate_short [--reps N]   (exit 1 when a bit compare fails)
// Shapes: B8 T4096 Ha12 Dv128 bf16 (natsl-340m); 3x1031x12 rows (an awkward count: partial last groups and
// blocks) at Dv128 and at Dv64. bf16 only, 16-byte aligned rows of at most 128 vectors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/cuda/mix_norm_gate.cuh"
#include "kernels/cuda/store_rn.cuh"
#include "kernels/mix_norm_gate.h"

using namespace natsl;
using namespace natsl::kernels::cuda;

namespace {

using T = bf16;
constexpr int VEC = kVec<T>;
constexpr int kThreads = 256;  // threads a block (kThreads / TPR lane groups)

// The row sums use common.cuh's warp_group_sum<TPR>: the xor butterfly of warp_reduce's offsets below TPR (in
// production the larger offsets only add the zeros of lanes that hold no vector), so the same bits.

// This lane's NV vectors (vector n * TPR + lane) of rows r0 .. r0 + RPG - 1 of p, raw, zero where the row or the
// vector is absent.
template <int TPR, int NV, int RPG>
__device__ __forceinline__ void load_raw(const T* __restrict__ p, int64_t r0, int64_t rows, int64_t D, int lane,
                                         uint4 (&v)[RPG][NV]) {
  const int64_t nvec = D / VEC;
#pragma unroll
  for (int q = 0; q < RPG; ++q)
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t vi = int64_t(n) * TPR + lane;
      v[q][n] = r0 + q < rows && vi < nvec ? *reinterpret_cast<const uint4*>(p + (r0 + q) * D + vi * VEC)
                                           : make_uint4(0, 0, 0, 0);
    }
}

// The forward in one pass over short rows. Grid-stride over groups of RPG rows; a warp runs a pass while any of
// its lane groups has a row left (warp vote: the same passes for all its lanes, so every lane reaches every
// shuffle); a group past the end loads zeros and stores nothing.
template <int TPR, int NV, int RPG>
__global__ void __launch_bounds__(kThreads)
    mix_fwd_short_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                         const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                         T* __restrict__ y, float* __restrict__ rstd_g, float* __restrict__ rstd_a, int64_t rows,
                         int64_t D, float eps) {
  const int lane = threadIdx.x % TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * (blockDim.x / TPR);
  const int64_t group = int64_t(blockIdx.x) * (blockDim.x / TPR) + threadIdx.x / TPR;
  const int64_t nvec = D / VEC;
  uint4 rw_g[1][NV], rw_a[1][NV];  // this lane's columns of gamma_g, gamma_a (raw): the same on every row
  load_raw<TPR, NV, 1>(gg, 0, 1, D, lane, rw_g);
  load_raw<TPR, NV, 1>(ga, 0, 1, D, lane, rw_a);
  for (int64_t r0 = group * RPG; __any_sync(0xffffffffu, r0 < rows); r0 += groups_per_grid * RPG) {
    uint4 ra_g[RPG][NV], ra_a[RPG][NV], ra_z[RPG][NV];
    load_raw<TPR, NV, RPG>(og, r0, rows, D, lane, ra_g);
    load_raw<TPR, NV, RPG>(oa, r0, rows, D, lane, ra_a);
    load_raw<TPR, NV, RPG>(z, r0, rows, D, lane, ra_z);
    float l0[RPG], l1[RPG];  // the rows' mixing logits, loaded with the rows
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      const bool in = r0 + q < rows;
      l0[q] = in ? to_f32(wl[2 * (r0 + q)]) : 0.f;
      l1[q] = in ? to_f32(wl[2 * (r0 + q) + 1]) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      float sg = 0.f, sa = 0.f;  // mix_fwd_kernel's per-thread order: vectors in order, k in order
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        float a[VEC], b[VEC];
        unpack_vec<T, VEC>(ra_g[q][n], a);
        unpack_vec<T, VEC>(ra_a[q][n], b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          sg += a[k] * a[k];
          sa += b[k] * b[k];
        }
      }
      sg = warp_group_sum<TPR>(sg);
      sa = warp_group_sum<TPR>(sa);
      const int64_t r = r0 + q;
      if (r >= rows) continue;
      // From here on mix_fwd_kernel's expressions.
      const float rg = 1.f / sqrtf(sg / float(D) + eps), ra = 1.f / sqrtf(sa / float(D) + eps);
      if (lane == 0) {
        rstd_g[r] = rg;
        rstd_a[r] = ra;
      }
      float w0, w1;
      mix::softmax2(l0[q], l1[q], w0, w1);
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float a[VEC], b[VEC], zz[VEC], wg[VEC], wa[VEC], o[VEC];
        unpack_vec<T, VEC>(ra_g[q][n], a);
        unpack_vec<T, VEC>(ra_a[q][n], b);
        unpack_vec<T, VEC>(ra_z[q][n], zz);
        unpack_vec<T, VEC>(rw_g[0][n], wg);
        unpack_vec<T, VEC>(rw_a[0][n], wa);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float u = w0 * a[k] * rg * wg[k] + w1 * b[k] * ra * wa[k];
          o[k] = u * zz[k] * mix::sigmoid_f(zz[k]);
        }
        store_vec<T, VEC>(y + r * D + vi * VEC, o);
      }
    }
  }
}

// The row dots' sum over the row, in production's order: bwd_onepass_kernel's blocks are one vector per thread
// (nvec <= 32: one warp, the butterfly; 64 or 128 vectors: 2 or 4 warps, warp n holding vectors n * 32 + lane,
// each warp's butterfly, then row_reduce's second stage, a butterfly over the warp sums in lanes 0..NV-1 of which
// lane 0's result is the tree below). v[n]: this lane's sum over its vector n.
template <int TPR, int NV>
__device__ __forceinline__ float row_dot(float (&v)[NV]) {
#pragma unroll
  for (int n = 0; n < NV; ++n) v[n] = warp_group_sum<TPR>(v[n]);
#pragma unroll
  for (int o = NV / 2; o > 0; o >>= 1)
#pragma unroll
    for (int i = 0; i < o; ++i) v[i] = v[i] + v[i + o];
  return v[0];
}

// NV PartialRows (no default constructor, so built through a pack).
template <int NV>
struct Parts {
  PartialRow<VEC, true> p[NV];
};
template <int NV, int... I>
__device__ __forceinline__ Parts<NV> make_parts(float* row, std::integer_sequence<int, I...>) {
  return Parts<NV>{{((void)I, PartialRow<VEC, true>(row))...}};
}

// The backward in one pass over short rows (the layout and the row loop of mix_fwd_short_kernel). dgamma_g /
// dgamma_a: each lane adds its columns' terms over its group's rows in registers (PartialRow<VEC, true>: row
// order); at the end the block's lane groups add theirs through shared memory (dynamic, [kThreads / TPR, D] f32,
// reused for the two gradients) in slot order into the block's partial rows pg[blockIdx.x], pa[blockIdx.x]
// ([gridDim.x, D] f32 each, every entry written).
template <int TPR, int NV, int RPG>
__global__ void __launch_bounds__(kThreads)
    mix_bwd_short_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                         const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                         const float* __restrict__ rstd_g, const float* __restrict__ rstd_a, const T* __restrict__ dy,
                         T* __restrict__ dog, T* __restrict__ doa, T* __restrict__ dwl, T* __restrict__ dz,
                         float* __restrict__ pg, float* __restrict__ pa, int64_t rows, int64_t D) {
  extern __shared__ float sm_dgamma[];
  const int lane = threadIdx.x % TPR, slot = threadIdx.x / TPR, slots = blockDim.x / TPR;
  const int64_t groups_per_grid = int64_t(gridDim.x) * slots;
  const int64_t group = int64_t(blockIdx.x) * slots + slot;
  const int64_t nvec = D / VEC;
  uint4 rw_g[1][NV], rw_a[1][NV];  // this lane's columns of gamma_g, gamma_a (raw)
  load_raw<TPR, NV, 1>(gg, 0, 1, D, lane, rw_g);
  load_raw<TPR, NV, 1>(ga, 0, 1, D, lane, rw_a);
  // Vector n's dgamma sums (add() only needs a non-null row; finish() is not called: block_partial below).
  Parts<NV> part_g = make_parts<NV>(pg, std::make_integer_sequence<int, NV>{});
  Parts<NV> part_a = make_parts<NV>(pa, std::make_integer_sequence<int, NV>{});
  for (int64_t r0 = group * RPG; __any_sync(0xffffffffu, r0 < rows); r0 += groups_per_grid * RPG) {
    uint4 ra_g[RPG][NV], ra_a[RPG][NV], ra_z[RPG][NV], ra_d[RPG][NV];
    // Row q's vector n of og, oa, z, dy and this lane's gamma_g, gamma_a, unpacked to f32.
    auto unpack = [&](int q, int n, float (&a)[VEC], float (&b)[VEC], float (&zz)[VEC], float (&g)[VEC],
                      float (&wg)[VEC], float (&wa)[VEC]) {
      unpack_vec<T, VEC>(ra_g[q][n], a);
      unpack_vec<T, VEC>(ra_a[q][n], b);
      unpack_vec<T, VEC>(ra_z[q][n], zz);
      unpack_vec<T, VEC>(ra_d[q][n], g);
      unpack_vec<T, VEC>(rw_g[0][n], wg);
      unpack_vec<T, VEC>(rw_a[0][n], wa);
    };
    load_raw<TPR, NV, RPG>(og, r0, rows, D, lane, ra_g);
    load_raw<TPR, NV, RPG>(oa, r0, rows, D, lane, ra_a);
    load_raw<TPR, NV, RPG>(z, r0, rows, D, lane, ra_z);
    load_raw<TPR, NV, RPG>(dy, r0, rows, D, lane, ra_d);
    float rgs[RPG], ras[RPG], l0[RPG], l1[RPG];  // the rows' rstd and logits, loaded with the rows
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      const bool in = r0 + q < rows;
      rgs[q] = in ? rstd_g[r0 + q] : 0.f;
      ras[q] = in ? rstd_a[r0 + q] : 0.f;
      l0[q] = in ? to_f32(wl[2 * (r0 + q)]) : 0.f;
      l1[q] = in ? to_f32(wl[2 * (r0 + q) + 1]) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < RPG; ++q) {
      const int64_t r = r0 + q;
      const bool active = r < rows;
      const float rg = rgs[q], ra = ras[q];
      float dw0v[NV], dw1v[NV];  // <du, g_hat>, <du, a_hat> over this lane's vector n
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        float a[VEC], b[VEC], zz[VEC], g[VEC], wg[VEC], wa[VEC];
        unpack(q, n, a, b, zz, g, wg, wa);
        dw0v[n] = dw1v[n] = 0.f;
        mix::add_row_dots(a, b, zz, g, wg, wa, rg, ra, dw0v[n], dw1v[n]);
      }
      const float dw0 = row_dot<TPR, NV>(dw0v), dw1 = row_dot<TPR, NV>(dw1v);
      if (!active) continue;
      // From here on bwd_onepass_kernel's expressions.
      float w0, w1;
      mix::softmax2(l0[q], l1[q], w0, w1);
      if (lane == 0) {
        const float mean = w0 * dw0 + w1 * dw1;
        dwl[2 * r] = from_f32<T>(w0 * (dw0 - mean));
        dwl[2 * r + 1] = from_f32<T>(w1 * (dw1 - mean));
      }
      const float cg = w0 * dw0 / float(D), ca = w1 * dw1 / float(D);
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const int64_t vi = int64_t(n) * TPR + lane;
        if (vi >= nvec) continue;
        float a[VEC], b[VEC], zz[VEC], g[VEC], wg[VEC], wa[VEC], o_g[VEC], o_a[VEC], o_z[VEC];
        unpack(q, n, a, b, zz, g, wg, wa);
        mix::outputs(a, b, zz, g, wg, wa, rg, ra, w0, w1, cg, ca, o_g, o_a, o_z, vi * VEC, part_g.p[n],
                     part_a.p[n]);
        const int64_t off = r * D + vi * VEC;
        store_vec<T, VEC>(dog + off, o_g);
        store_vec<T, VEC>(doa + off, o_a);
        store_vec<T, VEC>(dz + off, o_z);
      }
    }
  }
  // The block's partial rows: slot by slot in order (a lane's absent vectors hold zeros and are not stored;
  // every column of the row has one owner in every slot).
  auto block_partial = [&](const Parts<NV>& part, float* out) {
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t vi = int64_t(n) * TPR + lane;
      if (vi >= nvec) continue;
#pragma unroll
      for (int k = 0; k < VEC; ++k) sm_dgamma[int64_t(slot) * D + vi * VEC + k] = part.p[n].acc[k];
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      float sum = 0.f;
      for (int s = 0; s < slots; ++s) sum += sm_dgamma[int64_t(s) * D + j];
      out[int64_t(blockIdx.x) * D + j] = sum;
    }
    __syncthreads();  // before the next gradient reuses the shared rows
  };
  block_partial(part_g, pg);
  block_partial(part_a, pa);
}

// ---- launchers (bf16, 16-byte aligned, D a multiple of 8 of at most 128 vectors; else they refuse) ----

// Rows per lane group in flight. The forward is measured with two: RPG1 rows of one vector a lane (fewer for wider
// rows, as RPG1 / NV, at least 1): 4 (97 registers with CUDA 13.0's ptxas for sm_90: 2 blocks of 256 an SM) and 2
// (64: 4 blocks), the same bytes in flight an SM. The backward keeps 4 tensors' vectors and the dgamma sums: 2 rows
// of one vector (128 registers: 2 blocks; 1 row took 125, so 2 cost no occupancy). Rows of 64 or 128 vectors
// (NV 2, 4) are outside the measured shapes: the backward at NV 4 spills (255 registers and a stack).
template <int RPG1, int NV> constexpr int kFwdRpg = RPG1 / NV > 0 ? RPG1 / NV : 1;
template <int NV> constexpr int kBwdRpg = NV >= 2 ? 1 : 2;

// Blocks for `rows` rows in groups of RPG, kThreads / TPR groups a block: as many as fit the device at once
// (kernel's occupancy with smem bytes of dynamic shared memory), never more than the rows need; one wave, so the
// backward has as few partial rows as its residency allows.
template <class K>
int resident_grid(K kernel, int dev, int64_t rows, int rpg, int tpr, size_t smem) {
  int per_sm = 0;
  NATSL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  return grid_for(dev, (rows + rpg - 1) / rpg, kThreads / tpr, std::max(per_sm, 1));
}

void check_short(const Tensor& og) {
  const int64_t D = og.size(-1);
  NATSL_CHECK(og.dtype() == DType::bf16, "lab: bf16 only");
  NATSL_CHECK(D % VEC == 0 && D / VEC <= 128, "lab: D must be a multiple of ", VEC, " and at most ", 128 * VEC);
}

template <int RPG1>
void lab_fwd(const Tensor& og, const Tensor& oa, const Tensor& wl, const Tensor& z, const Tensor& gg,
             const Tensor& ga, double eps, const Tensor& y, const Tensor& rg, const Tensor& ra) {
  check_short(og);
  const int64_t D = og.size(-1), rows = og.numel() / D;
  const int dev = og.device().index;
  cudaStream_t s = activate(dev);
  dispatch_short_rows(D / VEC, [&](auto tpr, auto nv) {
    constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = kFwdRpg<RPG1, NV>;
    auto kernel = mix_fwd_short_kernel<TPR, NV, RPG>;
    const int grid = resident_grid(kernel, dev, rows, RPG, TPR, 0);
    kernel<<<grid, kThreads, 0, s>>>(
        cptr<T>(og), cptr<T>(oa), cptr<T>(wl), cptr<T>(z), cptr<T>(gg), cptr<T>(ga), mptr<T>(y), rg.data<float>(),
        ra.data<float>(), rows, D, float(eps));
    NATSL_CUDA_CHECK_LAUNCH();
  });
}

void lab_bwd(const Tensor& og, const Tensor& oa, const Tensor& wl, const Tensor& z, const Tensor& gg,
             const Tensor& ga, const Tensor& rg, const Tensor& ra, const Tensor& dy, const Tensor& dog,
             const Tensor& doa, const Tensor& dwl, const Tensor& dz, const Tensor& dgg, const Tensor& dga) {
  check_short(og);
  const int64_t D = og.size(-1), rows = og.numel() / D;
  const int dev = og.device().index;
  cudaStream_t s = activate(dev);
  dispatch_short_rows(D / VEC, [&](auto tpr, auto nv) {
    constexpr int TPR = decltype(tpr)::value, NV = decltype(nv)::value, RPG = kBwdRpg<NV>;
    auto kernel = mix_bwd_short_kernel<TPR, NV, RPG>;
    const size_t smem = size_t(kThreads / TPR) * size_t(D) * sizeof(float);  // <= 32 KB
    const int grid = resident_grid(kernel, dev, rows, RPG, TPR, smem);
    Tensor partial = scratch_f32(2 * int64_t(grid) * D, og.device());  // every entry written by the kernel
    float* pg = partial.data<float>();
    float* pa = pg + int64_t(grid) * D;
    kernel<<<grid, kThreads, smem, s>>>(
        cptr<T>(og), cptr<T>(oa), cptr<T>(wl), cptr<T>(z), cptr<T>(gg), cptr<T>(ga), rg.data<float>(),
        ra.data<float>(), cptr<T>(dy), mptr<T>(dog), mptr<T>(doa), mptr<T>(dwl), mptr<T>(dz), pg, pa, rows, D);
    NATSL_CUDA_CHECK_LAUNCH();
    // Hundreds of partial rows: 32 slices (as launch_rmsnorm_short).
    column_sum<T, 32>(pg, grid, D, mptr<T>(dgg), dev, s);
    column_sum<T, 32>(pa, grid, D, mptr<T>(dga), dev, s);
  });
}

// ---- checks ----

Tensor rnd(const Shape& sh, DType dt, uint64_t seed) {
  Tensor t = Tensor::empty(sh, dt, Device::cuda(0));
  Generator g(seed);
  normal_(t, g, 0.0, 1.0);
  return t;
}

// All bits set: NaN in bf16 and f32, so an element a kernel does not write shows in the comparisons.
void poison(const std::vector<Tensor>& ts) {
  cudaStream_t s = activate(0);
  for (const Tensor& t : ts) NATSL_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0xff, t.nbytes(), s));
}

// Elements whose bits differ (bf16 -> f32 is exact and one-to-one, so the f32 bits are the data's), max |a - b| (NaN when either has a NaN) and max |a| (as f32).
struct Diff {
  int64_t bits = 0;
  double max_abs = 0, max_ref = 0;
  bool nan = false;
};
Diff diff(const Tensor& ref, const Tensor& v) {
  Diff d;
  const Tensor ha = ref.to(Device::cpu()).to(DType::f32), hb = v.to(Device::cpu()).to(DType::f32);
  const float *pa = ha.data<float>(), *pb = hb.data<float>();
  for (int64_t i = 0; i < ha.numel(); ++i) {
    if (std::memcmp(pa + i, pb + i, sizeof(float)) != 0) ++d.bits;
    if (std::isnan(pa[i]) || std::isnan(pb[i])) {
      d.nan = true;
      continue;
    }
    d.max_abs = std::max(d.max_abs, double(std::fabs(pa[i] - pb[i])));
    d.max_ref = std::max(d.max_ref, double(std::fabs(pa[i])));
  }
  return d;
}

struct Row {
  std::string kernel, variant;
  double prod_ms, lab_ms, bytes;
};

// One shape: production and the variant, forward and backward; false when a bit compare (or the dgamma tolerance)
// fails.
bool run_shape(int64_t B, int64_t Tn, int64_t Ha, int64_t Dv, int reps, std::vector<Row>& table) {
  const Device g = Device::cuda(0);
  const Shape rs{B, Tn, Ha, Dv}, ws{B, Tn, Ha, 2}, ss{B, Tn, Ha};
  const int64_t rows = B * Tn * Ha;
  char shape[96];
  std::snprintf(shape, sizeof shape, "%lldx%lldx%lld Dv%lld", (long long)B, (long long)Tn, (long long)Ha,
                (long long)Dv);
  std::printf("%s (%lld rows of %lld vectors)\n", shape, (long long)rows, (long long)(Dv / VEC));
  const double eps = 1e-6;
  Tensor og = rnd(rs, DType::bf16, 1), oa = rnd(rs, DType::bf16, 2), z = rnd(rs, DType::bf16, 3);
  Tensor dy = rnd(rs, DType::bf16, 4), wl = rnd(ws, DType::bf16, 5);
  Tensor gg = rnd({Dv}, DType::bf16, 6), ga = rnd({Dv}, DType::bf16, 7);
  bool all = true;
  auto report = [&](const char* name, const Tensor& ref, const Tensor& v) {
    const Diff d = diff(ref, v);
    const bool ok = d.bits == 0 && !d.nan;  // inputs are finite: a NaN is an unwritten (poisoned) element
    all = all && ok;
    if (ok) std::printf("  %-9s same bits\n", name);
    else std::printf("  %-9s DIFFERS: %lld elements, max abs diff %.3e%s\n", name, (long long)d.bits, d.max_abs,
                     d.nan ? " (NaN: unwritten or non-finite)" : "");
  };
  // dgamma: another summation order, so a tolerance: max |diff| <= 1e-2 max |production| (bf16 has 8 bits).
  auto report_tol = [&](const char* name, const Tensor& ref, const Tensor& v) {
    const Diff d = diff(ref, v);
    const double rel = d.max_ref > 0 ? d.max_abs / d.max_ref : d.max_abs;
    const bool ok = !d.nan && rel <= 1e-2;
    all = all && ok;
    std::printf("  %-9s %s: %lld elements differ in bits, max abs diff %.3e (max |prod| %.3e, rel %.2e)%s\n", name,
                ok ? "within tolerance" : "OUT OF TOLERANCE", (long long)d.bits, d.max_abs, d.max_ref, rel,
                d.nan ? " (NaN)" : "");
  };

  // Forward.
  Tensor y_p = Tensor::empty(rs, DType::bf16, g), rg_p = Tensor::empty(ss, DType::f32, g),
         ra_p = Tensor::empty(ss, DType::f32, g);
  Tensor y_v = Tensor::empty(rs, DType::bf16, g), rg_v = Tensor::empty(ss, DType::f32, g),
         ra_v = Tensor::empty(ss, DType::f32, g);
  poison({y_p, rg_p, ra_p, y_v, rg_v, ra_v});
  auto prod_fwd = [&] { natsl::kernels::cuda::mix_norm_gate_fwd(og, oa, wl, z, gg, ga, eps, y_p, rg_p, ra_p); };
  auto lab_fwd4 = [&] { lab_fwd<4>(og, oa, wl, z, gg, ga, eps, y_v, rg_v, ra_v); };
  auto lab_fwd2 = [&] { lab_fwd<2>(og, oa, wl, z, gg, ga, eps, y_v, rg_v, ra_v); };
  prod_fwd();
  const std::function<void()> fwds[] = {lab_fwd4, lab_fwd2};
  for (int i = 0; i < 2; ++i) {
    std::printf(" forward, %d rows a lane group in flight:\n", i == 0 ? 4 : 2);
    poison({y_v, rg_v, ra_v});
    fwds[i]();
    NATSL_CUDA_CHECK(cudaDeviceSynchronize());
    report("y", y_p, y_v);
    report("rstd_g", rg_p, rg_v);
    report("rstd_a", ra_p, ra_v);
  }
  std::printf(" backward:\n");

  // Backward (from production's rstd).
  auto outs = [&] {
    return std::vector<Tensor>{Tensor::empty(rs, DType::bf16, g), Tensor::empty(rs, DType::bf16, g),
                               Tensor::empty(ws, DType::bf16, g), Tensor::empty(rs, DType::bf16, g),
                               Tensor::empty({Dv}, DType::bf16, g), Tensor::empty({Dv}, DType::bf16, g)};
  };
  std::vector<Tensor> p = outs(), v = outs();
  poison(p);
  poison(v);
  auto prod_bwd = [&] {
    natsl::kernels::cuda::mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg_p, ra_p, dy, p[0], p[1], p[2], p[3], p[4], p[5]);
  };
  auto lab_bwd_call = [&] { lab_bwd(og, oa, wl, z, gg, ga, rg_p, ra_p, dy, v[0], v[1], v[2], v[3], v[4], v[5]); };
  prod_bwd();
  lab_bwd_call();
  NATSL_CUDA_CHECK(cudaDeviceSynchronize());
  const char* names[] = {"dog", "doa", "dwlogits", "dz", "dgamma_g", "dgamma_a"};
  for (int i = 0; i < 4; ++i) report(names[i], p[size_t(i)], v[size_t(i)]);
  for (int i = 4; i < 6; ++i) report_tol(names[i], p[size_t(i)], v[size_t(i)]);

  cudaStream_t s = activate(0);
  const double row_bytes = double(rows) * double(Dv) * 2;  // one bf16 row tensor
  const double t_fwd = bench::median_ms(prod_fwd, reps, s);
  table.push_back({std::string("fwd ") + shape, "rpg 4", t_fwd, bench::median_ms(lab_fwd4, reps, s),
                   4 * row_bytes});  // og, oa, z read; y written
  table.push_back({std::string("fwd ") + shape, "rpg 2", t_fwd, bench::median_ms(lab_fwd2, reps, s), 4 * row_bytes});
  table.push_back({std::string("bwd ") + shape, "rpg 2", bench::median_ms(prod_bwd, reps, s),
                   bench::median_ms(lab_bwd_call, reps, s), 7 * row_bytes});  // og, oa, z, dy; dog, doa, dz
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--reps") reps = std::atoi(argv[i + 1]);
  std::vector<Row> table;
  bool all = true;
  all = run_shape(8, 4096, 12, 128, reps, table) && all;
  all = run_shape(3, 1031, 12, 128, reps, table) && all;
  all = run_shape(3, 1031, 12, 64, reps, table) && all;
  std::printf("\nmix_norm_gate short rows, bf16 (%s timing, %d reps; GB/s of the row tensors: fwd 4, bwd 7)\n",
              bench::timing_method(), reps);
  std::printf("  %-24s %-7s %10s %10s %8s %10s %10s\n", "kernel", "short", "prod ms", "short ms", "short/p",
              "prod GB/s", "short GB/s");
  for (const Row& r : table)
    std::printf("  %-24s %-7s %10.4f %10.4f %8.3f %10.0f %10.0f\n", r.kernel.c_str(), r.variant.c_str(), r.prod_ms,
                r.lab_ms, r.lab_ms / r.prod_ms, r.bytes / (r.prod_ms * 1e6), r.bytes / (r.lab_ms * 1e6));
  std::printf("%s\n", all ? "all outputs match (bits; dgamma within tolerance)" : "MISMATCH");
  return all ? 0 : 1;
}
