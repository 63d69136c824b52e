#pragma once
// The per-element arithmetic of the mix_norm_gate family (kernels/mix_norm_gate.h, kernels/cuda/mix_norm_gate.cu),
// shared by its kernels (row kernels, one-pass kernels, short-row kernels) and the kernel lab's variants
// (experiments/kernel_lab/mix_norm_gate), so that a kernel changes only how the data moves, never the arithmetic
// (and its bits); the one-pass backward kernel, which the lab instantiates with the dgamma sums in memory; and the
// short-row kernels' pieces (loads, row sums in the row kernels' orders, the dgamma block partial row). One
// VEC-wide vector of a row: a, b = og, oa; zz = z; g = dy; wg, wa = gamma_g, gamma_a; rg, ra = the row's rstd_g,
// rstd_a.
#include "kernels/cuda/column_sum.cuh"
#include "kernels/cuda/store_rn.cuh"

namespace natsl::kernels::cuda::mix {

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

// softmax of two logits: w1 = sigmoid(l1 - l0)
__device__ __forceinline__ void softmax2(float l0, float l1, float& w0, float& w1) {
  w1 = 1.f / (1.f + expf(l0 - l1));
  w0 = 1.f - w1;
}

// Every sum or difference of products below is rounded as written (__fmaf_rn, __fmul_rn): ptxas fuses a product into
// the add or subtract that uses it only where the product has no other use, so the same source expression rounds
// differently in two kernels that reuse different products (the short-row norm_gate backward's do differed from the
// one-pass kernel's in ~23% of f32 elements by one ulp that way on the H100, before this): pinned, every kernel that
// calls these gets the same bits. Chains of products alone (no add) have one rounding per product either way.

// A row's rstd from its sum of squares ss over D channels: 1 / sqrt(mean + eps).
__device__ __forceinline__ float rstd_of(float ss, int64_t D, float eps) { return 1.f / sqrtf(ss / float(D) + eps); }

// The forward's output of one vector: y = (w0 g_hat + w1 a_hat) silu(z).
template <int VEC>
__device__ __forceinline__ void mixed_output(const float (&a)[VEC], const float (&b)[VEC], const float (&zz)[VEC],
                                             const float (&wg)[VEC], const float (&wa)[VEC], float rg, float ra,
                                             float w0, float w1, float (&o)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float u = __fmaf_rn(w0 * a[k] * rg, wg[k], w1 * b[k] * ra * wa[k]);
    o[k] = u * zz[k] * sigmoid_f(zz[k]);
  }
}

// The row dots' terms: dw0 += <du, g_hat>, dw1 += <du, a_hat> over the vector (du = dy silu(z)).
template <int VEC>
__device__ __forceinline__ void add_row_dots(const float (&a)[VEC], const float (&b)[VEC], const float (&zz)[VEC],
                                             const float (&g)[VEC], const float (&wg)[VEC], const float (&wa)[VEC],
                                             float rg, float ra, float& dw0, float& dw1) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float du = g[k] * zz[k] * sigmoid_f(zz[k]);
    dw0 = __fmaf_rn(du * a[k] * rg, wg[k], dw0);
    dw1 = __fmaf_rn(du * b[k] * ra, wa[k], dw1);
  }
}

// After the row dots of row r (dw0 = <du, g_hat>, dw1 = <du, a_hat>, summed over the row): the mixing weights w0, w1
// from the row's two router logits l0, l1 (wl[2r], wl[2r + 1]), their gradient into dwl (the row's thread with
// `write` writes it), and the norms' per-row constants cg = w0 dw0 / D, ca = w1 dw1 / D. The products and the
// mean <dw, w> are rounded as written (__fmul_rn, __fmaf_rn): whether ptxas would fuse w0 dw0 + w1 dw1 into an FMA,
// and which product, depends on where the surrounding kernel computes and reuses the products (the short-row
// kernel lab's dwlogits differed from the row kernel's in 6 of 74,232 elements by one bf16 step that way), so
// every kernel that calls this gets the same bits.
template <class T>
__device__ __forceinline__ void router_grad(float l0, float l1, T* __restrict__ dwl, int64_t r, float dw0, float dw1,
                                            int64_t D, bool write, float& w0, float& w1, float& cg, float& ca) {
  softmax2(l0, l1, w0, w1);
  const float p0 = __fmul_rn(w0, dw0), p1 = __fmul_rn(w1, dw1);
  if (write) {
    const float mean = __fmaf_rn(w1, dw1, p0);
    dwl[2 * r] = from_f32<T>(w0 * (dw0 - mean));
    dwl[2 * r + 1] = from_f32<T>(w1 * (dw1 - mean));
  }
  cg = p0 / float(D);
  ca = p1 / float(D);
}

// After the row dots (w0, w1 the mixing weights, cg = w0 dw0 / D, ca = w1 dw1 / D): the vector's dog, doa, dz,
// and its dgamma terms into the partial sums (column j of the row; Part: PartialRow or LaneSums).
template <int VEC, class Part>
__device__ __forceinline__ void outputs(const float (&a)[VEC], const float (&b)[VEC], const float (&zz)[VEC],
                                        const float (&g)[VEC], const float (&wg)[VEC], const float (&wa)[VEC],
                                        float rg, float ra, float w0, float w1, float cg, float ca, float (&o_g)[VEC],
                                        float (&o_a)[VEC], float (&o_z)[VEC], int64_t j, Part& part_g, Part& part_a) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float s = sigmoid_f(zz[k]);
    const float ng = a[k] * rg, na = b[k] * ra;
    const float du = g[k] * zz[k] * s;
    const float u = __fmaf_rn(w0 * ng, wg[k], w1 * na * wa[k]);
    o_z[k] = g[k] * u * s * __fmaf_rn(zz[k], 1.f - s, 1.f);
    o_g[k] = rg * __fmaf_rn(-ng, cg, w0 * du * wg[k]);
    o_a[k] = ra * __fmaf_rn(-na, ca, w1 * du * wa[k]);
    part_g.add(j, k, w0 * du * ng);
    part_a.add(j, k, w1 * du * na);
  }
}

// The backward in one pass over its inputs, for rows of at most one vector per thread in blocks of at most 256
// threads (natsl-340m: 128 channels = 16 bf16 vectors): the row dots' loads stay in registers for the outputs, so
// og, oa, z and dy cross memory once, and (REG, production) the dgamma sums stay in registers too; REG = false
// (the kernel lab's variant) adds them into zeroed partial rows in memory. The per-element arithmetic is the
// two-pass mix_bwd_kernel's (the functions above), so the outputs are its bits; the 256-thread bound lets the
// compiler give each thread the registers the kept row needs (BENCHMARKS.md has the lab's timings).
constexpr int kOnePassThreads = 256;

template <class T, int VEC, bool REG>
__global__ void __launch_bounds__(kOnePassThreads)
    bwd_onepass_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                       const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                       const float* __restrict__ rstd_g, const float* __restrict__ rstd_a, const T* __restrict__ dy,
                       T* __restrict__ dog, T* __restrict__ doa, T* __restrict__ dwl, T* __restrict__ dz,
                       float* __restrict__ pg, float* __restrict__ pa, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  const int64_t slot = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  PartialRow<VEC, REG> part_g(pg ? pg + slot * D : nullptr), part_a(pa ? pa + slot * D : nullptr);
  const int64_t j = int64_t(threadIdx.x) * VEC;  // this thread's one vector of every row
  const bool mine = j < D;
  float wg[VEC], wa[VEC];
  if (mine) {
    load_vec<T, VEC>(gg + j, wg);
    load_vec<T, VEC>(ga + j, wa);
  }
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    const float rg = active ? rstd_g[r] : 0.f, ra = active ? rstd_a[r] : 0.f;
    float a[VEC], b[VEC], zz[VEC], g[VEC];
    float dw0 = 0.f, dw1 = 0.f;  // <du, g_hat>, <du, a_hat>
    if (active && mine) {
      load_vec<T, VEC>(og + off + j, a);
      load_vec<T, VEC>(oa + off + j, b);
      load_vec<T, VEC>(z + off + j, zz);
      load_vec<T, VEC>(dy + off + j, g);
      mix::add_row_dots(a, b, zz, g, wg, wa, rg, ra, dw0, dw1);
    }
    dw0 = row_sum(dw0, scratch);
    dw1 = row_sum(dw1, scratch);
    if (!active) continue;
    float w0, w1, cg, ca;
    router_grad(to_f32(wl[2 * r]), to_f32(wl[2 * r + 1]), dwl, r, dw0, dw1, D, threadIdx.x == 0, w0, w1, cg, ca);
    if (!mine) continue;
    float o_g[VEC], o_a[VEC], o_z[VEC];
    mix::outputs(a, b, zz, g, wg, wa, rg, ra, w0, w1, cg, ca, o_g, o_a, o_z, j, part_g, part_a);
    store_vec<T, VEC>(dog + off + j, o_g);
    store_vec<T, VEC>(doa + off + j, o_a);
    store_vec<T, VEC>(dz + off + j, o_z);
  }
  part_g.finish(D);
  part_a.finish(D);
}

// ---- short rows ----
// The short-row kernels' layout (common.cuh's dispatch_short_rows, as l2norm_short_kernel and rmsnorm_short_kernel):
// TPR lanes of a warp own a row, lane l holding vectors n * TPR + l (n < NV) of it, RPG rows a lane group in flight;
// blocks of kShortThreads threads, kShortThreads / TPR lane groups ("slots") each. Rows of 16 bf16 vectors (128
// channels) thus take 16 lanes, not a warp of which half hold nothing; the row stays in registers from the row sums
// to the outputs, so every input crosses memory once.
constexpr int kShortThreads = 256;

// Rows r0 .. r0 + RPG - 1 of p ([rows, D], 16-byte aligned), this lane's NV vectors of each as raw 16-byte words (a
// bf16 vector in 4 registers, not 8 floats: the backward keeps four tensors' rows), zero where the row or the
// vector is absent.
template <class T, int TPR, int NV, int RPG>
__device__ __forceinline__ void load_short_raw(const T* __restrict__ p, int64_t r0, int64_t rows, int64_t D, int lane,
                                               uint4 (&v)[RPG][NV]) {
  const int64_t nvec = D / kVec<T>;
#pragma unroll
  for (int q = 0; q < RPG; ++q)
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      const int64_t vi = int64_t(n) * TPR + lane;
      v[q][n] = r0 + q < rows && vi < nvec ? *reinterpret_cast<const uint4*>(p + (r0 + q) * D + vi * kVec<T>)
                                           : make_uint4(0, 0, 0, 0);
    }
}

// The row sums of the short-row kernels add in the row kernels' orders, so that every output but dgamma has their
// bits:
// - forward (the row kernels take rows of at most 128 vectors with one warp, lane l holding vectors l, l + 32, ...):
//   one sum per lane over its vectors in order, then warp_group_sum<TPR> (the xor butterfly of warp_reduce's
//   offsets below TPR; warp_reduce's larger offsets only add the +0 of lanes that hold no vector, which changes no
//   bits of a sum that starts at +0).
// - backward (the one-pass kernels: one vector a thread, 32 * NV threads a row for NV > 1, warp n holding vectors
//   n * 32 + lane): v[n], this lane's sum over its vector n, summed over the lane group as each warp's butterfly,
//   then the NV warp sums as row_reduce's second stage adds them (a butterfly over lanes 0 .. NV - 1 whose lane 0
//   holds the tree below). The result is in every lane of the group.
template <int TPR, int NV>
__device__ __forceinline__ float onepass_row_sum(float (&v)[NV]) {
#pragma unroll
  for (int n = 0; n < NV; ++n) v[n] = warp_group_sum<TPR>(v[n]);
#pragma unroll
  for (int o = NV / 2; o > 0; o >>= 1)
#pragma unroll
    for (int i = 0; i < o; ++i) v[i] = v[i] + v[i + o];
  return v[0];
}

// One vector's columns of a weight gradient summed over a lane's rows in registers, in row order (the Part of
// mix::outputs / ng::grads in the short-row backward kernels).
template <int VEC>
struct LaneSums {
  float acc[VEC];
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  }
  __device__ __forceinline__ void add(int64_t, int k, float v) { acc[k] += v; }
};

// The end of a short-row backward: the block's lane groups add their LaneSums (sums[n]: vector n * TPR + lane) in
// slot order into the block's partial row out[blockIdx.x] ([gridDim.x, D] f32, every entry written; column_sum adds
// the blocks' rows afterwards): a fixed order, deterministic. sm: dynamic shared memory of [kShortThreads / TPR, D]
// f32. Every thread of the block calls it (a barrier); out null (the gradient is not wanted, the same for the whole
// block) returns at once. Ends with a barrier, so sm may be reused right after.
template <int VEC, int TPR, int NV>
__device__ __forceinline__ void block_partial_row(const LaneSums<VEC> (&sums)[NV], float* __restrict__ sm,
                                                  float* __restrict__ out, int64_t D) {
  if (!out) return;
  const int lane = threadIdx.x % TPR, slot = threadIdx.x / TPR, slots = blockDim.x / TPR;
  const int64_t nvec = D / VEC;
#pragma unroll
  for (int n = 0; n < NV; ++n) {
    const int64_t vi = int64_t(n) * TPR + lane;
    if (vi >= nvec) continue;  // every column has one owner in every slot
#pragma unroll
    for (int k = 0; k < VEC; ++k) sm[int64_t(slot) * D + vi * VEC + k] = sums[n].acc[k];
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < slots; ++s) sum += sm[int64_t(s) * D + j];
    out[int64_t(blockIdx.x) * D + j] = sum;
  }
  __syncthreads();
}

// Blocks of a short-row kernel over `rows` rows in lane groups of RPG rows: as many as are resident on the device at
// once (the kernel's occupancy with smem bytes of dynamic shared memory), never more than the rows need. One wave:
// the backward then has as few partial rows as its residency allows.
template <class K>
int short_rows_grid(K kernel, int dev, int64_t rows, int rpg, int tpr, size_t smem) {
  int per_sm = 0;
  NATSL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kShortThreads, smem));
  return grid_for(dev, (rows + rpg - 1) / rpg, kShortThreads / tpr, per_sm > 0 ? per_sm : 1);
}

}  // namespace natsl::kernels::cuda::mix
