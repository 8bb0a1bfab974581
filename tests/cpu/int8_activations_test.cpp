// Int8 activation blocks (cpu/int8_activations.hpp): the documented rounding bound, the symmetric range, the block
// maximum on the grid's end, zero blocks, the offsets d * sum q, and determinism, on fresh random inputs with
// outliers and sign changes.

#include "sageptq/cpu/int8_activations.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "sageptq/core/random.hpp"
#include "sageptq/cpu/gemv.hpp"

namespace sp = sageptq;
using sp::index_t;

TEST_CASE("cpu int8 activations: |x - d q| <= d (1/2 + 2^-12), |q| <= 127, the block max maps to +-127") {
  sp::random_generator rng(71);
  const index_t batch = 3, cols = 5 * sp::cpu::int8_block, stride = cols + 7;
  std::vector<float> x(static_cast<std::size_t>(batch * stride));
  for (auto& v : x) v = static_cast<float>((2.0 * rng.uniform() - 1.0) * (rng.below(50) == 0 ? 300.0 : 1.0));
  for (index_t j = 256; j < 512; ++j) x[static_cast<std::size_t>(stride + j)] = 0;  // a zero block of either width
  x[static_cast<std::size_t>(7)] = -1e-30f;  // tiny values: no overflow of 127 / max, no division by zero

  // 128-column blocks (q1_0) and 256-column ones (sage), whose last block here is 128 wide
  for (const index_t width : {sp::cpu::int8_block, sp::cpu::int8_wide_block}) {
    CAPTURE(width);
    const auto a = sp::cpu::quantize_int8(x.data(), batch, cols, stride, sp::cpu::quantize_block, width);
    REQUIRE(a.blocks() == (cols + width - 1) / width);
    for (index_t b = 0; b < batch; ++b)
      for (index_t block = 0; block < a.blocks(); ++block) {
        CAPTURE(b);
        CAPTURE(block);
        const float d = a.scale(b, block);
        float max = 0;
        std::int32_t sum = 0, max_q = 0;
        for (index_t j = block * width; j < std::min(cols, (block + 1) * width); ++j) {
          const float v = x[static_cast<std::size_t>(b * stride + j)];
          const std::int32_t q = a.row(b)[j];
          max = std::max(max, std::fabs(v));
          CHECK(std::abs(q) <= 127);
          CHECK(std::fabs(static_cast<double>(v) - static_cast<double>(d) * q) <= d * sp::cpu::int8_rounding);
          sum += q;
          max_q = std::max(max_q, std::abs(q));
        }
        CHECK(d == max / 127.0f);
        CHECK(max_q == (max > 0 ? 127 : 0));
        CHECK(a.offsets[static_cast<std::size_t>(b * a.blocks() + block)] == d * static_cast<float>(sum));
      }
    CHECK(a.scale(1, 256 / width) == 0.0f);  // the zero block

    const auto again = sp::cpu::quantize_int8(x.data(), batch, cols, stride, sp::cpu::quantize_block, width);
    CHECK(again.q == a.q);
    CHECK(again.scales == a.scales);
  }
}

TEST_CASE("cpu int8 activations: the AVX-512 block quantizer is bit-identical to the scalar one") {
  if (!sp::cpu::supported(sp::cpu::isa::avx512_vnni)) {
    MESSAGE("this CPU lacks AVX-512 VNNI: nothing to compare");
    return;
  }
  sp::random_generator rng(72);
  const index_t cols = 9 * sp::cpu::int8_block;
  std::vector<float> x(static_cast<std::size_t>(2 * cols));
  for (auto& v : x)
    v = static_cast<float>((2.0 * rng.uniform() - 1.0) * std::ldexp(1.0, static_cast<int>(rng.below(40)) - 20));
  for (index_t j = 0; j < 2 * sp::cpu::int8_block; ++j)  // cols 256..511: a flushed block of either width
    x[static_cast<std::size_t>(2 * sp::cpu::int8_block + j)] = 0x1p-110f;
  // Block 5 has max 127, so q = round(x): halves test round-half-even.
  for (index_t j = 0; j < sp::cpu::int8_block; ++j)
    x[static_cast<std::size_t>(5 * sp::cpu::int8_block + j)] = j == 0 ? 127.0f : 0.5f * static_cast<float>(j % 40 - 20);
  for (const index_t width : {sp::cpu::int8_block, sp::cpu::int8_wide_block}) {
    CAPTURE(width);
    const auto scalar = sp::cpu::quantize_int8(x.data(), 2, cols, cols, sp::cpu::quantize_block, width);
    const auto simd = sp::cpu::quantize_int8(x.data(), 2, cols, cols, sp::cpu::detail::vnni_quantizer, width);
    CHECK(simd.q == scalar.q);
    CHECK(simd.scales == scalar.scales);
    CHECK(simd.offsets == scalar.offsets);
    CHECK(scalar.scale(0, 256 / width) == 0.0f);  // flushed
  }
  const auto scalar = sp::cpu::quantize_int8(x.data(), 2, cols, cols);
  CHECK(scalar.row(0)[5 * sp::cpu::int8_block + 5] == -8);  // -7.5 -> -8
  CHECK(scalar.row(0)[5 * sp::cpu::int8_block + 7] == -6);  // -6.5 -> -6
}
