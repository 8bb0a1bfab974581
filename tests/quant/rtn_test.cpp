// quantize_rtn against a scalar reference written here from the documented semantics (format/rtn.hpp,
// quant/uniform_grid.hpp), with its own bit-stream reader, on fresh seeded matrices of ragged shapes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <sageptq/core/executor.hpp>
#include <sageptq/core/random.hpp>
#include <sageptq/quant/rtn.hpp>

using namespace sageptq;

namespace {

std::vector<float> random_matrix(std::uint64_t seed, index_t rows, index_t cols) {
  random_generator rng(seed);
  std::vector<float> m(static_cast<std::size_t>(rows * cols));
  for (auto& v : m) v = static_cast<float>(0.05 * rng.student_t(4));  // heavy tails, as LLM weights
  return m;
}

/// What the quantizer must produce, computed group by group with plain loops.
struct reference_rtn {
  index_t groups_per_row = 0;
  std::vector<std::uint32_t> codes;  // one per weight, row-major
  std::vector<float> scales;         // one per group
  std::vector<std::uint32_t> zeros;  // one per group (asymmetric only)
  std::vector<float> values;         // dequantized, row-major
};

reference_rtn reference(const std::vector<float>& w, index_t rows, index_t cols, const quant::rtn_config& cfg) {
  const index_t g = cfg.group_size == 0 ? cols : std::min(cfg.group_size, cols);
  const float maxq = static_cast<float>((1u << cfg.bits) - 1u);
  reference_rtn ref;
  ref.groups_per_row = (cols + g - 1) / g;
  ref.codes.resize(w.size());
  ref.values.resize(w.size());
  for (index_t r = 0; r < rows; ++r) {
    for (index_t c0 = 0; c0 < cols; c0 += g) {
      const index_t c1 = std::min(c0 + g, cols);
      float lo = 0, hi = 0;  // the range always includes zero
      for (index_t c = c0; c < c1; ++c) {
        lo = std::min(lo, w[static_cast<std::size_t>(r * cols + c)]);
        hi = std::max(hi, w[static_cast<std::size_t>(r * cols + c)]);
      }
      float scale, zero;
      if (cfg.symmetric) {
        scale = round_to_fp16(std::max(-lo, hi) / (maxq / 2));
        zero = maxq / 2;
      } else {
        scale = round_to_fp16((hi - lo) / maxq);
        zero = scale > 0 ? std::min(std::max(std::nearbyint(-lo / scale), 0.0f), maxq) : 0.0f;
        ref.zeros.push_back(static_cast<std::uint32_t>(zero));
      }
      ref.scales.push_back(scale);
      for (index_t c = c0; c < c1; ++c) {
        const auto i = static_cast<std::size_t>(r * cols + c);
        float q = scale > 0 ? std::nearbyint(w[i] / scale + zero) : std::floor(zero);
        q = std::min(std::max(q, 0.0f), maxq);
        ref.codes[i] = static_cast<std::uint32_t>(q);
        ref.values[i] = scale * (q - zero);
      }
    }
  }
  return ref;
}

/// Code c of row r, read bit by bit from the packed words (independent of format::read_code).
std::uint32_t code_at(const format::rtn_matrix& m, index_t r, index_t c) {
  const index_t words_per_row = (m.cols * m.layout.bits + 31) / 32;
  std::uint32_t code = 0;
  for (int k = 0; k < m.layout.bits; ++k) {
    const index_t bit = c * m.layout.bits + k;
    const std::uint32_t word = m.codes[static_cast<std::size_t>(r * words_per_row + bit / 32)];
    code |= ((word >> (bit % 32)) & 1u) << k;
  }
  return code;
}

void check_against_reference(const std::vector<float>& w, index_t rows, index_t cols, const quant::rtn_config& cfg) {
  CAPTURE(rows);
  CAPTURE(cols);
  CAPTURE(cfg.bits);
  CAPTURE(cfg.group_size);
  CAPTURE(cfg.symmetric);
  const auto view = make_matrix_view(w.data(), rows, cols);
  const auto got = quant::quantize_rtn(view, cfg);
  REQUIRE(got.ok());
  const format::rtn_matrix& m = *got;
  const reference_rtn ref = reference(w, rows, cols, cfg);

  // Shapes and stored arrays.
  const index_t words_per_row = (cols * cfg.bits + 31) / 32;
  REQUIRE(m.rows == rows);
  REQUIRE(m.cols == cols);
  REQUIRE(m.layout.bits == cfg.bits);
  REQUIRE(m.layout.symmetric == cfg.symmetric);
  REQUIRE(m.codes.size() == static_cast<std::size_t>(rows * words_per_row));
  REQUIRE(m.scales.size() == static_cast<std::size_t>(rows * ref.groups_per_row));
  REQUIRE(m.zeros.size() == (cfg.symmetric ? 0 : m.scales.size()));

  for (std::size_t i = 0; i < ref.scales.size(); ++i) REQUIRE(m.scales[i].to_float() == ref.scales[i]);
  for (std::size_t i = 0; i < ref.zeros.size(); ++i) REQUIRE(m.zeros[i] == ref.zeros[i]);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t c = 0; c < cols; ++c) REQUIRE(code_at(m, r, c) == ref.codes[static_cast<std::size_t>(r * cols + c)]);
    // Padding after the last code of a row is stored as zeros.
    for (index_t bit = cols * cfg.bits; bit < words_per_row * 32; ++bit)
      REQUIRE(((m.codes[static_cast<std::size_t>(r * words_per_row + bit / 32)] >> (bit % 32)) & 1u) == 0);
  }

  // Decoding reproduces the quantizer's values exactly, through the view and through decode().
  const auto packed = m.view();
  std::vector<float> decoded(w.size(), std::numeric_limits<float>::quiet_NaN());
  format::decode(packed, make_matrix_view(decoded.data(), rows, cols));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const auto i = static_cast<std::size_t>(r * cols + c);
      REQUIRE(packed(r, c) == ref.values[i]);
      REQUIRE(decoded[i] == ref.values[i]);
    }

  // Every stored bit counts: full bits are the bytes of all arrays, and the formula of the layout.
  const auto bits = m.bits();
  const std::uint64_t stored_bytes = m.codes.size() * sizeof(std::uint32_t) + m.scales.size() * sizeof(fp16) +
                                     m.zeros.size() * sizeof(std::uint8_t);
  CHECK(bits.full_bits() == 8 * stored_bytes);
  CHECK(bits.weights == static_cast<std::uint64_t>(rows * cols));
  const double per_group_bits = 16.0 + (cfg.symmetric ? 0.0 : 8.0);
  const double want_bpw = (32.0 * static_cast<double>(rows * words_per_row) +
                           per_group_bits * static_cast<double>(rows * ref.groups_per_row)) /
                          static_cast<double>(rows * cols);
  CHECK(bits.full_bpw() == doctest::Approx(want_bpw).epsilon(1e-12));
  CHECK(bits.paper_bpw() == cfg.bits);
  CHECK(bits.full_bpw() >= cfg.bits);
}

}  // namespace

TEST_CASE("quantize_rtn equals the scalar reference: 1..8 bits, sym/asym, ragged groups and shapes") {
  struct shape {
    index_t rows, cols;
  };
  for (std::uint64_t seed : {11u, 12u, 13u}) {
    for (const shape s : {shape{4, 172}, shape{3, 64}, shape{1, 1}, shape{2, 33}}) {
      const auto w = random_matrix(seed * 100 + static_cast<std::uint64_t>(s.cols), s.rows, s.cols);
      for (int bits = 1; bits <= 8; ++bits)
        for (bool symmetric : {false, true})
          for (index_t group : {index_t{0}, index_t{32}, index_t{50}, index_t{64}, index_t{128}, index_t{1000}})
            check_against_reference(w, s.rows, s.cols, {bits, group, symmetric});
    }
  }
}

TEST_CASE("quantize_rtn: per-channel group_size 0 stores one scale per row") {
  const auto w = random_matrix(5, 6, 172);
  const auto m = quant::quantize_rtn(make_matrix_view(w.data(), 6, 172), {4, 0, false});
  REQUIRE(m.ok());
  CHECK(m->scales.size() == 6);
  CHECK(m->layout.group_size == 172);
  const auto big = quant::quantize_rtn(make_matrix_view(w.data(), 6, 172), {4, 4096, false});
  REQUIRE(big.ok());
  CHECK(big->codes == m->codes);  // a group longer than the row is the whole row
  CHECK(big->scales == m->scales);
}

TEST_CASE("quantize_rtn: |w - q| <= scale / 2 inside the grid's range") {
  for (std::uint64_t seed : {21u, 22u}) {
    constexpr index_t rows = 8, cols = 172;
    const auto w = random_matrix(seed, rows, cols);
    for (int bits : {2, 3, 4, 8})
      for (bool symmetric : {false, true}) {
        const quant::rtn_config cfg{bits, 64, symmetric};
        const auto m = quant::quantize_rtn(make_matrix_view(w.data(), rows, cols), cfg);
        REQUIRE(m.ok());
        const auto packed = m->view();
        const index_t groups = packed.layout.groups_per_row(cols);
        const float maxq = static_cast<float>((1u << bits) - 1u);
        index_t inside = 0;
        for (index_t r = 0; r < rows; ++r)
          for (index_t c = 0; c < cols; ++c) {
            const auto g = static_cast<std::size_t>(r * groups + c / packed.layout.group_size);
            const float scale = m->scales[g].to_float();
            const float zero = symmetric ? 0.5f * maxq : m->zeros[g];
            const float x = w[static_cast<std::size_t>(r * cols + c)];
            // Outside the grid's range (rounding the zero point shifts it by up to scale / 2) codes are clamped.
            if (x < scale * (0.0f - zero) || x > scale * (maxq - zero)) continue;
            ++inside;
            REQUIRE(std::fabs(x - packed(r, c)) <= 0.5f * scale * (1.0f + 1e-5f));
          }
        CHECK(inside > rows * cols * 9 / 10);  // the bound is checked on almost every weight
      }
  }
}

TEST_CASE("quantize_rtn: zero and constant groups") {
  const std::vector<float> w = {0, 0, 0, 0, 0.5f, 0.5f, 0.5f, 0.5f, -0.25f, -0.25f, -0.25f, -0.25f};
  for (bool symmetric : {false, true}) {
    const auto m = quant::quantize_rtn(make_matrix_view(w.data(), 1, 12), {3, 4, symmetric});
    REQUIRE(m.ok());
    const auto packed = m->view();
    for (index_t c = 0; c < 4; ++c) CHECK(packed(0, c) == 0.0f);  // an all-zero group decodes to zero
    if (!symmetric) {                                               // the asymmetric grid hits both ends exactly
      for (index_t c = 4; c < 8; ++c) CHECK(packed(0, c) == doctest::Approx(0.5).epsilon(1e-3));
      for (index_t c = 8; c < 12; ++c) CHECK(packed(0, c) == doctest::Approx(-0.25).epsilon(1e-3));
    }
  }
}

TEST_CASE("quantize_rtn: ties round to even, as torch.round") {
  // lo = -1, hi = 2, 2 bits: scale 1, zero 1, levels -1, 0, 1, 2; w / scale + zero lands exactly on .5 below.
  const std::vector<float> w = {-1.0f, 2.0f, -0.5f, 0.5f, 1.5f};
  const auto m = quant::quantize_rtn(make_matrix_view(w.data(), 1, 5), {2, 0, false});
  REQUIRE(m.ok());
  REQUIRE(m->scales[0].to_float() == 1.0f);
  REQUIRE(m->zeros[0] == 1);
  const auto v = m->view();
  CHECK(v(0, 2) == -1.0f);  // 0.5 -> code 0
  CHECK(v(0, 3) == 1.0f);   // 1.5 -> code 2
  CHECK(v(0, 4) == 1.0f);   // 2.5 -> code 2
}

TEST_CASE("quantize_rtn: identical output for inline_executor and thread_executor(3)") {
  constexpr index_t rows = 37, cols = 172;
  const auto w = random_matrix(31, rows, cols);
  const auto view = make_matrix_view(w.data(), rows, cols);
  for (const quant::rtn_config cfg : {quant::rtn_config{4, 64, false}, quant::rtn_config{3, 50, true}}) {
    const auto a = quant::quantize_rtn(view, cfg, inline_executor{});
    const auto b = quant::quantize_rtn(view, cfg, thread_executor(3));
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->codes == b->codes);
    CHECK(a->scales == b->scales);
    CHECK(a->zeros == b->zeros);
  }
}

TEST_CASE("quantize_rtn: bad input gives the right status and no value") {
  std::vector<float> w = random_matrix(41, 3, 70);
  const auto view = make_matrix_view(w.data(), 3, 70);
  auto expect = [](const result<format::rtn_matrix>& r, status s) {
    CHECK(r.code() == s);
    CHECK_FALSE(r.has_value());
    CHECK_FALSE(r.message().empty());
  };
  expect(quant::quantize_rtn(view, {0, 64, false}), status::invalid_argument);
  expect(quant::quantize_rtn(view, {9, 64, false}), status::invalid_argument);
  expect(quant::quantize_rtn(view, {4, -1, false}), status::invalid_argument);
  expect(quant::quantize_rtn(make_matrix_view(w.data(), 0, 70), {}), status::invalid_shape);
  expect(quant::quantize_rtn(make_matrix_view(w.data(), 3, 0), {}), status::invalid_shape);

  w[100] = std::numeric_limits<float>::quiet_NaN();
  expect(quant::quantize_rtn(view, {}), status::non_finite_input);
  w[100] = -std::numeric_limits<float>::infinity();
  expect(quant::quantize_rtn(view, {}, thread_executor(3)), status::non_finite_input);

  // Finite weights whose scale does not fit fp16 (max 65504).
  std::vector<float> huge(64, 1e6f);
  huge[0] = -1e6f;
  expect(quant::quantize_rtn(make_matrix_view(huge.data(), 1, 64), {1, 64, false}), status::unsupported);
  expect(quant::quantize_rtn(make_matrix_view(huge.data(), 1, 64), {2, 64, true}), status::unsupported);
}
