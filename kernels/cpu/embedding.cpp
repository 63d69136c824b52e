// CPU reference for the embedding lookup and its scatter-add backward.
#include <algorithm>
#include <vector>

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

// Each id's rows summed from zero in ascending position (rounded to dweight's type at each step), then added into its
// dweight row once: a zero dweight gets the sums' bits, any other one the sums' followed by a separate add.
void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight) {
  const int64_t V = dweight.size(0), D = dweight.size(1);
  std::vector<int64_t> id = load_ids(ids, V, "embedding_bwd");
  // The positions of each id in ascending order: first[v] heads a chain through next[].
  std::vector<int64_t> first(size_t(V), -1), last(size_t(V), -1), next(id.size(), -1);
  for (size_t i = 0; i < id.size(); ++i) {
    const size_t v = size_t(id[i]);
    if (last[v] < 0) first[v] = int64_t(i);
    else next[size_t(last[v])] = int64_t(i);
    last[v] = int64_t(i);
  }
  NATSL_DISPATCH_FLOAT(dout.dtype(), T, [&] {
    NATSL_DISPATCH_FLOAT(dweight.dtype(), W, [&] {
      using A = acc_t<W>;
      const T* g = dout.data<T>();
      W* dw = dweight.data<W>();
      std::vector<W> sum(size_t(D), W(0));
      for (int64_t v = 0; v < V; ++v) {
        if (first[size_t(v)] < 0) continue;
        std::fill(sum.begin(), sum.end(), W(0));
        for (int64_t i = first[size_t(v)]; i >= 0; i = next[size_t(i)])
          for (int64_t d = 0; d < D; ++d) sum[size_t(d)] = convert<W>(convert<A>(sum[size_t(d)]) + convert<A>(g[i * D + d]));
        for (int64_t d = 0; d < D; ++d) dw[v * D + d] = convert<W>(convert<A>(dw[v * D + d]) + convert<A>(sum[size_t(d)]));
      }
    });
  });
}

}  // namespace natsl::kernels::cpu
