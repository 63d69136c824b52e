// CUDA AdamW: one launch over every segment of the flat parameter / gradient / moment buffers.
//
// The segments are cut into chunks of at most kChunk elements on the host; the chunk table lives on the
// device, uploaded once per distinct segment list and cached (the list is the same at every step), so a
// step queues exactly one kernel and no copy. Blocks grid-stride over chunks; threads move 4 elements
// at a time (16-byte f32 accesses) when the buffers and offsets allow.
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {
namespace {

constexpr int64_t kChunk = 16384;
constexpr int kThreads = 256;

struct Chunk {
  int64_t offset;  // first element in the flat buffers
  int32_t numel;
  int32_t decay;
};

// Every derived constant (1 - beta, lr * wd, 1 - beta^t) is formed in double on the host and rounded once,
// as torch.optim.AdamW does in Python: in f32, 1 - 0.999 is off by 1.3e-5 relative.
struct AdamWArgs {
  float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, lr_wd;
  float bias_correction1, bias_correction2;  // 1 - beta^t
};

__device__ __forceinline__ void load4(const float* p, float (&f)[4]) { load_vec<float, 4>(p, f); }
__device__ __forceinline__ void load4(const bf16* p, float (&f)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  f[0] = __uint_as_float(raw.x << 16);
  f[1] = __uint_as_float(raw.x & 0xffff0000u);
  f[2] = __uint_as_float(raw.y << 16);
  f[3] = __uint_as_float(raw.y & 0xffff0000u);
}

// The compute copy: 4 updated weights at once (16-byte f32 / 8-byte bf16 stores), or one.
__device__ __forceinline__ void store4(float* p, const float (&f)[4]) { store_vec<float, 4>(p, f); }
__device__ __forceinline__ void store4(bf16* p, const float (&f)[4]) {
  *reinterpret_cast<uint2*>(p) = make_uint2(bf16::round_bits2(f[0], f[1]), bf16::round_bits2(f[2], f[3]));
}

// Every operation is an explicit rounding intrinsic (PTX mul.rn / fma.rn / ...), which the compiler may not
// contract into a different fma: plain `a * b + c * d` was contracted one way in the 4-wide loop and the other
// way in the scalar loop, so the same weight got different bits depending on the buffers' alignment. Now every
// kernel instance and path (with or without the compute copy, vector or scalar) gives the same bits.
__device__ __forceinline__ void adamw_update(float& p, float& m, float& v, float g, bool decay, const AdamWArgs& a) {
  m = __fmaf_rn(a.beta1, m, __fmul_rn(a.one_minus_beta1, g));
  v = __fmaf_rn(a.beta2, v, __fmul_rn(__fmul_rn(a.one_minus_beta2, g), g));
  if (decay) p = __fsub_rn(p, __fmul_rn(a.lr_wd, p));
  const float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, a.bias_correction2)), a.eps);
  p = __fsub_rn(p, __fdiv_rn(__fmul_rn(a.lr, __fdiv_rn(m, a.bias_correction1)), denom));
}

// C: the compute copy's element type (float or bf16), or void for none.
template <class G, class C, bool VEC4>
__global__ void adamw_kernel(float* __restrict__ param, const G* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, const Chunk* __restrict__ chunks, int64_t nchunks,
                             const float* __restrict__ grad_scale, AdamWArgs a, C* __restrict__ compute) {
  constexpr bool kCompute = !std::is_void_v<C>;
  const float gs = grad_scale ? grad_scale[0] : 1.f;
  for (int64_t ci = blockIdx.x; ci < nchunks; ci += gridDim.x) {
    const Chunk ch = chunks[ci];
    const bool decay = ch.decay != 0;
    float* pp = param + ch.offset;
    const G* gp = grad + ch.offset;
    float* mp = m + ch.offset;
    float* vp = v + ch.offset;
    int64_t start = 0;
    if constexpr (VEC4) {
      const int64_t n4 = ch.numel / 4;
      for (int64_t q = threadIdx.x; q < n4; q += blockDim.x) {
        float p4[4], g4[4], m4[4], v4[4];
        load4(pp + 4 * q, p4);
        load4(gp + 4 * q, g4);
        load4(mp + 4 * q, m4);
        load4(vp + 4 * q, v4);
#pragma unroll
        for (int k = 0; k < 4; ++k) adamw_update(p4[k], m4[k], v4[k], __fmul_rn(g4[k], gs), decay, a);
        store_vec<float, 4>(pp + 4 * q, p4);
        store_vec<float, 4>(mp + 4 * q, m4);
        store_vec<float, 4>(vp + 4 * q, v4);
        if constexpr (kCompute) store4(compute + ch.offset + 4 * q, p4);
      }
      start = n4 * 4;
    }
    for (int64_t i = start + threadIdx.x; i < ch.numel; i += blockDim.x) {
      float p = pp[i], mm = mp[i], vv = vp[i];
      adamw_update(p, mm, vv, __fmul_rn(to_f32(gp[i]), gs), decay, a);
      pp[i] = p;
      mp[i] = mm;
      vp[i] = vv;
      if constexpr (kCompute) compute[ch.offset + i] = from_f32<C>(p);
    }
  }
}

using SegmentKey = std::vector<std::tuple<int64_t, int64_t, bool>>;

struct ChunkTable {
  Tensor chunks;  // device bytes of Chunk[n]
  int64_t n = 0;
  bool offsets_aligned4 = true;
};

// The device chunk table of a segment list, built and uploaded on first use (per device, kept for the
// process: a model has one list).
const ChunkTable& chunk_table(const std::vector<AdamWSegment>& segments, Device d, cudaStream_t s) {
  static std::mutex mu;
  // Never destroyed: freeing device memory from a static destructor could run after the CUDA runtime.
  static auto* cache = new std::map<std::pair<int, SegmentKey>, ChunkTable>();
  SegmentKey key;
  key.reserve(segments.size());
  for (const auto& sg : segments) key.emplace_back(sg.offset, sg.numel, sg.decay);
  std::lock_guard<std::mutex> lk(mu);
  auto it = cache->find({d.index, key});
  if (it != cache->end()) return it->second;
  std::vector<Chunk> host;
  ChunkTable t;
  for (const auto& sg : segments) {
    if (sg.offset % 4 != 0) t.offsets_aligned4 = false;
    for (int64_t o = 0; o < sg.numel; o += kChunk)
      host.push_back(Chunk{sg.offset + o, int32_t(std::min(kChunk, sg.numel - o)), sg.decay ? 1 : 0});
  }
  t.n = int64_t(host.size());
  t.chunks = Tensor::empty({std::max<int64_t>(1, t.n * int64_t(sizeof(Chunk)))}, DType::u8, d);
  if (t.n > 0) {
    // Pageable source: cudaMemcpyAsync has taken the bytes when it returns (the driver stages them; it may
    // wait for the stream to do so), and the copy is ordered before the kernels on the same stream.
    // Happens once per segment list, not per step.
    NATSL_CUDA_CHECK(cudaMemcpyAsync(t.chunks.data_ptr(), host.data(), host.size() * sizeof(Chunk),
                                     cudaMemcpyHostToDevice, s));
  }
  return cache->emplace(std::make_pair(d.index, std::move(key)), std::move(t)).first->second;
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale,
                const Tensor& compute) {
  NATSL_CHECK(param.dtype() == DType::f32 && m.dtype() == DType::f32 && v.dtype() == DType::f32,
              "adamw_step: params and moments must be f32 (master weights)");
  const int64_t total = param.numel();
  NATSL_CHECK(m.numel() == total && v.numel() == total && grad.numel() == total,
              "adamw_step: param, grad, m, v must have the same number of elements");
  for (const auto& sg : segments)
    NATSL_CHECK(sg.offset >= 0 && sg.numel >= 0 && sg.offset + sg.numel <= total, "adamw_step: segment [",
                sg.offset, ", ", sg.offset + sg.numel, ") outside the buffer of ", total);
  NATSL_CHECK(!grad_scale.defined() || (grad_scale.dtype() == DType::f32 && grad_scale.numel() == 1),
              "adamw_step: grad_scale must be a 1-element f32 tensor");
  const Device d = param.device();
  cudaStream_t s = activate(d.index);
  const ChunkTable& table = chunk_table(segments, d, s);
  if (table.n == 0) return;
  AdamWArgs a;
  a.lr = float(h.lr);
  a.beta1 = float(h.beta1);
  a.beta2 = float(h.beta2);
  a.one_minus_beta1 = float(1.0 - h.beta1);
  a.one_minus_beta2 = float(1.0 - h.beta2);
  a.eps = float(h.eps);
  a.lr_wd = float(h.lr * h.weight_decay);
  a.bias_correction1 = float(1.0 - std::pow(h.beta1, double(h.step)));
  a.bias_correction2 = float(1.0 - std::pow(h.beta2, double(h.step)));
  const float* gs = grad_scale.defined() ? grad_scale.data<float>() : nullptr;
  const Chunk* chunks = static_cast<const Chunk*>(table.chunks.data_ptr());
  const int grid = grid_for(d.index, table.n, 1, 2048 / kThreads);
  float* pp = param.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  const bool vec = table.offsets_aligned4 && aligned16(pp) && aligned16(mp) && aligned16(vp);
  // One launch for a gradient type G and a compute-copy type C, vectorised when every pointer allows.
  auto launch = [&](auto* gp, auto* cp) {
    using G = std::remove_const_t<std::remove_pointer_t<decltype(gp)>>;
    using C = std::remove_pointer_t<decltype(cp)>;
    const auto aligned = [](const void* q, uintptr_t bytes) {
      return (reinterpret_cast<uintptr_t>(q) & (bytes - 1)) == 0;
    };
    bool v4 = vec && aligned(gp, 4 * sizeof(G));  // 4 gradients: 16-byte f32 / 8-byte bf16 accesses
    if constexpr (!std::is_void_v<C>) v4 = v4 && aligned(cp, 4 * sizeof(C));
    if (v4) adamw_kernel<G, C, true><<<grid, kThreads, 0, s>>>(pp, gp, mp, vp, chunks, table.n, gs, a, cp);
    else adamw_kernel<G, C, false><<<grid, kThreads, 0, s>>>(pp, gp, mp, vp, chunks, table.n, gs, a, cp);
  };
  auto with_compute = [&](auto* gp) {
    if (!compute.defined()) launch(gp, static_cast<void*>(nullptr));
    else if (compute.dtype() == DType::bf16) launch(gp, compute.data<bf16>());
    else launch(gp, compute.data<float>());
  };
  switch (grad.dtype()) {
    case DType::f32: with_compute(grad.data<float>()); break;
    case DType::bf16: with_compute(grad.data<bf16>()); break;
    default: NATSL_FAIL("adamw_step: gradients must be f32 or bf16 on the GPU, got ", dtype_name(grad.dtype()));
  }
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
