// quantize_q1_0 against a scalar reference of ggml's Q1_0 semantics: one sign bit per weight (w >= 0 -> +d) and
// d = fp16(mean |w|) per 128 weights of a row, the ragged last group with its own scale.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <sageptq/core/executor.hpp>
#include <sageptq/core/random.hpp>
#include <sageptq/quant/q1_0.hpp>

using namespace sageptq;

namespace {

std::vector<float> random_matrix(std::uint64_t seed, index_t rows, index_t cols) {
  random_generator rng(seed);
  std::vector<float> m(static_cast<std::size_t>(rows * cols));
  for (auto& v : m) v = static_cast<float>(0.05 * rng.student_t(4));
  return m;
}

/// Sign bit of (r, c), read from the packed words: bit c % 32 of word c / 32 of the row.
bool sign_bit(const format::q1_0_matrix& m, index_t r, index_t c) {
  const index_t words_per_row = (m.cols + 127) / 128 * 4;
  return (m.signs[static_cast<std::size_t>(r * words_per_row + c / 32)] >> (c % 32)) & 1u;
}

void check_against_reference(const std::vector<float>& w, index_t rows, index_t cols) {
  CAPTURE(rows);
  CAPTURE(cols);
  const auto got = quant::quantize_q1_0(make_matrix_view(w.data(), rows, cols));
  REQUIRE(got.ok());
  const format::q1_0_matrix& m = *got;
  const index_t groups = (cols + 127) / 128;
  const index_t words_per_row = groups * 4;  // the ragged last group is padded to whole 128-bit blocks
  REQUIRE(m.rows == rows);
  REQUIRE(m.cols == cols);
  REQUIRE(m.signs.size() == static_cast<std::size_t>(rows * words_per_row));
  REQUIRE(m.scales.size() == static_cast<std::size_t>(rows * groups));

  std::vector<float> decoded(w.size(), std::numeric_limits<float>::quiet_NaN());
  format::decode(m.view(), make_matrix_view(decoded.data(), rows, cols));
  for (index_t r = 0; r < rows; ++r) {
    for (index_t g = 0; g < groups; ++g) {
      const index_t c0 = g * 128, c1 = std::min(c0 + 128, cols);
      double sum = 0;
      for (index_t c = c0; c < c1; ++c)
        sum += std::fabs(static_cast<double>(w[static_cast<std::size_t>(r * cols + c)]));
      // The mean is taken over the group's own weights, 128 or fewer; the library rounds it via float.
      const float d = round_to_fp16(static_cast<float>(sum / static_cast<double>(c1 - c0)));
      REQUIRE(m.scales[static_cast<std::size_t>(r * groups + g)].to_float() == d);
      for (index_t c = c0; c < c1; ++c) {
        const float x = w[static_cast<std::size_t>(r * cols + c)];
        const float want = x >= 0 ? d : -d;
        REQUIRE(sign_bit(m, r, c) == (x >= 0));
        REQUIRE(m.view()(r, c) == want);
        REQUIRE(decoded[static_cast<std::size_t>(r * cols + c)] == want);
      }
    }
    for (index_t c = cols; c < words_per_row * 32; ++c) REQUIRE_FALSE(sign_bit(m, r, c));  // padding is zero
  }

  const auto bits = m.bits();
  const std::uint64_t stored_bytes = m.signs.size() * sizeof(std::uint32_t) + m.scales.size() * sizeof(fp16);
  CHECK(bits.full_bits() == 8 * stored_bytes);
  CHECK(bits.weights == static_cast<std::uint64_t>(rows * cols));
  CHECK(bits.sign_bits == static_cast<std::uint64_t>(rows * cols));
  const double want_bpw = static_cast<double>(rows * groups * (128 + 16)) / static_cast<double>(rows * cols);
  CHECK(bits.full_bpw() == doctest::Approx(want_bpw).epsilon(1e-12));
  CHECK(bits.paper_bpw() == 1.0);
}

}  // namespace

TEST_CASE("quantize_q1_0 equals the scalar reference on ragged and whole-group shapes") {
  struct shape {
    index_t rows, cols;
  };
  for (std::uint64_t seed : {1u, 2u, 3u, 4u})
    for (const shape s : {shape{5, 172}, shape{4, 64}, shape{3, 256}, shape{2, 129}, shape{1, 1}, shape{3, 383}})
      check_against_reference(random_matrix(seed * 1000 + static_cast<std::uint64_t>(s.cols), s.rows, s.cols),
                              s.rows, s.cols);
}

TEST_CASE("quantize_q1_0: full bpw of whole and ragged rows") {
  const auto w = random_matrix(9, 2, 172);
  const auto ragged = quant::quantize_q1_0(make_matrix_view(w.data(), 2, 172));
  const auto whole = quant::quantize_q1_0(make_matrix_view(w.data(), 1, 128));
  REQUIRE(ragged.ok());
  REQUIRE(whole.ok());
  CHECK(whole->bits().full_bpw() == 1.125);  // 128 sign bits + 16 scale bits per 128 weights
  CHECK(whole->bits().padding_bits == 0);
  CHECK(ragged->bits().full_bpw() == doctest::Approx(2.0 * 144.0 / 172.0));  // two groups of 144 bits per row
  CHECK(ragged->bits().padding_bits == 2 * (256 - 172));
}

TEST_CASE("quantize_q1_0: sign semantics, zero weights and the ragged group's own scale") {
  std::vector<float> w(130, 1.0f);
  w[0] = 0.0f;     // zero is non-negative: +d
  w[1] = -0.0f;    // negative zero compares equal to zero: +d as well
  w[2] = -3.0f;
  w[128] = -5.0f;  // the last group holds two weights: its scale is their mean, not a mean over 128
  w[129] = 1.0f;
  const auto m = quant::quantize_q1_0(make_matrix_view(w.data(), 1, 130));
  REQUIRE(m.ok());
  const auto v = m->view();
  const float d0 = round_to_fp16(static_cast<float>((3.0 + 125.0) / 128.0));
  CHECK(v(0, 0) == d0);
  CHECK(v(0, 1) == d0);
  CHECK(v(0, 2) == -d0);
  CHECK(v(0, 3) == d0);
  CHECK(v(0, 128) == -3.0f);
  CHECK(v(0, 129) == 3.0f);
  CHECK(m->scales[1].to_float() == 3.0f);

  // For a fixed sign pattern the mean |w| is the L2-optimal scale: nudging it either way costs.
  const auto err = [&](float d) {
    double e = 0;
    for (index_t c = 0; c < 128; ++c) e += std::pow(w[static_cast<std::size_t>(c)] - (v(0, c) >= 0 ? d : -d), 2);
    return e;
  };
  const float mean = (3.0f + 125.0f) / 128.0f;
  CHECK(err(mean) < err(mean * 1.01f));
  CHECK(err(mean) < err(mean * 0.99f));
}

TEST_CASE("quantize_q1_0: identical output for inline_executor and thread_executor(3)") {
  constexpr index_t rows = 41, cols = 300;
  const auto w = random_matrix(17, rows, cols);
  const auto view = make_matrix_view(w.data(), rows, cols);
  const auto a = quant::quantize_q1_0(view, inline_executor{});
  const auto b = quant::quantize_q1_0(view, thread_executor(3));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->signs == b->signs);
  CHECK(a->scales == b->scales);
}

TEST_CASE("quantize_q1_0: bad input gives the right status and no value") {
  auto w = random_matrix(23, 2, 150);
  const auto view = make_matrix_view(w.data(), 2, 150);
  auto expect = [](const result<format::q1_0_matrix>& r, status s) {
    CHECK(r.code() == s);
    CHECK_FALSE(r.has_value());
    CHECK_FALSE(r.message().empty());
  };
  expect(quant::quantize_q1_0(make_matrix_view(w.data(), 0, 150)), status::invalid_shape);
  expect(quant::quantize_q1_0(make_matrix_view(w.data(), 2, 0)), status::invalid_shape);
  w[170] = std::numeric_limits<float>::quiet_NaN();
  expect(quant::quantize_q1_0(view), status::non_finite_input);
  w[170] = std::numeric_limits<float>::infinity();
  expect(quant::quantize_q1_0(view, thread_executor(3)), status::non_finite_input);
  const std::vector<float> huge(200, 1e5f);  // mean |w| beyond fp16's 65504
  expect(quant::quantize_q1_0(make_matrix_view(huge.data(), 1, 200)), status::unsupported);
}
