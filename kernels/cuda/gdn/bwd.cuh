#pragma once
// The backward stages of the CUDA GDN kernels (after run_prep with recompute and run_state_fwd storing h and
// v_new): the reverse state pass and the chunk-parallel gradient kernel.
#include "kernels/cuda/gdn/call.cuh"

namespace natsl::kernels::cuda::gdn {

// Writes dh [NC, HV, K, V] (gradient of the state leaving each chunk), dv2 [NC, HV, 64, V] (total dL/dv_new)
// and dh0 if defined.
void run_state_bwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr, const Tensor& dout,
                   const Tensor& dht, const Tensor& dh0, const Tensor& dh, const Tensor& dv2);

// The forward recompute (run_state_fwd storing h and v_new) and run_state_bwd in one launch.
void run_state_fwd_bwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                       const Tensor& dout, const Tensor& dht, const Tensor& dh0, const Tensor& h, const Tensor& vnew,
                       const Tensor& dh, const Tensor& dv2);

// Inputs and outputs of the chunk gradient kernel (gdn/chunk_bwd.cu).
template <class D>
struct ChunkBwdParams {
  const D *q, *k, *v, *dout, *a_inv, *h, *dh, *vnew, *dv2;
  const float *gam, *beta, *mask;
  D *dq, *dk, *dv;
  float *dg, *dbeta, *dmask;
  const ChunkInfo* chunks;
  int H, HV, K, V;
  float scale;
};

// dq, dk, dv, dg, dbeta (and dmask if defined) from everything above (gdn-algorithm.md §4 steps 4-6).
// (A single-pass variant that read each V tile once was measured 1.44x slower on the H200 and removed:
// experiments/results/bench/gdn_notes.md.)
void run_chunk_bwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved,
                   const PrepOut& pr, const Tensor& dout, const Tensor& h, const Tensor& vnew, const Tensor& dh,
                   const Tensor& dv2, const GdnGrads& grads);

}  // namespace natsl::kernels::cuda::gdn
