#pragma once
// The softmax-attention core shared by every attention layer:
//   o[b,t,h,:] = sum_s softmax_s(q[b,t,h,:] . k[b,s,h,:] * scale + mask[t,s]) v[b,s,h,:]
// with mask = 0 for s <= t and a large negative constant for s > t when causal.
// On CUDA the causal case runs the flash-style kernel (causal_attention in autograd/ops_natsl.h, no [T, T]
// scores in memory); elsewhere it is composed from autograd ops (a reference path materialising the scores).
#include "core/tensor.h"

namespace natsl {

// q, k [B, T, H, Dk], v [B, T, H, Dv] -> [B, T, H, Dv]. scale <= 0 means 1 / sqrt(Dk).
Tensor attention_core(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale = 0.0);

// The additive causal mask [T, T]: 0 where s <= t, kMaskedScore where s > t.
constexpr double kMaskedScore = -1e30;
Tensor causal_mask(int64_t T, DType dt, Device d);

}  // namespace natsl
