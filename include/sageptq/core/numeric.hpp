#pragma once
/// @file numeric.hpp
/// fp16 and bf16 storage types with exact, round-to-nearest-even conversions from float, in plain integer
/// arithmetic so host builds need no CUDA header and host and device give the same bits.
/// NaN stays NaN (quiet), overflow rounds to Inf as IEEE 754 requires, subnormals are exact.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../config.hpp"

SAGEPTQ_NAMESPACE_BEGIN

namespace detail {
SAGEPTQ_HOST_DEVICE std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
SAGEPTQ_HOST_DEVICE float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

SAGEPTQ_HOST_DEVICE std::uint16_t float_to_half_bits(float f) noexcept {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t exp = (x >> 23) & 0xffu;
  std::uint32_t mant = x & 0x7fffffu;
  if (exp == 0xffu) return static_cast<std::uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));  // Inf / quiet NaN
  const int e = static_cast<int>(exp) - 127 + 15;  // rebiased exponent
  if (e >= 31) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow before rounding
  if (e <= 0) {
    // Half subnormal (or zero): value = mant_with_hidden * 2^(e-1-10-13); shift right by 14 - e, round to even.
    if (e < -10) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal: rounds to zero
    mant |= 0x800000u;
    const int shift = 14 - e;
    const std::uint32_t halfway = 1u << (shift - 1);
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    std::uint32_t h = mant >> shift;
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;  // may carry into the smallest normal: still correct
    return static_cast<std::uint16_t>(sign | h);
  }
  std::uint32_t h = (static_cast<std::uint32_t>(e) << 10) | (mant >> 13);
  const std::uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry may reach Inf (0x7c00): correct overflow
  return static_cast<std::uint16_t>(sign | h);
}

SAGEPTQ_HOST_DEVICE float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    int e = -1;  // normalise the subnormal
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    return bits_float(sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13));
  }
  return bits_float(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

SAGEPTQ_HOST_DEVICE std::uint16_t float_to_bf16_bits(float f) noexcept {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

SAGEPTQ_HOST_DEVICE float bf16_bits_to_float(std::uint16_t b) noexcept {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}
}  // namespace detail

/// IEEE binary16 storage. Arithmetic happens in float: convert with `to_float()`.
struct fp16 {
  std::uint16_t bits = 0;

  fp16() = default;
  SAGEPTQ_HOST_DEVICE explicit fp16(float f) noexcept : bits(detail::float_to_half_bits(f)) {}
  SAGEPTQ_HOST_DEVICE static fp16 from_bits(std::uint16_t b) noexcept {
    fp16 h;
    h.bits = b;
    return h;
  }
  SAGEPTQ_HOST_DEVICE float to_float() const noexcept { return detail::half_bits_to_float(bits); }
  SAGEPTQ_HOST_DEVICE explicit operator float() const noexcept { return to_float(); }
  friend SAGEPTQ_HOST_DEVICE bool operator==(fp16 a, fp16 b) noexcept { return a.bits == b.bits; }
};

/// bfloat16 storage (the upper half of a float, rounded to nearest even).
struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  SAGEPTQ_HOST_DEVICE explicit bf16(float f) noexcept : bits(detail::float_to_bf16_bits(f)) {}
  SAGEPTQ_HOST_DEVICE static bf16 from_bits(std::uint16_t b) noexcept {
    bf16 h;
    h.bits = b;
    return h;
  }
  SAGEPTQ_HOST_DEVICE float to_float() const noexcept { return detail::bf16_bits_to_float(bits); }
  SAGEPTQ_HOST_DEVICE explicit operator float() const noexcept { return to_float(); }
  friend SAGEPTQ_HOST_DEVICE bool operator==(bf16 a, bf16 b) noexcept { return a.bits == b.bits; }
};

static_assert(sizeof(fp16) == 2 && sizeof(bf16) == 2, "storage types must be 16 bits");

/// Element conversion used by every stage: arithmetic types and the storage types above, to float.
template <class T>
SAGEPTQ_HOST_DEVICE float to_float(const T& v) noexcept {
  if constexpr (requires { v.to_float(); })
    return v.to_float();
  else
    return static_cast<float>(v);
}

/// Round a float to the nearest fp16 value and back (what storing it costs).
SAGEPTQ_HOST_DEVICE float round_to_fp16(float f) noexcept { return fp16(f).to_float(); }
SAGEPTQ_HOST_DEVICE float round_to_bf16(float f) noexcept { return bf16(f).to_float(); }

/// Round to nearest, ties to even (std::nearbyint in the default rounding mode) for |x| < 2^22: adding and
/// subtracting 1.5 · 2^23 vectorizes on every x86-64, where roundps needs SSE4.1. -ffast-math may fold the pair,
/// so such builds call std::nearbyint.
SAGEPTQ_HOST_DEVICE float round_half_even(float x) noexcept {
#if defined(__FAST_MATH__)
  return std::nearbyint(x);
#else
  constexpr float magic = 12582912.0f;  // 1.5 · 2^23
  return (x + magic) - magic;
#endif
}

/// Finite test that does not depend on -ffast-math (bit test, not `x != x`).
SAGEPTQ_HOST_DEVICE bool is_finite(float f) noexcept { return (detail::float_bits(f) & 0x7f800000u) != 0x7f800000u; }

SAGEPTQ_HOST_DEVICE bool is_finite(double d) noexcept {
  std::uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return (u & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

SAGEPTQ_NAMESPACE_END
