// CPU reference for the embedding lookup and its scatter-add backward.
#include "kernels/cpu/index.h"
#include "kernels/cpu/math.h"
#include "kernels/nn.h"

namespace natsl::kernels::cpu {

void embedding_fwd(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  const int64_t V = weight.size(0), D = weight.size(1);
  std::vector<int64_t> id = load_ids(ids, V, "embedding");
  NATSL_DISPATCH_FLOAT(weight.dtype(), T, [&] {
    const T* w = weight.data<T>();
    T* o = out.data<T>();
    for (size_t i = 0; i < id.size(); ++i)
      for (int64_t d = 0; d < D; ++d) o[int64_t(i) * D + d] = w[id[i] * D + d];
  });
}

void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight) {
  const int64_t V = dweight.size(0), D = dweight.size(1);
  std::vector<int64_t> id = load_ids(ids, V, "embedding_bwd");
  NATSL_DISPATCH_FLOAT(dweight.dtype(), T, [&] {
    using A = acc_t<T>;
    const T* g = dout.data<T>();
    T* dw = dweight.data<T>();
    for (size_t i = 0; i < id.size(); ++i)
      for (int64_t d = 0; d < D; ++d) {
        T& slot = dw[id[i] * D + d];
        slot = convert<T>(convert<A>(slot) + convert<A>(g[int64_t(i) * D + d]));
      }
  });
}

}  // namespace natsl::kernels::cpu
