#pragma once
// Custom initialisers of the decay parameters of Gated DeltaNet / Mamba-style layers (FLA's GatedDeltaNet,
// docs/gdn-algorithm.md §1.1), for ParamInit::with(...).
#include "layers/module.h"

namespace natsl {

// A ~ U(lo, hi) elementwise, A_log = ln A (FLA: lo 0, hi 16).
CustomInit a_log_init(double lo = 0.0, double hi = 16.0);

// dt = exp(U(ln dt_min, ln dt_max)), clamped to >= dt_floor; dt_bias = dt + ln(-expm1(-dt)), the inverse
// of softplus, so softplus(dt_bias) = dt (FLA: 1e-3, 0.1, 1e-4).
CustomInit dt_bias_init(double dt_min = 1e-3, double dt_max = 0.1, double dt_floor = 1e-4);

}  // namespace natsl
