// CUDA entry points of chunk-selected causal attention (kernels/sparse_attention.h): the selection index
// built on the device, the path choice (tensor cores for bf16 with 64-token chunks: the wgmma forward on sm_90,
// the mma.sync kernels elsewhere and for the backward; the SIMT kernels otherwise: sparse_attention_plan.h),
// and the backward's pre- and post-processing:
//   D_i = dO_i . o_i (f32), dq_acc = 0  ->  kernels  ->  dq = scale * dq_acc (tensor-core path),
//   dm = the fixed-order sum of the kernels' per-head parts (no atomics, so dm is the same every run).
// Nothing here synchronises the host.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/sparse_attention.cuh"
#include "kernels/cuda/sparse_attention_plan.h"
#include "kernels/determinism.h"
#include "kernels/sparse_attention.h"

namespace natsl::kernels::cuda {
namespace {

using namespace sparse_attn;

Geometry geometry(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                  const Tensor& v) {
  Geometry g{};
  g.B = int(q.size(0));
  g.T = int(q.size(1));
  g.Ha = int(q.size(2));
  g.Dk = int(q.size(3));
  g.Dv = int(v.size(3));
  g.Hr = int(index.router_heads());
  g.G = g.Ha / g.Hr;
  g.NC = int(index.num_chunks());
  g.C = int(index.chunk_size);
  g.scale = float(args.scale);
  g.chunks = index.chunks.data<int32_t>();
  g.prefix = index.prefix.data<int32_t>();
  return g;
}

// The tensor-core kernels copy 16-byte pieces: every row start must be 16-byte aligned.
bool use_tensor_cores(const Geometry& g, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (!aligned16(*t)) return false;
  return (*ts.begin())->dtype() == DType::bf16 && tc_supported(g);
}

void check_supported(const Geometry& g, const char* op) {
  NATSL_CHECK(simt_supported(g), op, ": head dims Dk = ", g.Dk, ", Dv = ", g.Dv,
              " are not supported on the GPU (Dk <= 128, Dv <= 256)");
}

// One warp per (b, r): a ballot scan over the chunks writes the ascending list and the exclusive prefix.
template <class M>
__global__ void index_kernel(const M* __restrict__ mask, int B, int NC, int Hr, int32_t* __restrict__ chunks,
                             int32_t* __restrict__ prefix) {
  const int w = int(blockIdx.x) * 4 + int(threadIdx.x) / 32, lane = int(threadIdx.x) & 31;
  if (w >= B * Hr) return;
  const int b = w / Hr, r = w % Hr;
  int32_t* list = chunks + int64_t(w) * NC;
  int32_t* pre = prefix + int64_t(w) * (NC + 1);
  int count = 0;
  for (int base = 0; base < NC; base += 32) {
    const int c = base + lane;
    const bool sel = c < NC && to_f32(mask[(int64_t(b) * NC + c) * Hr + r]) > 0.5f;
    const unsigned bits = __ballot_sync(0xffffffffu, sel);
    const int pos = count + __popc(bits & ((1u << lane) - 1u));
    if (c < NC) pre[c] = pos;
    if (sel) list[pos] = c;
    count += __popc(bits);
  }
  if (lane == 0) pre[NC] = count;
  for (int c = count + lane; c < NC; c += 32) list[c] = NC;
}

template <class T>
__global__ void delta_kernel(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta,
                             int64_t rows, int Dv) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (row >= rows) return;
  float s = 0.f;
  for (int e = int(threadIdx.x & 31); e < Dv; e += 32) s += to_f32(o[row * Dv + e]) * to_f32(dout[row * Dv + e]);
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) delta[row] = s;
}

// dm[b, c, r] = sum over the chunk's parts (rows c R .. min(L, c R + R) - 1 of dm_part [B, L, Ha]) and the
// G heads of router head r, in a fixed order: row-major over (row, head).
__global__ void dm_reduce_kernel(const float* __restrict__ part, int B, int L, int R, int Ha, int G, int NC,
                                 float* __restrict__ dm) {
  const int Hr = Ha / G;
  const int64_t n = int64_t(B) * NC * Hr;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x) {
    const int r = int(o % Hr), c = int(o / Hr % NC), b = int(o / Hr / NC);
    float s = 0.f;
    for (int j = c * R; j < min(L, c * R + R); ++j) {
      const float* row = part + (int64_t(b) * L + j) * Ha + r * G;
      for (int a = 0; a < G; ++a) s += row[a];
    }
    dm[o] = s;
  }
}

template <class T>
__global__ void dq_store_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t n, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dq[i] = from_f32<T>(acc[i] * scale);
}

}  // namespace

void sparse_attention_index(const Tensor& softmax_mask, const SparseAttentionIndex& index) {
  const int B = int(softmax_mask.size(0)), NC = int(softmax_mask.size(1)), Hr = int(softmax_mask.size(2));
  if (B * Hr == 0) return;
  cudaStream_t s = activate(softmax_mask.device().index);
  const unsigned blocks = unsigned((B * Hr + 3) / 4);
  NATSL_CUDA_DISPATCH_FLOAT(softmax_mask.dtype(), "sparse_attention_index", M, [&] {
    index_kernel<M><<<blocks, 128, 0, s>>>(softmax_mask.data<M>(), B, NC, Hr, index.chunks.data<int32_t>(),
                                           index.prefix.data<int32_t>());
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

namespace {

using FwdKernel = SparseAttentionFwdPlan::Kernel;

// The kernel the plan runs on these tensors: its own where it takes them, else the next one down (wgmma ->
// mma_sync -> simt), as sparse_attention_plan.h says.
FwdKernel fwd_kernel(FwdKernel want, const Geometry& g, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& o) {
  const bool tc = use_tensor_cores(g, {&q, &k, &v, &o});
  if ((want == FwdKernel::automatic || want == FwdKernel::wgmma) && tc && wgmma_fwd_supported(g, q.device().index))
    return FwdKernel::wgmma;
  if (want != FwdKernel::simt && tc) return FwdKernel::mma_sync;
  return FwdKernel::simt;
}

}  // namespace

bool sparse_attention_fwd_takes(FwdKernel kernel, const SparseAttentionIndex& index, const Tensor& q,
                                const Tensor& k, const Tensor& v, const Tensor& o) {
  if (kernel == FwdKernel::automatic) return true;
  const Geometry g = geometry(SparseAttentionArgs{}, index, q, v);
  return simt_supported(g) && fwd_kernel(kernel, g, q, k, v, o) == kernel;
}

void sparse_attention_fwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                          const SparseAttentionFwdPlan& plan) {
  const char* op = "sparse_attention_fwd";
  const Geometry g = geometry(args, index, q, v);
  check_supported(g, op);
  cudaStream_t s = activate(q.device().index);
  const FwdPtrs p{q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data<float>()};
  switch (fwd_kernel(plan.kernel, g, q, k, v, o)) {
    case FwdKernel::wgmma: wgmma_fwd(g, p, s); break;
    case FwdKernel::mma_sync: tc_fwd(g, p, s); break;
    default: NATSL_CUDA_DISPATCH_FLOAT(q.dtype(), op, T, [&] { simt_fwd(g, p, std::is_same_v<T, bf16>, s); });
  }
}

void sparse_attention_fwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse) {
  sparse_attention_fwd(args, index, q, k, v, o, lse, SparseAttentionFwdPlan{});
}

void sparse_attention_bwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dm) {
  const char* op = "sparse_attention_bwd";
  const Geometry g = geometry(args, index, q, v);
  check_supported(g, op);
  const int64_t rows = int64_t(g.B) * g.T * g.Ha;
  cudaStream_t s = activate(q.device().index);
  if (dm.defined()) NATSL_CUDA_CHECK(cudaMemsetAsync(dm.data_ptr(), 0, size_t(dm.numel()) * sizeof(float), s));
  if (rows == 0) return;
  const bool tc = use_tensor_cores(g, {&q, &k, &v, &dout, &dk, &dv});
  Tensor delta = scratch_f32(rows, q.device());
  Tensor dq_acc = tc ? scratch_f32(rows * g.Dk, q.device()) : Tensor();
  if (tc) NATSL_CUDA_CHECK(cudaMemsetAsync(dq_acc.data_ptr(), 0, size_t(rows) * g.Dk * sizeof(float), s));
  // Ordered dq additions only when asked for (kernels/determinism.h): they serialise the key chunks.
  const int64_t n_turn = int64_t(g.B) * g.Ha * g.NC;
  Tensor turn = tc && deterministic() ? Tensor::empty({n_turn}, DType::i32, q.device()) : Tensor();
  if (turn.defined()) NATSL_CUDA_CHECK(cudaMemsetAsync(turn.data_ptr(), 0, size_t(n_turn) * sizeof(int32_t), s));
  // dm parts: one per (key chunk, head) on tensor cores, one per (key token, head) on the SIMT path.
  const int part_rows = tc ? g.NC : g.T;
  Tensor dm_part = dm.defined() ? scratch_f32(int64_t(g.B) * part_rows * g.Ha, q.device()) : Tensor();
  BwdPtrs p{q.data_ptr(),  k.data_ptr(),  v.data_ptr(),  dout.data_ptr(),
            lse.data<float>(), delta.data<float>(), tc ? dq_acc.data<float>() : nullptr,
            turn.defined() ? turn.data<int32_t>() : nullptr,
            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
            dm.defined() ? dm_part.data<float>() : nullptr, args.drop_own_chunk_grad};
  NATSL_CUDA_DISPATCH_FLOAT(q.dtype(), op, T, [&] {
    delta_kernel<T><<<unsigned((rows + 3) / 4), 128, 0, s>>>(o.data<T>(), dout.data<T>(), delta.data<float>(), rows, g.Dv);
    NATSL_CUDA_CHECK_LAUNCH();
    if (tc) {
      tc_bwd(g, p, s);
      const int64_t n = rows * g.Dk;
      dq_store_kernel<T><<<unsigned(grid_for(q.device().index, n, 256)), 256, 0, s>>>(p.dq_acc, dq.data<T>(), n,
                                                                                        g.scale);
      NATSL_CUDA_CHECK_LAUNCH();
    } else {
      simt_bwd(g, p, std::is_same_v<T, bf16>, s);
    }
  });
  if (dm.defined()) {
    const int64_t n = int64_t(g.B) * g.NC * g.Hr;
    dm_reduce_kernel<<<unsigned(grid_for(q.device().index, n, 256)), 256, 0, s>>>(
        dm_part.data<float>(), g.B, part_rows, tc ? 1 : g.C, g.Ha, g.G, g.NC, dm.data<float>());
    NATSL_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace natsl::kernels::cuda
