#pragma once
// Element types. bf16 is stored as its 16 raw bits (same layout as CUDA's __nv_bfloat16); conversion from
// float rounds to nearest even, as the hardware does, so CPU and GPU casts agree bit for bit.
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "core/error.h"

#if defined(__CUDACC__)
#define NATSL_HD __host__ __device__ __forceinline__
#else
#define NATSL_HD inline
#endif

namespace natsl {

enum class DType : uint8_t { f32, bf16, f64, i32, i64, u8 };

// The 4 bytes of v as a To (float <-> uint32_t): the bit-move intrinsics on the device, memcpy on the host.
template <class To, class From>
NATSL_HD To bit_cast4(From v) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "bit_cast4 moves 4 bytes");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<To, float>) return __uint_as_float(v);
  else return __float_as_uint(v);
#else
  To r;
  std::memcpy(&r, &v, 4);
  return r;
#endif
}

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  NATSL_HD static bf16 from_bits(uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }
  NATSL_HD explicit bf16(float f) : bits(round_bits(f)) {}
  NATSL_HD explicit operator float() const { return bit_cast4<float>(uint32_t(bits) << 16); }
  NATSL_HD static uint16_t round_bits(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // The hardware conversion (one instruction; the integer sequence below costs ~8): the same round to
    // nearest even for every number; a NaN becomes the canonical NaN instead of keeping its payload.
    uint16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
#else
    uint32_t u = bit_cast4<uint32_t>(f);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return uint16_t((u >> 16) | 0x40);  // NaN
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb;
    return uint16_t(u >> 16);
#endif
  }
  // Two floats rounded as round_bits does, packed: lo in bits 0-15, hi in bits 16-31.
  NATSL_HD static uint32_t round_bits2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return uint32_t(round_bits(lo)) | (uint32_t(round_bits(hi)) << 16);
#endif
  }
};

// Bytes per element and name of each dtype, in the order of the enum.
struct DTypeInfo {
  size_t size;
  std::string_view name;
};
inline constexpr DTypeInfo kDTypeInfo[] = {{4, "f32"}, {2, "bf16"}, {8, "f64"}, {4, "i32"}, {8, "i64"}, {1, "u8"}};
inline constexpr size_t kNumDTypes = sizeof(kDTypeInfo) / sizeof(kDTypeInfo[0]);
static_assert(kNumDTypes == size_t(DType::u8) + 1, "kDTypeInfo must list every dtype");

inline size_t dtype_size(DType t) { return size_t(t) < kNumDTypes ? kDTypeInfo[size_t(t)].size : 0; }
inline std::string_view dtype_name(DType t) { return size_t(t) < kNumDTypes ? kDTypeInfo[size_t(t)].name : "?"; }

inline bool is_floating(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f64; }

// The C++ type of a dtype and back.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <class T> inline constexpr DType dtype_v = dtype_of<T>::value;

// Scalar conversion used by casts and by generic code: float-like types go through float/double.
template <class To, class From>
NATSL_HD To convert(From v) {
  if constexpr (std::is_same_v<To, bf16>) return bf16(float(v));
  else if constexpr (std::is_same_v<From, bf16>) return To(float(v));
  else return static_cast<To>(v);
}

}  // namespace natsl

// The dispatch cases that bind T to the C++ type of each floating dtype (f32, f64, bf16), then of each integer
// dtype (i32, i64, u8), and return the body's result.
#define NATSL_DISPATCH_FLOAT_CASES_(T, ...)                                                 \
  case ::natsl::DType::f32: { using T = float; return __VA_ARGS__(); }                     \
  case ::natsl::DType::f64: { using T = double; return __VA_ARGS__(); }                    \
  case ::natsl::DType::bf16: { using T = ::natsl::bf16; return __VA_ARGS__(); }
#define NATSL_DISPATCH_INT_CASES_(T, ...)                                                   \
  case ::natsl::DType::i32: { using T = int32_t; return __VA_ARGS__(); }                   \
  case ::natsl::DType::i64: { using T = int64_t; return __VA_ARGS__(); }                   \
  case ::natsl::DType::u8: { using T = uint8_t; return __VA_ARGS__(); }

// NATSL_DISPATCH_FLOAT(dtype, T, ...): runs the body with T bound to the C++ type of a floating dtype.
#define NATSL_DISPATCH_FLOAT(DT, T, ...)                                                     \
  [&] {                                                                                      \
    switch (DT) {                                                                            \
      NATSL_DISPATCH_FLOAT_CASES_(T, __VA_ARGS__)                                            \
      default: NATSL_FAIL("expected a floating dtype, got ", ::natsl::dtype_name(DT));       \
    }                                                                                        \
  }()

#define NATSL_DISPATCH_ALL(DT, T, ...)                                                       \
  [&] {                                                                                      \
    switch (DT) {                                                                            \
      NATSL_DISPATCH_FLOAT_CASES_(T, __VA_ARGS__)                                            \
      NATSL_DISPATCH_INT_CASES_(T, __VA_ARGS__)                                              \
    }                                                                                        \
    NATSL_FAIL("bad dtype");                                                                 \
  }()
