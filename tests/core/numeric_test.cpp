// fp16 / bf16 conversions against independent references: exhaustive over all 16-bit patterns, and float -> 16-bit
// over a large sample of float bit patterns plus every rounding tie.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>

#include <sageptq/core/numeric.hpp>

using namespace sageptq;

namespace {

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

/// An IEEE binary format with `precision` significant bits and smallest normal exponent `min_exp`, described by
/// arithmetic on doubles (no bit tricks), so it checks the library's integer code independently.
struct binary_format {
  int precision;
  int min_exp;
  double max_finite;

  /// Value of a bit pattern with `mant_bits` = precision - 1 stored mantissa bits.
  [[nodiscard]] double decode(std::uint32_t bits, int exp_bits) const {
    const int mant_bits = precision - 1;
    const std::uint32_t mant = bits & ((1u << mant_bits) - 1u);
    const std::uint32_t exp = (bits >> mant_bits) & ((1u << exp_bits) - 1u);
    const double sign = (bits >> (mant_bits + exp_bits)) & 1u ? -1.0 : 1.0;
    if (exp == (1u << exp_bits) - 1u) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
    if (exp == 0) return sign * std::ldexp(static_cast<double>(mant), min_exp - mant_bits);
    const int bias = 1 - min_exp;
    return sign * std::ldexp(static_cast<double>(mant + (1u << mant_bits)), static_cast<int>(exp) - bias - mant_bits);
  }

  /// Round a finite double to the nearest representable value, ties to even; overflow gives +-Inf.
  [[nodiscard]] double round(double x) const {
    const double a = std::fabs(x);
    if (a == 0) return x;
    int e;
    std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): the leading bit has weight 2^(e-1)
    const double quantum = std::ldexp(1.0, std::max(e - 1, min_exp) - (precision - 1));
    const double r = std::nearbyint(a / quantum) * quantum;  // a / quantum is exact; nearbyint ties to even
    return std::copysign(r > max_finite ? INFINITY : r, x);
  }
};

const binary_format half_format{11, -14, 65504.0};
const binary_format bf16_format{8, -126, std::ldexp(255.0, 120)};

/// Compares the library's float -> 16-bit conversion of `f` with the reference; returns false on mismatch.
bool matches(float f, std::uint16_t got, const binary_format& fmt, int exp_bits) {
  const double got_value = fmt.decode(got, exp_bits);
  if (std::isnan(f)) {  // NaN stays NaN, quiet, same sign
    const int mant_bits = fmt.precision - 1;
    return std::isnan(got_value) && ((got >> (mant_bits - 1)) & 1u) && ((got >> 15) == (float_to_bits(f) >> 31));
  }
  const double want = fmt.round(static_cast<double>(f));
  return got_value == want && std::signbit(got_value) == std::signbit(want);
}

/// Every float that is exactly halfway between two neighbouring 16-bit values (and its float neighbours).
template <class Check>
void for_each_tie(const binary_format& fmt, int exp_bits, Check&& check) {
  const std::uint32_t finite_patterns = ((1u << exp_bits) - 1u) << (fmt.precision - 1);
  for (std::uint32_t b = 0; b < finite_patterns; ++b) {
    const double mid = 0.5 * (fmt.decode(b, exp_bits) + fmt.decode(b + 1, exp_bits));  // b + 1 may be +Inf: skip
    if (!std::isfinite(mid) && b + 1 == finite_patterns) {
      const double last = fmt.decode(b, exp_bits);  // the overflow threshold: halfway to the next power of two
      const double threshold = last + 0.5 * (last - fmt.decode(b - 1, exp_bits));
      for (double sign : {1.0, -1.0}) check(static_cast<float>(sign * threshold));
      continue;
    }
    const float f = static_cast<float>(mid);
    REQUIRE(static_cast<double>(f) == mid);  // halfway points are floats: 16-bit formats have < 24 bits
    for (float sign : {1.0f, -1.0f})
      for (float g : {f, std::nextafter(f, 0.0f), std::nextafter(f, INFINITY)}) check(sign * g);
  }
}

}  // namespace

TEST_CASE("fp16: every bit pattern converts to the exact float and back") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = fp16::from_bits(static_cast<std::uint16_t>(b));
    const float f = h.to_float();
    const double want = half_format.decode(b, 5);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(f));
      const fp16 back(f);
      REQUIRE(std::isnan(back.to_float()));
      REQUIRE((back.bits & 0x0200u) != 0);  // quiet
      REQUIRE((back.bits & 0x8000u) == (b & 0x8000u));
      continue;
    }
    REQUIRE(static_cast<double>(f) == want);
    REQUIRE(std::signbit(f) == ((b & 0x8000u) != 0));
    REQUIRE(fp16(f).bits == b);
    REQUIRE(round_to_fp16(f) == f);
    REQUIRE(static_cast<float>(h) == f);
  }
}

TEST_CASE("fp16: float -> half rounds to nearest even on a sample of float bit patterns") {
  int checked = 0;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 1021) {
    const float f = bits_to_float(static_cast<std::uint32_t>(u));
    const std::uint16_t got = fp16(f).bits;
    if (!matches(f, got, half_format, 5)) {
      FAIL_CHECK("float bits " << u << " -> half bits " << got);
      break;
    }
    ++checked;
  }
  CHECK(checked > 4000000);
}

TEST_CASE("fp16: every halfway tie, the overflow threshold, subnormals and specials") {
  int mismatches = 0;
  for_each_tie(half_format, 5, [&](float f) {
    if (!matches(f, fp16(f).bits, half_format, 5) && mismatches++ < 5) FAIL_CHECK("tie " << f);
  });
  CHECK(mismatches == 0);

  CHECK(fp16(65504.0f).bits == 0x7bffu);
  CHECK(fp16(65519.99f).bits == 0x7bffu);
  CHECK(fp16(65520.0f).bits == 0x7c00u);  // the tie goes to the even neighbour, which is Inf
  CHECK(fp16(-1e30f).bits == 0xfc00u);
  CHECK(fp16(INFINITY).bits == 0x7c00u);
  CHECK(fp16(-INFINITY).bits == 0xfc00u);
  CHECK(fp16(0.0f).bits == 0x0000u);
  CHECK(fp16(-0.0f).bits == 0x8000u);
  CHECK(fp16(std::ldexp(1.0f, -24)).bits == 0x0001u);          // smallest subnormal
  CHECK(fp16(std::ldexp(1.0f, -25)).bits == 0x0000u);          // tie with zero: even is zero
  CHECK(fp16(std::ldexp(1.5f, -25)).bits == 0x0001u);
  CHECK(fp16(std::ldexp(3.0f, -25)).bits == 0x0002u);          // 1.5 quanta: tie, rounds to even 2
  CHECK(fp16(std::ldexp(1023.5f, -24)).bits == 0x0400u);       // rounds up into the smallest normal
  CHECK(fp16(std::numeric_limits<float>::denorm_min()).bits == 0x0000u);
  CHECK(fp16(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00u);   // tie: 1.0 is even
  CHECK(fp16(1.0f + std::ldexp(3.0f, -11)).bits == 0x3c02u);   // tie: rounds up to even
  const fp16 nan(std::numeric_limits<float>::quiet_NaN());
  CHECK(std::isnan(nan.to_float()));
  const fp16 snan(bits_to_float(0x7f800001u));  // signalling NaN whose payload lives only in the low bits
  CHECK(std::isnan(snan.to_float()));
  CHECK(fp16(2.5f) == fp16::from_bits(0x4100u));
}

#ifdef __FLT16_MAX__
TEST_CASE("fp16: agrees with the compiler's _Float16") {
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 4099) {
    const float f = bits_to_float(static_cast<std::uint32_t>(u));
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    std::uint16_t want;
    std::memcpy(&want, &h, sizeof want);
    REQUIRE(fp16(f).bits == want);
  }
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    _Float16 h;
    std::memcpy(&h, &bits, sizeof h);
    const float want = static_cast<float>(h);
    if (!std::isnan(want)) REQUIRE(float_to_bits(fp16::from_bits(bits).to_float()) == float_to_bits(want));
  }
}
#endif

TEST_CASE("bf16: every bit pattern converts to the exact float and back") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16::from_bits(static_cast<std::uint16_t>(b)).to_float();
    const double want = bf16_format.decode(b, 8);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(f));
      const bf16 back(f);
      REQUIRE(std::isnan(back.to_float()));
      REQUIRE((back.bits & 0x0040u) != 0);
      REQUIRE((back.bits & 0x8000u) == (b & 0x8000u));
      continue;
    }
    REQUIRE(static_cast<double>(f) == want);
    REQUIRE(float_to_bits(f) == b << 16);
    REQUIRE(bf16(f).bits == b);
    REQUIRE(round_to_bf16(f) == f);
  }
}

TEST_CASE("bf16: float -> bf16 rounds to nearest even on a sample, every tie, and specials") {
  int checked = 0;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 1021) {
    const float f = bits_to_float(static_cast<std::uint32_t>(u));
    const std::uint16_t got = bf16(f).bits;
    if (!matches(f, got, bf16_format, 8)) {
      FAIL_CHECK("float bits " << u << " -> bf16 bits " << got);
      break;
    }
    ++checked;
  }
  CHECK(checked > 4000000);

  int mismatches = 0;
  for_each_tie(bf16_format, 8, [&](float f) {
    if (!matches(f, bf16(f).bits, bf16_format, 8) && mismatches++ < 5) FAIL_CHECK("tie " << f);
  });
  CHECK(mismatches == 0);

  CHECK(bf16(std::numeric_limits<float>::max()).bits == 0x7f80u);  // rounds up past the largest bf16
  CHECK(bf16(INFINITY).bits == 0x7f80u);
  CHECK(bf16(-0.0f).bits == 0x8000u);
  CHECK(bf16(bits_to_float(0x00008000u)).bits == 0x0000u);  // subnormal tie: even is zero
  CHECK(bf16(bits_to_float(0x00018000u)).bits == 0x0002u);  // subnormal tie: rounds up to even
  CHECK(std::isnan(bf16(bits_to_float(0x7f800001u)).to_float()));  // payload only in the dropped bits: still NaN
  CHECK(std::isnan(bf16(bits_to_float(0xffc00000u)).to_float()));
}

TEST_CASE("to_float and is_finite") {
  CHECK(to_float(fp16(1.5f)) == 1.5f);
  CHECK(to_float(bf16(-2.0f)) == -2.0f);
  CHECK(to_float(3) == 3.0f);
  CHECK(to_float(0.25) == 0.25f);
  CHECK(is_finite(1.0f));
  CHECK(is_finite(std::numeric_limits<float>::max()));
  CHECK(is_finite(std::numeric_limits<float>::denorm_min()));
  CHECK_FALSE(is_finite(INFINITY));
  CHECK_FALSE(is_finite(-INFINITY));
  CHECK_FALSE(is_finite(std::numeric_limits<float>::quiet_NaN()));
  CHECK(is_finite(1e300));
  CHECK_FALSE(is_finite(std::numeric_limits<double>::infinity()));
  CHECK_FALSE(is_finite(-std::numeric_limits<double>::quiet_NaN()));
}
