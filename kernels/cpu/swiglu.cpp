// CPU reference for swiglu: y = silu(gate) up;  dgate = dy up silu'(gate),  dup = dy silu(gate).
#include "kernels/cpu/math.h"
#include "kernels/nn.h"

namespace natsl::kernels::cpu {

void swiglu_fwd(const Tensor& gate, const Tensor& up, const Tensor& y) {
  NATSL_DISPATCH_FLOAT(gate.dtype(), T, [&] {
    using A = acc_t<T>;
    const T* g = gate.data<T>();
    const T* u = up.data<T>();
    T* yp = y.data<T>();
    for (int64_t i = 0, n = y.numel(); i < n; ++i) yp[i] = convert<T>(silu(convert<A>(g[i])) * convert<A>(u[i]));
  });
}

void swiglu_bwd(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup) {
  NATSL_DISPATCH_FLOAT(gate.dtype(), T, [&] {
    using A = acc_t<T>;
    const T* g = gate.data<T>();
    const T* u = up.data<T>();
    const T* d = dy.data<T>();
    T* dg = dgate.data<T>();
    T* du = dup.data<T>();
    for (int64_t i = 0, n = dy.numel(); i < n; ++i) {
      A gv = convert<A>(g[i]), uv = convert<A>(u[i]), dv = convert<A>(d[i]);
      dg[i] = convert<T>(dv * uv * silu_grad(gv));
      du[i] = convert<T>(dv * silu(gv));
    }
  });
}

}  // namespace natsl::kernels::cpu
