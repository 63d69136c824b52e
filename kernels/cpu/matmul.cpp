// CPU reference for dense matrix products: Eigen on row-major maps of each batch matrix. bf16 operands are
// widened to f32, multiplied in f32 and rounded once on the way out.
#include <Eigen/Dense>
#include <vector>

#include "kernels/cpu/math.h"
#include "kernels/cpu/parallel.h"
#include "kernels/matmul.h"

namespace natsl::kernels::cpu {
namespace {

template <class A>
using RowMajor = Eigen::Matrix<A, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// C = alpha * op(A) op(B) + beta * C for one matrix triple; C is not read when beta == 0 (it may hold NaN).
template <class A>
void gemm(const A* a, const A* b, A* c, int64_t M, int64_t N, int64_t K, bool ta, bool tb, A alpha, A beta) {
  using Map = Eigen::Map<const RowMajor<A>>;
  Map am(a, ta ? K : M, ta ? M : K);
  Map bm(b, tb ? N : K, tb ? K : N);
  Eigen::Map<RowMajor<A>> cm(c, M, N);
  auto run = [&](const auto& opa, const auto& opb) {
    if (beta == A(0)) {
      cm.noalias() = alpha * (opa * opb);
    } else {
      cm *= beta;
      cm.noalias() += alpha * (opa * opb);
    }
  };
  if (!ta && !tb) run(am, bm);
  else if (ta && !tb) run(am.transpose(), bm);
  else if (!ta && tb) run(am, bm.transpose());
  else run(am.transpose(), bm.transpose());
}

template <class T>
std::vector<acc_t<T>> widen(const Tensor& t) {
  const T* p = t.data<T>();
  std::vector<acc_t<T>> out(size_t(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = convert<acc_t<T>>(p[i]);
  return out;
}

template <class T>
void batched(const Tensor& a, const Tensor& b, const Tensor& out, bool ta, bool tb, double alpha, double beta) {
  using A = acc_t<T>;
  const int64_t M = out.size(-2), N = out.size(-1), K = a.size(ta ? -2 : -1);
  const int64_t batch = M * N > 0 ? out.numel() / (M * N) : 0;
  const int64_t a_step = M * K, b_step = b.dim() == 2 ? 0 : K * N, c_step = M * N;
  if constexpr (std::is_same_v<T, A>) {
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    T* cp = out.data<T>();
    // Each batch matrix writes only its own C: one thread per block of them.
    parallel_for(batch, [&](int64_t i) {
      gemm<A>(ap + i * a_step, bp + i * b_step, cp + i * c_step, M, N, K, ta, tb, A(alpha), A(beta));
    });
  } else {
    std::vector<A> aw = widen<T>(a), bw = widen<T>(b);
    std::vector<A> cw = beta != 0.0 ? widen<T>(out) : std::vector<A>(size_t(out.numel()));
    parallel_for(batch, [&](int64_t i) {
      gemm<A>(aw.data() + i * a_step, bw.data() + i * b_step, cw.data() + i * c_step, M, N, K, ta, tb, A(alpha),
              A(beta));
    });
    T* cp = out.data<T>();
    for (size_t i = 0; i < cw.size(); ++i) cp[i] = convert<T>(cw[i]);
  }
}

}  // namespace

void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
            double beta) {
  NATSL_DISPATCH_FLOAT(out.dtype(), T, [&] { batched<T>(a, b, out, trans_a, trans_b, alpha, beta); });
}

}  // namespace natsl::kernels::cpu
