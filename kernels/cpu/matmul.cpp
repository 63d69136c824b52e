// CPU reference for dense matrix products: Eigen on row-major maps of each batch matrix. bf16 operands are
// widened to f32, multiplied in f32 and rounded once on the way out (not at all for an f32 out).
//
// Each C is cut into fixed kTile x kTile tiles and the (batch matrix, tile) pairs are shared among the threads.
// A tile is one Eigen product over the whole K, planned with fixed cache sizes (kernels/cpu/eigen.h), so every
// element of C is the same sum in the same order whatever the CPU and the thread count.
#include <algorithm>
#include <vector>

#include "kernels/cpu/eigen.h"

#include "kernels/cpu/math.h"
#include "kernels/cpu/parallel.h"
#include "kernels/matmul.h"

namespace natsl::kernels::cpu {
namespace {

template <class A>
using RowMajor = Eigen::Matrix<A, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Rows and columns of C per unit of work. Part of the numerics: Eigen's kernels take other paths for the
// ragged edge of a block, so a different tiling gives different roundings at the edges.
constexpr int64_t kTile = 128;

struct GemmShape {
  int64_t M, N, K;
  bool ta, tb;
  int64_t row_tiles() const { return (M + kTile - 1) / kTile; }
  int64_t col_tiles() const { return (N + kTile - 1) / kTile; }
  int64_t tiles() const { return row_tiles() * col_tiles(); }
};

// Tile `tile` of C = alpha * op(A) op(B) + beta * C for one matrix triple; C is not read when beta == 0 (it
// may hold NaN). With beta != 0 the tile's product is formed first and then added to beta * C, one add per
// element: in f32 and f64 the bits of the product into a new tensor followed by a separate add (what autograd
// does without a gradient sink; bf16 data is summed in f32 and rounded once, see batched()). Eigen's `C += A B`
// would instead add each kc-long panel of the product into C as it goes, rounding once per panel, and kc follows the ISA's register blocking (AVX2 builds cut K = 300 into two panels,
// SSE builds do not): in-place accumulation would then change results with the build, and a recomputed model
// (whose weight gradients reach .grad by a separate add) would no longer match the plain one bit for bit.
template <class A>
void gemm_tile(const A* a, const A* b, A* c, const GemmShape& s, int64_t tile, A alpha, A beta) {
  using Map = Eigen::Map<const RowMajor<A>>;
  const int64_t r0 = (tile / s.col_tiles()) * kTile, c0 = (tile % s.col_tiles()) * kTile;
  const int64_t rows = std::min(kTile, s.M - r0), cols = std::min(kTile, s.N - c0);
  Map am(a, s.ta ? s.K : s.M, s.ta ? s.M : s.K);
  Map bm(b, s.tb ? s.N : s.K, s.tb ? s.K : s.N);
  auto cm = Eigen::Map<RowMajor<A>>(c, s.M, s.N).block(r0, c0, rows, cols);
  auto run = [&](const auto& opa, const auto& opb) {
    if (beta == A(0)) {
      cm.noalias() = alpha * (opa.middleRows(r0, rows) * opb.middleCols(c0, cols));
    } else {
      RowMajor<A> product(rows, cols);
      product.noalias() = alpha * (opa.middleRows(r0, rows) * opb.middleCols(c0, cols));
      if (beta != A(1)) cm *= beta;
      cm += product;
    }
  };
  if (!s.ta && !s.tb) run(am, bm);
  else if (s.ta && !s.tb) run(am.transpose(), bm);
  else if (!s.ta && s.tb) run(am, bm.transpose());
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
  const GemmShape shape{M, N, K, ta, tb};
  if (batch == 0) return;
  if constexpr (std::is_same_v<T, A>) {
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    T* cp = out.data<T>();
    // Each (batch matrix, tile) writes only its own part of C.
    parallel_for(batch * shape.tiles(), [&](int64_t w) {
      const int64_t i = w / shape.tiles();
      gemm_tile<A>(ap + i * a_step, bp + i * b_step, cp + i * c_step, shape, w % shape.tiles(), A(alpha), A(beta));
    });
  } else {
    // Widened operands; the product straight into an f32 out (bf16 operands, f32 out), else into a widened copy
    // of out that is rounded back.
    std::vector<A> aw = widen<T>(a), bw = widen<T>(b);
    const bool direct = out.dtype() == dtype_of<A>::value;
    std::vector<A> cw = direct ? std::vector<A>() : beta != 0.0 ? widen<T>(out) : std::vector<A>(size_t(out.numel()));
    A* cp = direct ? out.data<A>() : cw.data();
    parallel_for(batch * shape.tiles(), [&](int64_t w) {
      const int64_t i = w / shape.tiles();
      gemm_tile<A>(aw.data() + i * a_step, bw.data() + i * b_step, cp + i * c_step, shape, w % shape.tiles(),
                   A(alpha), A(beta));
    });
    if (!direct) {
      T* op = out.data<T>();
      for (size_t i = 0; i < cw.size(); ++i) op[i] = convert<T>(cw[i]);
    }
  }
}

}  // namespace

void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool trans_a, bool trans_b, double alpha,
            double beta) {
  fix_eigen_blocking();
  // Dispatch on the operands' dtype (an f32 out with bf16 operands is the mixed case).
  NATSL_DISPATCH_FLOAT(a.dtype(), T, [&] { batched<T>(a, b, out, trans_a, trans_b, alpha, beta); });
}

}  // namespace natsl::kernels::cpu
