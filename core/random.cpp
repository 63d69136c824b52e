#include "core/copy.h"
#include "core/philox.h"
#include "core/tensor.h"

namespace natsl {

#ifdef NATSL_WITH_CUDA
namespace cuda {
void philox_fill(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t offset, int kind, double a, double b,
                 int device);
}
#endif

namespace {
// kind: 0 uniform in [a, b), 1 normal(a, b), 2 raw bits
void fill_random(Tensor& t, Generator& g, int kind, double a, double b) {
  NATSL_CHECK(t.is_contiguous(), "random fill needs a contiguous tensor");
  NATSL_CHECK(kind == 2 ? t.dtype() == DType::i32 : is_floating(t.dtype()), "random fill: bad dtype ",
              dtype_name(t.dtype()));
  int64_t n = t.numel();
  uint64_t words = kind == 1 ? uint64_t(n + 1) / 2 * 2 : uint64_t(n);
  uint64_t off = g.reserve(words);
  if (t.device().is_cuda()) {
#ifdef NATSL_WITH_CUDA
    cuda::philox_fill(t.data_ptr(), t.dtype(), n, g.seed, off, kind, a, b, t.device().index);
#endif
    return;
  }
  if (kind == 2) {
    auto* d = t.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) d[i] = int32_t(philox_word(g.seed, off + i));
    return;
  }
  NATSL_DISPATCH_FLOAT(t.dtype(), T, [&] {
    T* d = static_cast<T*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) {
      double v = kind == 0 ? a + (b - a) * double(philox_uniform(g.seed, off + i))
                           : a + b * double(philox_normal(g.seed, off, uint64_t(i)));
      d[i] = convert<T>(v);
    }
  });
}
}  // namespace

void uniform_(Tensor& t, Generator& g, double lo, double hi) { fill_random(t, g, 0, lo, hi); }
void normal_(Tensor& t, Generator& g, double mean, double std) { fill_random(t, g, 1, mean, std); }
void random_bits_(Tensor& t, Generator& g) { fill_random(t, g, 2, 0, 0); }

}  // namespace natsl
