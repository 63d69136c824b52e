#pragma once
// Host side shared by the chunked GDN kernels: shape checks for the CUDA path, the device chunk/sequence
// tables (built by a kernel from values passed by value, so nothing waits on the host), scratch tensors and
// the prep kernel that both directions run first (gdn/prep.cu).
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gdn/plan.h"
#include "kernels/cuda/gdn/tile.cuh"
#include "kernels/gdn.h"

namespace natsl::kernels::cuda::gdn {

struct Plan {
  GdnShape s;
  std::vector<GdnSequence> seqs;
  Device dev;
  cudaStream_t stream;
  Tensor tables;  // i32: NC ChunkInfo, then N SeqInfo
  GdnPlan tune;   // the caller's layout choices (auto fields resolved by state_layout)
  const ChunkInfo* chunks() const { return static_cast<const ChunkInfo*>(tables.data_ptr()); }
  const SeqInfo* seq_infos() const { return reinterpret_cast<const SeqInfo*>(chunks() + s.NC); }
};

// Checks what the CUDA kernels support and builds the tables on the device; tune: nullptr = the default plan.
Plan make_plan(const GdnArgs& args, const GdnInputs& in, const char* op, const GdnPlan* tune);

// Scratch written by the prep kernel, chunk-major so each chunk's tiles are contiguous:
//   gam [NC, HV, 64] f32, w [NC, HV, 64, K] D, u [NC, HV, 64, V] D, p [NC, HV, 64, 64] D
// p = scale * (i >= j) * exp(gam_i - gam_j) * q_i . k_j (the intra-chunk output scores).
struct PrepOut {
  Tensor gam, w, u, p;
};
// Forward: solves T = (I + A)^-1 (stored to a_inv / g_cumsum when those are defined). Backward
// (recompute = true): reads T from a_inv instead.
PrepOut run_prep(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, bool recompute);

// t's data as E*, or nullptr where t is not defined (the optional inputs and outputs).
template <class E>
E* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<E>() : nullptr;
}
// The sizes and the scale that the chunked kernels' parameters carry (P: any of their parameter structs).
template <class P>
void set_sizes(P& p, const GdnShape& s, const GdnArgs& args) {
  p.H = int(s.H);
  p.HV = int(s.HV);
  p.K = int(s.K);
  p.V = int(s.V);
  p.scale = float(args.scale);
}
// The inputs q, k, v (element type D) of the kernels that read all three.
template <class D, class P>
void set_qkv(P& p, const GdnInputs& in) {
  p.q = in.q.data<D>();
  p.k = in.k.data<D>();
  p.v = in.v.data<D>();
}

// Lets kern use smem bytes of dynamic shared memory; minb > 1 also asks for the largest shared-memory carveout (the
// layouts that fit minb CTAs on an SM).
template <class Kern>
void set_smem(Kern kern, int smem, int minb = 1) {
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  if (minb > 1)
    NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          int(cudaSharedmemCarveoutMaxShared)));
}
// kern<<<grid, block, smem, stream>>>(args...) after set_smem(kern, smem, minb), and the launch check.
template <class Kern, class... Args>
void launch_smem(Kern kern, dim3 grid, int block, int smem, int minb, cudaStream_t stream, const Args&... args) {
  set_smem(kern, smem, minb);
  kern<<<grid, block, smem, stream>>>(args...);
  NATSL_CUDA_CHECK_LAUNCH();
}

// Calls fn(std::integral_constant<int, K / 64>{}) for the head sizes the kernels are built for (K = 64, 128,
// and 256 in bf16; the f32 path stops at 128 for shared memory); otherwise fails naming `what`.
template <class D, class Fn>
void dispatch_kt(int64_t K, const char* what, Fn&& fn) {
  switch (K) {
    case 64: return fn(std::integral_constant<int, 1>{});
    case 128: return fn(std::integral_constant<int, 2>{});
    case 256:
      if constexpr (std::is_same_v<D, bf16>) return fn(std::integral_constant<int, 4>{});
      [[fallthrough]];
    default: NATSL_FAIL(what, ": unsupported K = ", K, " for ", dtype_name(dtype_v<D>));
  }
}

// Largest dynamic shared memory a block may use on the current device.
int max_smem_per_block(int device);
// Shared memory of one SM (what the CTAs resident on it share, 1 KB of it reserved per CTA).
int max_smem_per_sm(int device);

inline void check_aligned(const Tensor& t, const char* name, const char* op) {
  if (t.defined())
    NATSL_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", name,
                " must start on a 16-byte boundary for the CUDA GDN kernels");
}

}  // namespace natsl::kernels::cuda::gdn

namespace natsl::kernels::cuda::gdn {

// The sequential pass over the chunks of each sequence (gdn-algorithm.md §3 step 3), one CTA per
// (sequence, v head, 64 columns of V), state in f32 registers. With o defined it also produces the output
// (step 4 fused: o = scale diag(e) Q h_n + p v_new), else it stores the per-chunk states h_n [NC, HV, K, V]
// and v_new [NC, HV, 64, V] for the backward. ht (optional) receives the final state.
struct StateFwdOut {
  Tensor o, ht, h, vnew;
};
void run_state_fwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                   const StateFwdOut& out);

}  // namespace natsl::kernels::cuda::gdn
