#pragma once
// The last step of the CPU references' weight gradients (rmsnorm's dw, the short conv's dw): the reduced sums, one
// double per entry in the reference's order, written into dw (kernels/nn.h, weight_grad_writes: the data's dtype, or
// f32 for bf16 data). With `accumulate` each sum is rounded to dw's dtype and then added into what dw holds in its
// compute type, as the elementwise add does: the bits of the plain gradient followed by AccumulateGrad's add. The sums
// may also be of a narrower compute type (float: the output mixing's f32 and bf16 references), each converted once.
#include <cstddef>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/math.h"

namespace natsl::kernels::cpu {

template <class Sum>
inline void store_weight_grad(const std::vector<Sum>& sums, const Tensor& dw, bool accumulate) {
  NATSL_CHECK(size_t(dw.numel()) == sums.size(), "store_weight_grad: ", sums.size(), " sums for ", dw.str());
  NATSL_DISPATCH_FLOAT(dw.dtype(), W, [&] {
    using A = acc_t<W>;
    W* p = dw.data<W>();
    for (size_t i = 0; i < sums.size(); ++i) {
      W g = convert<W>(sums[i]);
      if (!accumulate) {
        p[i] = g;
        continue;
      }
      // g as its own rounded value (no FMA contraction reaches into the add below).
      asm("" : "+m"(g));
      p[i] = convert<W>(convert<A>(p[i]) + convert<A>(g));
    }
  });
}

}  // namespace natsl::kernels::cpu
