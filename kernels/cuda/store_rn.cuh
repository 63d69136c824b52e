#pragma once
// 16-byte stores of f32 values converted with the hardware's round-to-nearest-even instruction (one
// cvt.rn.bf16x2.f32 per pair, sm_80+). Since 2026-11-28 bf16::round_bits uses that instruction on the device
// too (core/dtype.h), so store_vec rounds the same way; these names stay for the kernels that use them.
#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {

__device__ __forceinline__ uint32_t pack_bf16x2_rn(float lo, float hi) { return bf16::round_bits2(lo, hi); }

template <class T, int VEC>
__device__ __forceinline__ void store_vec_rn(T* __restrict__ p, const float (&f)[VEC]) {
  if constexpr (std::is_same_v<T, bf16> && VEC == 8) {
    *reinterpret_cast<uint4*>(p) = make_uint4(pack_bf16x2_rn(f[0], f[1]), pack_bf16x2_rn(f[2], f[3]),
                                              pack_bf16x2_rn(f[4], f[5]), pack_bf16x2_rn(f[6], f[7]));
  } else {
    store_vec<T, VEC>(p, f);
  }
}

// The 16-byte vector at p as floats (p 16-byte aligned).
template <class T, int VEC>
__device__ __forceinline__ void unpack_vec(const uint4& raw, float (&f)[VEC]) {
  load_vec<T, VEC>(reinterpret_cast<const T*>(&raw), f);
}

}  // namespace natsl::kernels::cuda
