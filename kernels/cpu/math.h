#pragma once
// Scalar formulas shared by the CPU reference kernels (templated so tests run them in f64).
#include <cmath>
#include <type_traits>

#include "core/dtype.h"

namespace natsl::kernels::cpu {

template <class T> T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
// log(1 + e^x); returns x above 20 as FLA and PyTorch do (the difference is below 2e-9).
template <class T> T softplus(T x) { return x > T(20) ? x : std::log1p(std::exp(x)); }
template <class T> T silu(T x) { return x * sigmoid(x); }
// d silu / dx = s (1 + x (1 - s))
template <class T> T silu_grad(T x) {
  T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// Compute type of a storage type: bf16 computes in float.
template <class T> struct acc_type { using type = T; };
template <> struct acc_type<bf16> { using type = float; };
template <class T> using acc_t = typename acc_type<T>::type;

}  // namespace natsl::kernels::cpu

namespace natsl::kernels::cpu {

// Storage type of the statistics kept for data of type T: f64 for f64 data, else f32 (kernels/nn.h).
template <class T> using stat_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace natsl::kernels::cpu
