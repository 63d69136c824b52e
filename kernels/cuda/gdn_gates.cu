// CUDA Gated DeltaNet gates (kernels/gdn_gates.h): a thread per element of [..., H], each quantity the expression
// the composed elementwise kernels compute (kernels/cuda/activation.cuh, kernels/cuda/elementwise.cu) with the
// same f32 roundings. The products and sums those kernels store between ops are written as __fmul_rn / __fadd_rn
// here, so none is contracted into a multiply-add across what was an op boundary; the scalings by -1 and c are
// axpby's c x + 0 (kernels::scale).
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/gdn_gates.h"

namespace natsl::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// kernels::scale(x, c): axpby's alpha x + 0 with beta = 0.
__device__ __forceinline__ float scaled(float c, float x) { return __fadd_rn(__fmul_rn(c, x), 0.f); }

template <class D, class P>
__global__ void __launch_bounds__(kThreads) gates_fwd_kernel(const D* __restrict__ a, const D* __restrict__ b,
                                                             const P* __restrict__ A_log,
                                                             const P* __restrict__ dt_bias, float c, bool scale_beta,
                                                             float* __restrict__ g, float* __restrict__ beta,
                                                             int64_t n, int64_t H) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = i % H;
    const float s = sigmoid_f32(to_f32(b[i]));
    beta[i] = scale_beta ? scaled(c, s) : s;
    const float A = expf(to_f32(A_log[h]));
    const float u = __fadd_rn(to_f32(a[i]), to_f32(dt_bias[h]));
    g[i] = scaled(-1.f, __fmul_rn(A, softplus_f32(u)));
  }
}

// Null outputs are not written; dg / dbeta null: no gradient reached g / beta.
template <class D, class P>
__global__ void __launch_bounds__(kThreads)
    gates_bwd_terms_kernel(const D* __restrict__ a, const D* __restrict__ b, const P* __restrict__ A_log,
                           const P* __restrict__ dt_bias, float c, bool scale_beta, const float* __restrict__ dg,
                           const float* __restrict__ dbeta, D* __restrict__ da, D* __restrict__ db,
                           float* __restrict__ dA_terms, float* __restrict__ ddt_terms, int64_t n, int64_t H) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = i % H;
    if (dg) {
      const float dm = scaled(-1.f, dg[i]);  // neg's backward
      const float A = expf(to_f32(A_log[h]));
      const float u = __fadd_rn(to_f32(a[i]), to_f32(dt_bias[h]));
      const float du = __fmul_rn(__fmul_rn(dm, A), softplus_grad_f32(u));
      if (da) da[i] = from_f32<D>(du);
      if (ddt_terms) ddt_terms[i] = du;
      if (dA_terms) dA_terms[i] = __fmul_rn(dm, softplus_f32(u));
    }
    if (dbeta && db) {
      const float dy = scale_beta ? scaled(c, dbeta[i]) : dbeta[i];
      db[i] = from_f32<D>(__fmul_rn(dy, sigmoid_grad_f32(sigmoid_f32(to_f32(b[i])))));
    }
  }
}

// A value of a floating tensor of dtype f32 (bf16 false) or bf16.
__device__ __forceinline__ float load_f32(const void* p, bool bf16_data, int64_t i) {
  return bf16_data ? to_f32(static_cast<const bf16*>(p)[i]) : static_cast<const float*>(p)[i];
}
// Rounds v to f32 (a no-op) or bf16, as stored there.
__device__ __forceinline__ float round_to(float v, bool bf16_data) { return bf16_data ? to_f32(bf16(v)) : v; }
__device__ __forceinline__ void store_f32(void* p, bool bf16_data, int64_t i, float v) {
  if (bf16_data) static_cast<bf16*>(p)[i] = bf16(v);
  else static_cast<float*>(p)[i] = v;
}

// A parameter gradient: written to out rounded to the parameter's dtype (to_dtype's backward), or added into out
// (the parameter's .grad) as to_dtype's backward adds into its sink: rounded to out's dtype, then out + it, rounded
// to out's dtype (kernels::add_into; a bf16 parameter's gradient into an f32 .grad is not rounded to bf16).
__device__ __forceinline__ void put_param_grad(float grad, bool p_bf16, void* out, bool out_bf16, bool accumulate,
                                               int64_t h) {
  const float v = accumulate ? round_to(grad, out_bf16) : round_to(round_to(grad, p_bf16), out_bf16);
  store_f32(out, out_bf16, h, accumulate ? __fadd_rn(load_f32(out, out_bf16, h), v) : v);
}

// A thread per head: dA_log = dA_sum exp(A_log) (exp's backward), ddt_bias = ddt_sum; either out may be null.
__global__ void param_grads_kernel(const void* __restrict__ A_log, bool p_bf16, const float* __restrict__ dA_sum,
                                   const float* __restrict__ ddt_sum, void* dA_log, bool dA_bf16, bool dA_acc,
                                   void* ddt_bias, bool ddt_bf16, bool ddt_acc, int64_t H) {
  for (int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; h < H; h += int64_t(gridDim.x) * blockDim.x) {
    if (dA_log)
      put_param_grad(__fmul_rn(dA_sum[h], expf(load_f32(A_log, p_bf16, h))), p_bf16, dA_log, dA_bf16, dA_acc, h);
    if (ddt_bias) put_param_grad(ddt_sum[h], p_bf16, ddt_bias, ddt_bf16, ddt_acc, h);
  }
}

template <class T>
const T* cptr_or_null(const Tensor& t) {
  return t.defined() ? cptr<T>(t) : nullptr;
}
template <class T>
T* mptr_or_null(const Tensor& t) {
  return t.defined() ? mptr<T>(t) : nullptr;
}

// A gradient's dtype, f32 or bf16 on the GPU.
bool is_bf16(const Tensor& t, const char* op) {
  if (!t.defined()) return false;
  NATSL_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op, ": expected f32 or bf16 on the GPU, got ",
              t.str());
  return t.dtype() == DType::bf16;
}

}  // namespace

void gdn_gates_fwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale,
                   const Tensor& g, const Tensor& beta) {
  const auto [n, dev, s] = flat_op(a);
  if (n == 0) return;
  const int64_t H = a.size(-1);
  NATSL_CUDA_DISPATCH_FLOAT(a.dtype(), "gdn_gates_fwd", D, [&] {
    NATSL_CUDA_DISPATCH_FLOAT(A_log.dtype(), "gdn_gates_fwd", P, [&] {
      gates_fwd_kernel<D, P><<<grid_for(dev, n, kThreads), kThreads, 0, s>>>(
          cptr<D>(a), cptr<D>(b), cptr<P>(A_log), cptr<P>(dt_bias), float(beta_scale), beta_scale != 1.0,
          mptr<float>(g), mptr<float>(beta), n, H);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void gdn_gates_bwd_terms(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias,
                         double beta_scale, const Tensor& dg, const Tensor& dbeta, const Tensor& da,
                         const Tensor& db, const Tensor& dA_terms, const Tensor& ddt_terms) {
  const auto [n, dev, s] = flat_op(a);
  if (n == 0 || !(da.defined() || db.defined() || dA_terms.defined() || ddt_terms.defined())) return;
  const int64_t H = a.size(-1);
  NATSL_CUDA_DISPATCH_FLOAT(a.dtype(), "gdn_gates_bwd", D, [&] {
    NATSL_CUDA_DISPATCH_FLOAT(A_log.dtype(), "gdn_gates_bwd", P, [&] {
      const bool g_path = da.defined() || dA_terms.defined() || ddt_terms.defined();
      gates_bwd_terms_kernel<D, P><<<grid_for(dev, n, kThreads), kThreads, 0, s>>>(
          cptr<D>(a), cptr<D>(b), cptr<P>(A_log), cptr<P>(dt_bias), float(beta_scale), beta_scale != 1.0,
          g_path ? cptr_or_null<float>(dg) : nullptr, db.defined() ? cptr_or_null<float>(dbeta) : nullptr,
          mptr_or_null<D>(da), mptr_or_null<D>(db), mptr_or_null<float>(dA_terms), mptr_or_null<float>(ddt_terms), n,
          H);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void gdn_gates_param_grads(const Tensor& A_log, const Tensor& dt_bias, const Tensor& dA_sum, const Tensor& ddt_sum,
                           const GdnGatesGrads& grads) {
  const char* op = "gdn_gates_bwd";
  const int64_t H = A_log.numel();
  const int dev = A_log.device().index;
  cudaStream_t s = activate(dev);
  if (H == 0) return;
  const bool p_bf16 = is_bf16(A_log, op);
  (void)dt_bias;  // of A_log's dtype (checked by the dispatch)
  const bool dA_bf16 = is_bf16(grads.dA_log, op), ddt_bf16 = is_bf16(grads.ddt_bias, op);
  param_grads_kernel<<<grid_for(dev, H, kThreads), kThreads, 0, s>>>(
      A_log.data_ptr(), p_bf16, cptr_or_null<float>(dA_sum), cptr_or_null<float>(ddt_sum),
      grads.dA_log.defined() ? grads.dA_log.data_ptr() : nullptr, dA_bf16, grads.accumulate_A_log,
      grads.ddt_bias.defined() ? grads.ddt_bias.data_ptr() : nullptr, ddt_bf16, grads.accumulate_dt_bias, H);
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
