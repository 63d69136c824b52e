// CUDA elementwise family: unary maps (fwd/bwd), broadcasting binary ops, axpby.
// Contiguous operands move 16 bytes per access; broadcast operands take the strided path.
#include <type_traits>

#include "core/copy.h"
#include "core/cuda/strided_index.cuh"
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

namespace natsl::kernels::cuda {
namespace {

// bf16 data: the hardware exp and a fast reciprocal (a few f32 ulps, far under bf16's rounding), so the
// kernel stays memory-bound.
__device__ __forceinline__ float fast_sigmoidf(float x) { return __frcp_rn(1.f + __expf(-x)); }

template <UnaryOp OP>
__device__ __forceinline__ float unary_f(float x) {
  if constexpr (OP == UnaryOp::Neg) return -x;
  else if constexpr (OP == UnaryOp::Exp) return expf(x);
  else if constexpr (OP == UnaryOp::Log) return logf(x);
  else if constexpr (OP == UnaryOp::Silu) return x * sigmoid_f32(x);
  else if constexpr (OP == UnaryOp::Sigmoid) return sigmoid_f32(x);
  else if constexpr (OP == UnaryOp::Softplus) return softplus_f32(x);
  else if constexpr (OP == UnaryOp::Tanh) return tanhf(x);
  else if constexpr (OP == UnaryOp::Sqrt) return sqrtf(x);
  else return x * x;  // Square
}

// f'(x) from x and y = f(x).
template <UnaryOp OP>
__device__ __forceinline__ float unary_grad_f(float x, float y) {
  if constexpr (OP == UnaryOp::Neg) return -1.f;
  else if constexpr (OP == UnaryOp::Exp) return y;
  else if constexpr (OP == UnaryOp::Log) return 1.f / x;
  else if constexpr (OP == UnaryOp::Silu) {
    float s = sigmoid_f32(x);
    return s * (1.f + x * (1.f - s));
  } else if constexpr (OP == UnaryOp::Sigmoid) return sigmoid_grad_f32(y);
  else if constexpr (OP == UnaryOp::Softplus) return softplus_grad_f32(x);
  else if constexpr (OP == UnaryOp::Tanh) return 1.f - y * y;
  else if constexpr (OP == UnaryOp::Sqrt) return 0.5f / y;
  else return 2.f * x;  // Square
}

template <class T, int VEC, UnaryOp OP>
__global__ void unary_fwd_kernel(const T* x, T* y, int64_t n) {
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float a[W];
    load_vec<T, W>(x + i, a);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if constexpr (OP == UnaryOp::Silu && std::is_same_v<T, bf16>) a[k] = a[k] * fast_sigmoidf(a[k]);
      else a[k] = unary_f<OP>(a[k]);
    }
    store_vec<T, W>(y + i, a);
  });
}

// x or y may be null: a missing y is recomputed from x; a missing x reads as 0 (as the CPU reference).
template <class T, int VEC, UnaryOp OP>
__global__ void unary_bwd_kernel(const T* x, const T* y, const T* dy, T* dx, int64_t n) {
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float xv[W], yv[W], g[W];
    load_vec<T, W>(dy + i, g);
    if (x) load_vec<T, W>(x + i, xv);
    else
#pragma unroll
      for (int k = 0; k < W; ++k) xv[k] = 0.f;
    if (y) load_vec<T, W>(y + i, yv);
    else
#pragma unroll
      for (int k = 0; k < W; ++k) yv[k] = unary_f<OP>(xv[k]);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if constexpr (OP == UnaryOp::Silu && std::is_same_v<T, bf16>) {
        const float sg = fast_sigmoidf(xv[k]);
        g[k] *= sg * (1.f + xv[k] * (1.f - sg));
      } else {
        g[k] *= unary_grad_f<OP>(xv[k], yv[k]);
      }
    }
    store_vec<T, W>(dx + i, g);
  });
}

template <BinaryOp OP>
__device__ __forceinline__ float binary_f(float a, float b) {
  if constexpr (OP == BinaryOp::Add) return a + b;
  else if constexpr (OP == BinaryOp::Sub) return a - b;
  else if constexpr (OP == BinaryOp::Mul) return a * b;
  else return a / b;
}

template <class T, int VEC, BinaryOp OP>
__global__ void binary_contig_kernel(const T* a, const T* b, T* out, int64_t n) {
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float av[W], bv[W];
    load_vec<T, W>(a + i, av);
    load_vec<T, W>(b + i, bv);
#pragma unroll
    for (int k = 0; k < W; ++k) av[k] = binary_f<OP>(av[k], bv[k]);
    store_vec<T, W>(out + i, av);
  });
}

// General broadcast/strided operands: L.src_strides are a's strides, L.dst_strides b's (out contiguous).
template <class T, BinaryOp OP>
__global__ void binary_strided_kernel(const T* a, const T* b, T* out, StridedLayout L, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t oa, ob;
    ::natsl::cuda::strided_offsets_of(L, i, n, oa, ob);
    out[i] = from_f32<T>(binary_f<OP>(to_f32(a[oa]), to_f32(b[ob])));
  }
}

template <class T, int VEC>
__global__ void axpby_kernel(float alpha, const T* x, float beta, const T* y, T* out, int64_t n) {
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float xv[W], yv[W];
    load_vec<T, W>(x + i, xv);
    if (beta != 0.f) load_vec<T, W>(y + i, yv);  // beta == 0 never reads y (it may hold garbage)
#pragma unroll
    for (int k = 0; k < W; ++k) xv[k] = alpha * xv[k] + (beta != 0.f ? beta * yv[k] : 0.f);
    store_vec<T, W>(out + i, xv);
  });
}

// out += x rounded to O first (the bits of a cast followed by an add), VEC elements a step: 16-byte pieces of each.
template <class T, int N>
__device__ __forceinline__ void load_pieces(const T* p, float (&f)[N]) {
  constexpr int P = N == 1 ? 1 : int(16 / sizeof(T));
#pragma unroll
  for (int i = 0; i < N; i += P) load_vec<T, P>(p + i, *reinterpret_cast<float(*)[P]>(f + i));
}
template <class X, class O, int VEC>
__global__ void add_into_kernel(const X* __restrict__ x, O* __restrict__ out, int64_t n) {
  for_each_vec<VEC>(n, [&](int64_t i, auto w) {
    constexpr int W = decltype(w)::value;
    float xv[W], ov[W];
    load_pieces<X, W>(x + i, xv);
    load_pieces<O, W>(out + i, ov);
#pragma unroll
    for (int k = 0; k < W; ++k) ov[k] += to_f32(from_f32<O>(xv[k]));
    constexpr int P = W == 1 ? 1 : int(16 / sizeof(O));
#pragma unroll
    for (int k = 0; k < W; k += P) store_vec<O, P>(out + i + k, *reinterpret_cast<const float(*)[P]>(ov + k));
  });
}

constexpr int kThreads = 256;

// Calls fn(std::integral_constant<E, op>) for the runtime op, one of OPS.
template <auto... OPS, class E, class Fn>
void dispatch_op(E op, Fn&& fn) {
  const bool found = ((op == OPS ? (fn(std::integral_constant<E, OPS>{}), true) : false) || ...);
  if (!found) NATSL_FAIL("unknown elementwise op");
}

template <class Fn>
void dispatch_unary(UnaryOp op, Fn&& fn) {
  using enum UnaryOp;
  dispatch_op<Neg, Exp, Log, Silu, Sigmoid, Softplus, Tanh, Sqrt, Square>(op, fn);
}

template <class Fn>
void dispatch_binary(BinaryOp op, Fn&& fn) {
  using enum BinaryOp;
  dispatch_op<Add, Sub, Mul, Div>(op, fn);
}

// Merges adjacent dims that are jointly contiguous in both operands, so the strided kernel does fewer
// divisions per element.
StridedLayout coalesced_layout(const Shape& shape, const Shape& sa, const Shape& sb) {
  StridedLayout L;
  int nd = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (nd > 0 && L.src_strides[nd - 1] == sa[d] * shape[d] && L.dst_strides[nd - 1] == sb[d] * shape[d]) {
      L.shape[nd - 1] *= shape[d];
      L.src_strides[nd - 1] = sa[d];
      L.dst_strides[nd - 1] = sb[d];
      continue;
    }
    NATSL_CHECK(nd < kMaxDims, "binary_fwd: more than ", kMaxDims, " non-mergeable dims");
    L.shape[nd] = shape[d];
    L.src_strides[nd] = sa[d];
    L.dst_strides[nd] = sb[d];
    ++nd;
  }
  L.ndim = nd;
  return L;
}

}  // namespace

void unary_fwd(UnaryOp op, const Tensor& x, const Tensor& y) {
  const auto [n, dev, s] = flat_op(x);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "unary_fwd", T, [&] {
    NATSL_CHECK(y.dtype() == x.dtype(), "unary_fwd: dtypes differ");
    const T* xp = cptr<T>(x);
    T* yp = mptr<T>(y);
    dispatch_unary(op, [&](auto opc) {
      constexpr UnaryOp OP = decltype(opc)::value;
      launch_flat<T>(aligned16(xp) && aligned16(yp), dev, n, kThreads, [&](auto w, int grid) {
        unary_fwd_kernel<T, decltype(w)::value, OP><<<grid, kThreads, 0, s>>>(xp, yp, n);
      });
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void unary_bwd(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const auto [n, dev, s] = flat_op(dx);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(dx.dtype(), "unary_bwd", T, [&] {
    for (const Tensor* t : {&x, &y, &dy})
      if (t->defined()) {
        NATSL_CHECK(t->dtype() == dx.dtype(), "unary_bwd: dtypes differ");
        NATSL_CHECK(t->numel() == n, "unary_bwd: sizes differ");
      }
    const T* xp = x.defined() ? cptr<T>(x) : nullptr;
    const T* yp = y.defined() ? cptr<T>(y) : nullptr;
    const T* gp = cptr<T>(dy);
    T* dp = mptr<T>(dx);
    dispatch_unary(op, [&](auto opc) {
      constexpr UnaryOp OP = decltype(opc)::value;
      const bool vec = aligned16(x) && aligned16(y) && aligned16(gp) && aligned16(dp);
      launch_flat<T>(vec, dev, n, kThreads, [&](auto w, int grid) {
        unary_bwd_kernel<T, decltype(w)::value, OP><<<grid, kThreads, 0, s>>>(xp, yp, gp, dp, n);
      });
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void binary_fwd(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  const auto [n, dev, s] = flat_op(out);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(out.dtype(), "binary_fwd", T, [&] {
    const T* ap = cptr<T>(a);
    const T* bp = cptr<T>(b);
    T* op_ = mptr<T>(out);
    dispatch_binary(op, [&](auto opc) {
      constexpr BinaryOp OP = decltype(opc)::value;
      if (a.is_contiguous() && b.is_contiguous()) {
        launch_flat<T>(aligned16(ap) && aligned16(bp) && aligned16(op_), dev, n, kThreads, [&](auto w, int grid) {
          binary_contig_kernel<T, decltype(w)::value, OP><<<grid, kThreads, 0, s>>>(ap, bp, op_, n);
        });
      } else {
        StridedLayout L = coalesced_layout(out.shape(), a.strides(), b.strides());
        binary_strided_kernel<T, OP><<<grid_for(dev, n, kThreads), kThreads, 0, s>>>(ap, bp, op_, L, n);
      }
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void axpby(double alpha, const Tensor& x, double beta, const Tensor& y, const Tensor& out) {
  const auto [n, dev, s] = flat_op(out);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(out.dtype(), "axpby", T, [&] {
    NATSL_CHECK(x.dtype() == out.dtype() && y.dtype() == out.dtype(), "axpby: dtypes differ");
    launch_flat<T>(aligned16(x) && aligned16(y) && aligned16(out), dev, n, kThreads, [&](auto w, int grid) {
      axpby_kernel<T, decltype(w)::value>
          <<<grid, kThreads, 0, s>>>(float(alpha), cptr<T>(x), float(beta), cptr<T>(y), mptr<T>(out), n);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void add_into(const Tensor& x, const Tensor& out) {
  const auto [n, dev, s] = flat_op(out);
  if (n == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "add_into", X, [&] {
    NATSL_CUDA_DISPATCH_FLOAT(out.dtype(), "add_into", O, [&] {
      constexpr int V = 8;  // one 16-byte vector of bf16, two of f32
      const bool vec = aligned16(x) && aligned16(out);
      const int grid = grid_for(dev, vec ? n / V + 1 : n, kThreads);
      if (vec) add_into_kernel<X, O, V><<<grid, kThreads, 0, s>>>(cptr<X>(x), mptr<O>(out), n);
      else add_into_kernel<X, O, 1><<<grid, kThreads, 0, s>>>(cptr<X>(x), mptr<O>(out), n);
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
