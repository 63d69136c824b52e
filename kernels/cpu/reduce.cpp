// CPU reference reductions: accumulate in double for every input dtype (exact enough to serve as the
// reference for the f32/bf16 GPU kernels).
#include <vector>

#include "kernels/cpu/math.h"
#include "kernels/cpu/strided.h"
#include "kernels/reduce.h"

namespace natsl::kernels::cpu {

void sum_dims(const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out) {
  // out has x's rank (keepdim); walk every element of x and add into its out slot.
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    NATSL_CHECK(out.dtype() == x.dtype(), "sum_dims: dtype mismatch");
    const T* xp = static_cast<const T*>(x.data_ptr());
    int nd = int(x.dim());
    const Shape& sh = x.shape();
    const Shape& st = x.strides();
    Shape ost = out.strides();
    for (int64_t k : dims) ost[k] = 0;
    std::vector<double> acc(size_t(out.numel()), 0.0);
    for (int64_t i = 0, n = x.numel(); i < n; ++i) {
      const auto [xo, oo] = strided_offsets(i, nd, sh, st, ost);
      acc[size_t(oo)] += double(convert<acc_t<T>>(xp[xo]));
    }
    T* op = out.data<T>();
    for (size_t i = 0; i < acc.size(); ++i) op[i] = convert<T>(acc[i]);
  });
}

void sum_squares(const Tensor& x, const Tensor& out) {
  double acc = 0;
  NATSL_DISPATCH_FLOAT(x.dtype(), T, [&] {
    const T* xp = x.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) {
      double v = double(convert<acc_t<T>>(xp[i]));
      acc += v * v;
    }
  });
  out.fill_(acc);
}

}  // namespace natsl::kernels::cpu
