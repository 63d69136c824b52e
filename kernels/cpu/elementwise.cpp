// CPU reference for the elementwise family.
#include "core/copy.h"
#include "kernels/cpu/math.h"
#include "kernels/cpu/strided.h"
#include "kernels/elementwise.h"

namespace natsl::kernels::cpu {
namespace {

template <class A>
A unary(UnaryOp op, A x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Silu: return silu(x);
    case UnaryOp::Sigmoid: return sigmoid(x);
    case UnaryOp::Softplus: return softplus(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Square: return x * x;
  }
  return x;
}

// f'(x) given x and y = f(x).
template <class A>
A unary_grad(UnaryOp op, A x, A y) {
  switch (op) {
    case UnaryOp::Neg: return A(-1);
    case UnaryOp::Exp: return y;
    case UnaryOp::Log: return A(1) / x;
    case UnaryOp::Silu: return silu_grad(x);
    case UnaryOp::Sigmoid: return y * (A(1) - y);
    case UnaryOp::Softplus: return x > A(20) ? A(1) : sigmoid(x);
    case UnaryOp::Tanh: return A(1) - y * y;
    case UnaryOp::Sqrt: return A(0.5) / y;
    case UnaryOp::Square: return A(2) * x;
  }
  return A(0);
}

// Calls body with the operation as a function object, so each loop is compiled once per operation with no
// switch per element (the contiguous loops then vectorize).
template <class Body>
void with_binary(BinaryOp op, const Body& body) {
  switch (op) {
    case BinaryOp::Add: return body([](auto a, auto b) { return a + b; });
    case BinaryOp::Sub: return body([](auto a, auto b) { return a - b; });
    case BinaryOp::Mul: return body([](auto a, auto b) { return a * b; });
    case BinaryOp::Div: return body([](auto a, auto b) { return a / b; });
  }
}

}  // namespace

void unary_fwd(UnaryOp op, const Tensor& x, const Tensor& y) {
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    using A = acc_t<T>;
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* yp = y.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) yp[i] = convert<T>(unary(op, convert<A>(xp[i])));
  });
}

void unary_bwd(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) {
  NATSL_DISPATCH_FLOAT(dx.dtype(), T, [&] {
    using A = acc_t<T>;
    const T* xp = x.defined() ? x.data<T>() : nullptr;
    const T* yp = y.defined() ? y.data<T>() : nullptr;
    const T* gp = dy.data<T>();
    T* dp = dx.data<T>();
    for (int64_t i = 0, n = dx.numel(); i < n; ++i) {
      A xv = xp ? convert<A>(xp[i]) : A(0);
      A yv = yp ? convert<A>(yp[i]) : unary(op, xv);
      dp[i] = convert<T>(convert<A>(gp[i]) * unary_grad(op, xv, yv));
    }
  });
}

void binary_fwd(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  NATSL_DISPATCH_FLOAT(out.dtype(), T, [&] {
    using A = acc_t<T>;
    T* op_ = out.data<T>();
    const T* ap = static_cast<const T*>(a.data_ptr());
    const T* bp = static_cast<const T*>(b.data_ptr());
    int64_t n = out.numel();
    if (a.is_contiguous() && b.is_contiguous()) {
      with_binary(op, [&](auto f) {
        for (int64_t i = 0; i < n; ++i) op_[i] = convert<T>(f(convert<A>(ap[i]), convert<A>(bp[i])));
      });
      return;
    }
    // Broadcast / strided operands: index arithmetic once per innermost run.
    int nd = int(out.dim());
    const Shape& sh = out.shape();
    const Shape& sa = a.strides();
    const Shape& sb = b.strides();
    const int64_t run = nd ? sh[nd - 1] : 1;
    const int64_t ia = nd ? sa[nd - 1] : 0, ib = nd ? sb[nd - 1] : 0;
    for (int64_t r = 0; r < n / std::max<int64_t>(run, 1); ++r) {
      const auto [oa, ob] = strided_offsets(r, nd - 1, sh, sa, sb);
      T* o = op_ + r * run;
      const T* ar = ap + oa;
      const T* br = bp + ob;
      with_binary(op, [&](auto f) {
        if (ia == 1 && ib == 1)
          for (int64_t j = 0; j < run; ++j) o[j] = convert<T>(f(convert<A>(ar[j]), convert<A>(br[j])));
        else if (ia == 1 && ib == 0)
          for (int64_t j = 0; j < run; ++j) o[j] = convert<T>(f(convert<A>(ar[j]), convert<A>(br[0])));
        else
          for (int64_t j = 0; j < run; ++j) o[j] = convert<T>(f(convert<A>(ar[j * ia]), convert<A>(br[j * ib])));
      });
    }
  });
}

void axpby(double alpha, const Tensor& x, double beta, const Tensor& y, const Tensor& out) {
  NATSL_DISPATCH_FLOAT(out.dtype(), T, [&] {
    using A = acc_t<T>;
    const T* xp = x.data<T>();
    const T* yp = y.data<T>();
    T* o = out.data<T>();
    A al = A(alpha), be = A(beta);
    for (int64_t i = 0, n = out.numel(); i < n; ++i) {
      A v = al * convert<A>(xp[i]);
      if (beta != 0.0) v += be * convert<A>(yp[i]);
      o[i] = convert<T>(v);
    }
  });
}

void add_into(const Tensor& x, const Tensor& out) {
  NATSL_DISPATCH_FLOAT(x.dtype(), X, [&] {
    NATSL_DISPATCH_FLOAT(out.dtype(), O, [&] {
      using A = acc_t<O>;
      const X* xp = x.data<X>();
      O* o = out.data<O>();
      for (int64_t i = 0, n = out.numel(); i < n; ++i) o[i] = convert<O>(convert<A>(o[i]) + convert<A>(convert<O>(xp[i])));
    });
  });
}

}  // namespace natsl::kernels::cpu
