#pragma once
// Rotary position embedding, rotate-half convention (LLaMA / GPT-NeoX, FLA's default non-interleaved):
// with D even, inv_freq_i = theta^(-2i/D) for i < D/2, angle(t, j) = t * inv_freq_{j mod D/2},
//   y = x * cos(angle) + rotate_half(x) * sin(angle),  rotate_half(x) = concat(-x[D/2:], x[:D/2]).
#include <utility>

#include "core/tensor.h"

namespace natsl {

// x [B, T, H, D] (positions 0..T-1 shifted by `offset`) -> same shape.
Tensor apply_rope(const Tensor& x, double theta, int64_t offset = 0);
// The same with precomputed tables (rope_tables of x's T, D, dtype and device).
Tensor apply_rope(const Tensor& x, const Tensor& cos, const Tensor& sin);

// cos and sin tables [T, 1, D] (broadcast over heads), in dtype dt on device d.
std::pair<Tensor, Tensor> rope_tables(int64_t T, int64_t D, double theta, int64_t offset, DType dt, Device d);

}  // namespace natsl
