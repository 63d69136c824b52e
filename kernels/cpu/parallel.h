#pragma once
// How the CPU kernels split embarrassingly parallel loops over threads. Iterations [0, n) are run in fixed
// contiguous blocks over the OpenMP threads when the build has OpenMP (one block per thread, schedule
// static), in order otherwise. The body of iteration i must write only outputs that belong to i (and read
// nothing another iteration writes): then every output is computed by the same operations in the same
// order whatever the thread count, and results are bit-identical to the serial loop.
#include <cstdint>

namespace natsl::kernels::cpu {

template <class Body>
void parallel_for(int64_t n, const Body& body) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n > 1)
  for (int64_t i = 0; i < n; ++i) body(i);
#else
  for (int64_t i = 0; i < n; ++i) body(i);
#endif
}

}  // namespace natsl::kernels::cpu
