// Dense matmul through cuBLASLt, on the device's compute stream.
//
// natsl tensors are row-major; cuBLASLt is column-major. A row-major r x c matrix is the column-major
// c x r matrix (its transpose) with the same bytes, so out = op(a) op(b) is computed as
// out^T = op(b)^T op(a)^T: cuBLASLt's "A" is our b and its "B" is our a, m = N, n = M.
//
// One cuBLASLt handle and one 32 MiB workspace per device, created on first use. The descriptors and the
// heuristic's algorithm are cached per problem (shape, transposes, dtype, pointer alignment).
#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/allocator.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/matmul_config.h"
#include "kernels/cuda/matmul_thin.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"

namespace natsl::kernels::cuda {
namespace {

std::atomic<bool> g_allow_tf32{false};

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// The problem as cuBLASLt sees it (column-major, after the operand swap).
struct PlanKey {
  int dtype, out_dtype, trans_lt_a, trans_lt_b, tf32;
  int64_t m, n, k, batch, stride_lt_a, stride_lt_b;
  int align_lt_a, align_lt_b, align_c;
  auto tie() const {
    return std::tie(dtype, out_dtype, trans_lt_a, trans_lt_b, tf32, m, n, k, batch, stride_lt_a, stride_lt_b,
                    align_lt_a, align_lt_b, align_c);
  }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = true;  // false: a bf16 -> f32 problem cuBLASLt has no algorithm for (matmul() takes another way)
};

struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::mutex mu;
  std::map<PlanKey, Plan> plans;
};

// Per-device contexts, created lazily and kept for the life of the process (destroying them at exit
// could run after the CUDA runtime has shut down).
LtContext& context(int device) {
  static std::mutex mu;
  static std::vector<LtContext*> contexts;
  std::lock_guard<std::mutex> lk(mu);
  if (int(contexts.size()) <= device) contexts.resize(size_t(device) + 1, nullptr);
  if (!contexts[size_t(device)]) {
    auto* c = new LtContext();
    NATSL_CUBLAS_CHECK(cublasLtCreate(&c->handle));
    c->workspace = allocate(Device::cuda(device), kWorkspaceBytes);
    contexts[size_t(device)] = c;
  }
  return *contexts[size_t(device)];
}

// Largest power of two (<= 256) dividing the address and the batch stride in bytes.
int alignment(const void* p, int64_t batch_stride_bytes) {
  uintptr_t v = reinterpret_cast<uintptr_t>(p) | uintptr_t(batch_stride_bytes) | uintptr_t(256);
  return int(v & (~v + 1));
}

cublasLtMatrixLayout_t make_layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                                   int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  NATSL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    int32_t bc = int32_t(batch);
    NATSL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
    NATSL_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
  }
  return l;
}

Plan build_plan(LtContext& ctx, const PlanKey& k) {
  const cudaDataType_t t = k.dtype == int(DType::bf16) ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t tc = k.out_dtype == int(DType::bf16) ? CUDA_R_16BF : CUDA_R_32F;  // f32 for bf16 x bf16 -> f32
  const cublasComputeType_t compute =
      k.dtype == int(DType::f32) && k.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  Plan p;
  NATSL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F));
  cublasOperation_t ta = k.trans_lt_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = k.trans_lt_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  NATSL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  NATSL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  // Stored shapes (column-major): A is m x k (k x m when transposed), B is k x n (n x k), C is m x n.
  p.a = k.trans_lt_a ? make_layout(t, k.k, k.m, k.k, k.batch, k.stride_lt_a)
                     : make_layout(t, k.m, k.k, k.m, k.batch, k.stride_lt_a);
  p.b = k.trans_lt_b ? make_layout(t, k.n, k.k, k.n, k.batch, k.stride_lt_b)
                     : make_layout(t, k.k, k.n, k.k, k.batch, k.stride_lt_b);
  p.c = make_layout(tc, k.m, k.n, k.m, k.batch, k.m * k.n);

  cublasLtMatmulPreference_t pref = nullptr;
  NATSL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = kWorkspaceBytes;
  NATSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  uint32_t al_a = uint32_t(k.align_lt_a), al_b = uint32_t(k.align_lt_b), al_c = uint32_t(k.align_c);
  NATSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
  NATSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
  NATSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
  NATSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (k.out_dtype != k.dtype && (st != CUBLAS_STATUS_SUCCESS || found == 0)) {
    p.ok = false;
    return p;
  }
  NATSL_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "cuBLASLt found no algorithm for m=", k.m, " n=", k.n,
              " k=", k.k, " batch=", k.batch, " dtype=", dtype_name(DType(k.dtype)), " -> ",
              dtype_name(DType(k.out_dtype)), " (status ", cublasGetStatusName(st), ")");
  p.algo = res.algo;
  return p;
}

// Rows whose length in bytes is not a multiple of 16 (a product with 6 or 12 outputs: Gated DeltaNet's a and b
// projections, one per head) leave cuBLASLt only its unvectorised kernels, which took 184 us for the backward of
// a 32768 x 1024 -> 6 product that reads 67 MB (natsl-340m's profile, 2026-12-07). The three products of a linear
// layer with such a narrow dim run on the thin kernels (matmul_thin.h); any other (a transposed pair, f32 rows of
// an odd length the thin kernels refuse, a narrow dim of 9..256) runs on copies
// padded with zeros to 8-element rows (16 bytes in bf16, 32 in f32): M where it is op(a)'s row length (a
// transposed), K where it is a's or b's, N always (out's, and b's when b is not transposed). Zeros in the padded K
// add nothing; the padded M rows and N columns of the result are not copied back. Each output element is the same
// dot product, so the result is the unpadded product's up to the order cuBLASLt sums in. 2-D problems (or a batch
// folded into rows) with the padded dims at most kMaxPaddedDim; returns false when it does not pad.
constexpr int64_t kMaxPaddedDim = 256;
int64_t pad8(int64_t n) { return (n + 7) / 8 * 8; }
bool misaligned(int64_t row_len, DType dt) { return (row_len * int64_t(dtype_size(dt))) % 16 != 0; }

// dst[0:rows, 0:cols] = src (both row-major, contiguous rows of their own lengths), stream-ordered.
void copy_block(const Tensor& dst, const Tensor& src, int64_t rows, int64_t cols, cudaStream_t s) {
  const size_t es = dtype_size(src.dtype());
  NATSL_CUDA_CHECK(cudaMemcpy2DAsync(dst.data_ptr(), size_t(dst.size(-1)) * es, src.data_ptr(),
                                     size_t(src.size(-1)) * es, size_t(cols) * es, size_t(rows),
                                     cudaMemcpyDeviceToDevice, s));
}

// t (2-D view [rows, cols]) in a zeroed [prows, pcols] buffer; t itself when nothing is padded.
Tensor padded(const Tensor& t, int64_t prows, int64_t pcols, cudaStream_t s) {
  const int64_t rows = t.size(0), cols = t.size(1);
  if (prows == rows && pcols == cols) return t;
  Tensor p = Tensor::empty({prows, pcols}, t.dtype(), t.device());
  NATSL_CUDA_CHECK(cudaMemsetAsync(p.data_ptr(), 0, p.nbytes(), s));
  copy_block(p, t, rows, cols, s);
  return p;
}

bool padded_matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
                   double beta, const Tensor& c) {
  const DType dt = a.dtype(), odt = out.dtype();
  const int64_t N = out.size(-1), M = out.numel() / N;  // a folded batch: its rows
  const int64_t K = trans_a ? a.size(-2) : a.size(-1);
  const bool pad_m = trans_a && misaligned(M, dt);
  const bool pad_k = (!trans_a && misaligned(K, dt)) || (trans_b && misaligned(K, dt));
  const bool pad_n = misaligned(N, odt) || (!trans_b && misaligned(N, dt));
  if (!pad_m && !pad_k && !pad_n) return false;
  // Only narrow dims (the padded copies stay small: at most 256 columns of the other dims); a wide misaligned
  // dim (an odd vocabulary) keeps the unpadded product rather than a second copy of a large output.
  if ((pad_m && M > kMaxPaddedDim) || (pad_k && K > kMaxPaddedDim) || (pad_n && N > kMaxPaddedDim)) return false;
  const int64_t Mp = pad_m ? pad8(M) : M, Kp = pad_k ? pad8(K) : K, Np = pad_n ? pad8(N) : N;
  cudaStream_t s = activate(out.device().index);
  const Tensor a2 = a.view({trans_a ? K : M, trans_a ? M : K}), b2 = b.view({b.size(-2), b.size(-1)});
  const Tensor out2 = out.view({M, N});
  const Tensor ap = trans_a ? padded(a2, Kp, Mp, s) : padded(a2, M, Kp, s);
  const Tensor bp = trans_b ? padded(b2, Np, Kp, s) : padded(b2, Kp, Np, s);
  if (Mp == M && Np == N) {  // only K padded (an input gradient dy W of a narrow product): out as it is
    matmul(ap, bp, out2, trans_a, trans_b, alpha, beta, c.defined() ? c.view({M, N}) : Tensor());
    return true;
  }
  Tensor op = Tensor::empty({Mp, Np}, odt, out.device());
  if (beta != 0.0) {  // C: what beta scales, zeros in the padding (its results are dropped, but not read unset)
    NATSL_CUDA_CHECK(cudaMemsetAsync(op.data_ptr(), 0, op.nbytes(), s));
    copy_block(op, c.defined() ? c.view({M, N}) : out2, M, N, s);
  }
  matmul(ap, bp, op, trans_a, trans_b, alpha, beta);
  copy_block(out2, op, M, N, s);
  return true;
}

}  // namespace

void set_matmul_allow_tf32(bool allow) { g_allow_tf32.store(allow); }
bool matmul_allow_tf32() { return g_allow_tf32.load(); }

void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
            double beta, const Tensor& c) {
  // A c that is out itself, or that beta = 0 ignores, is no separate input.
  if (c.defined() && (beta == 0.0 || c.data_ptr() == out.data_ptr()))
    return matmul(a, b, out, trans_a, trans_b, alpha, beta);
  const DType dt = a.dtype(), odt = out.dtype();
  NATSL_CUDA_DISPATCH_FLOAT(dt, "matmul", T, [&] { (void)sizeof(T); });
  NATSL_CHECK(b.dtype() == dt && matmul_writes(dt, odt), "matmul: dtypes ",
              dtype_name(a.dtype()), ", ", dtype_name(b.dtype()), " -> ", dtype_name(odt));
  NATSL_CHECK(out.dim() >= 2 && a.dim() == out.dim() && (b.dim() == out.dim() || b.dim() == 2),
              "matmul: ranks of ", a.str(), ", ", b.str(), " -> ", out.str());
  const int64_t M = out.size(-2), N = out.size(-1);
  const int64_t K = trans_a ? a.size(-2) : a.size(-1);
  const int64_t batch = M * N > 0 ? out.numel() / (M * N) : 0;
  if (batch == 0) return;
  if (K == 0) {  // empty product: out = beta * out (or beta * c)
    if (beta == 0.0) out.zero_();
    else kernels::cuda::axpby(beta, c.defined() ? c : out, 0.0, out, out);
    return;
  }
  // Operands that are not 16-byte aligned (views into the middle of a buffer) go through aligned copies:
  // cuBLASLt's fast kernels need the alignment, and the copies are stream-ordered (no sync).
  if (!aligned16(a.data_ptr()) || !aligned16(b.data_ptr()) || !aligned16(out.data_ptr()) ||
      (c.defined() && !aligned16(c.data_ptr()))) {
    if (c.defined()) {  // rare (views into the middle of a buffer): out = c, then the accumulating product
      out.copy_(c);
      return matmul(a, b, out, trans_a, trans_b, alpha, beta);
    }
    auto aligned_copy = [](const Tensor& t) {
      if (aligned16(t.data_ptr())) return t;
      Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
      c.copy_(t);
      return c;
    };
    Tensor o = aligned_copy(out);  // copies the old values too (needed when beta != 0)
    matmul(aligned_copy(a), aligned_copy(b), o, trans_a, trans_b, alpha, beta);
    if (!o.same(out)) out.copy_(o);
    return;
  }
  const bool shared_b = b.dim() == 2 && out.dim() > 2;
  // A shared b with untransposed a: the batch folds into the rows of one product.
  const bool fold = shared_b && !trans_a;
  // One dim of at most 8 (Gated DeltaNet's a / b projections): the thin kernels (matmul_thin.h), else padded copies.
  if ((batch == 1 || fold) && thin_matmul(a, b, out, trans_a, trans_b, alpha, beta, c)) return;
  if ((batch == 1 || fold) && padded_matmul(a, b, out, trans_a, trans_b, alpha, beta, c)) return;
  const int64_t rows = fold ? batch * M : M, nb = fold ? 1 : batch;

  const int dev = out.device().index;
  cudaStream_t s = activate(dev);
  LtContext& ctx = context(dev);
  const int64_t es = int64_t(dtype_size(dt)), out_es = int64_t(dtype_size(odt));
  PlanKey key{};
  key.dtype = int(dt);
  key.out_dtype = int(odt);
  key.tf32 = dt == DType::f32 && matmul_allow_tf32();
  key.m = N;
  key.n = rows;
  key.k = K;
  key.batch = nb;
  key.trans_lt_a = trans_b;  // cuBLASLt A = our b (see the header comment)
  key.trans_lt_b = trans_a;
  key.stride_lt_a = nb > 1 ? (shared_b ? 0 : K * N) : 0;
  key.stride_lt_b = nb > 1 ? M * K : 0;
  key.align_lt_a = alignment(b.data_ptr(), key.stride_lt_a * es);
  key.align_lt_b = alignment(a.data_ptr(), key.stride_lt_b * es);
  key.align_c = alignment(out.data_ptr(), nb > 1 ? M * N * out_es : 0);
  if (c.defined()) key.align_c = std::min(key.align_c, alignment(c.data_ptr(), nb > 1 ? M * N * out_es : 0));

  std::unique_lock<std::mutex> lk(ctx.mu);
  auto it = ctx.plans.find(key);
  if (it == ctx.plans.end()) it = ctx.plans.emplace(key, build_plan(ctx, key)).first;
  const Plan& p = it->second;
  if (!p.ok) {
    // No bf16 x bf16 -> f32 algorithm for this problem: the bf16 product, widened and added (one bf16 rounding
    // more than the direct product).
    lk.unlock();
    if (c.defined()) {
      out.copy_(c);
      return matmul(a, b, out, trans_a, trans_b, alpha, beta);
    }
    Tensor prod = Tensor::empty(out.shape(), dt, out.device());
    matmul(a, b, prod, trans_a, trans_b, alpha, 0.0);
    if (beta == 0.0) out.copy_(prod);  // converts; out is not read (it may hold NaN)
    else kernels::cuda::axpby(1.0, prod.to(odt), beta, out, out);
    return;
  }
  const float al = float(alpha), be = float(beta);
  // C (read when beta != 0) is c when given, else out; D is out. Both have out's layout and a 16-byte
  // aligned start (checked above); the plan's alignment key is out's, and c's batch stride equals out's.
  const void* cp = c.defined() ? c.data_ptr() : out.data_ptr();
  NATSL_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, p.desc, &al, b.data_ptr(), p.a, a.data_ptr(), p.b, &be, cp, p.c,
                                    out.data_ptr(), p.c, &p.algo, ctx.workspace, kWorkspaceBytes, s));
}

}  // namespace natsl::kernels::cuda
