// format/sparse.hpp and format/septq.hpp: CSR encoding of kept weights against the mask it came from, the overlay
// decode, exact bit accounting, and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <sageptq/core/random.hpp>
#include <sageptq/format/septq.hpp>
#include <sageptq/format/sparse.hpp>

using namespace sageptq;

namespace {

struct masked_values {
  std::vector<std::uint8_t> mask;
  std::vector<float> values;
};

/// Random mask of about `density` with whole empty rows (every third row), random values.
masked_values random_masked(std::uint64_t seed, index_t rows, index_t cols, double density) {
  random_generator rng(seed);
  masked_values m{std::vector<std::uint8_t>(static_cast<std::size_t>(rows * cols)),
                  std::vector<float>(static_cast<std::size_t>(rows * cols))};
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const auto i = static_cast<std::size_t>(r * cols + c);
      m.mask[i] = r % 3 != 1 && rng.uniform() < density;
      m.values[i] = static_cast<float>(rng.normal());
    }
  return m;
}

std::uint64_t stored_bytes(const format::sparse_matrix& s) {
  return s.row_offsets.size() * sizeof(std::uint32_t) + s.columns.size() * sizeof(std::uint16_t) +
         s.values.size() * sizeof(fp16);
}

}  // namespace

TEST_CASE("encode_sparse stores exactly the masked entries, in row order, rounded to fp16") {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    const index_t rows = 23, cols = 77 + static_cast<index_t>(seed);
    const masked_values m = random_masked(seed, rows, cols, 0.1);
    auto s = format::encode_sparse(rows, cols, m.mask, m.values);
    REQUIRE(s.ok());
    const auto v = s->view();
    index_t expected_kept = 0, mismatches = 0;
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) {
        const auto i = static_cast<std::size_t>(r * cols + c);
        const index_t k = v.find(r, c);
        if (!m.mask[i]) {
          mismatches += k != -1;
          continue;
        }
        ++expected_kept;
        mismatches += k < 0 || v.values[k].bits != fp16(m.values[i]).bits;
      }
    CHECK(mismatches == 0);
    CHECK(s->kept() == expected_kept);
    CHECK(s->row_offsets.front() == 0);
    CHECK(s->row_offsets.back() == static_cast<std::uint32_t>(expected_kept));
    for (index_t r = 0; r < rows; ++r)
      for (auto k = s->row_offsets[static_cast<std::size_t>(r)] + 1; k < s->row_offsets[static_cast<std::size_t>(r + 1)];
           ++k)
        CHECK(s->columns[k - 1] < s->columns[k]);

    // overlay replaces exactly the kept entries.
    std::vector<float> out(static_cast<std::size_t>(rows * cols), -7.0f);
    format::overlay(v, make_matrix_view(out.data(), rows, cols));
    for (std::size_t i = 0; i < out.size(); ++i)
      mismatches += out[i] != (m.mask[i] ? round_to_fp16(m.values[i]) : -7.0f);
    CHECK(mismatches == 0);
  }
}

TEST_CASE("sparse bits are the stored bytes, split into positions and values") {
  const masked_values m = random_masked(9, 40, 300, 0.01);
  auto s = format::encode_sparse(40, 300, m.mask, m.values);
  REQUIRE(s.ok());
  const format::bit_breakdown b = s->bits();
  CHECK(b.full_bits() == 8 * stored_bytes(*s));
  CHECK(b.weights == 40u * 300u);
  CHECK(b.salient_position_bits == 32u * 41u + 16u * static_cast<std::uint64_t>(s->kept()));
  CHECK(b.salient_value_bits == 16u * static_cast<std::uint64_t>(s->kept()));
  CHECK(b.paper_bits == 0);
}

TEST_CASE("septq_matrix decodes dense codes overridden by kept values and counts both parts once per weight") {
  const index_t rows = 9, cols = 70;
  format::rtn_matrix dense;
  dense.rows = rows;
  dense.cols = cols;
  dense.layout = {3, cols, false};
  dense.codes.assign(static_cast<std::size_t>(rows * dense.layout.words_per_row(cols)), 0u);
  random_generator rng(5);
  for (index_t r = 0; r < rows; ++r) {
    dense.scales.push_back(fp16(0.01f * static_cast<float>(r + 1)));
    dense.zeros.push_back(static_cast<std::uint8_t>(r % 8));
    for (index_t c = 0; c < cols; ++c)
      format::write_code(dense.codes.data() + r * dense.layout.words_per_row(cols), c, 3,
                         static_cast<std::uint32_t>(rng.below(8)));
  }
  const masked_values m = random_masked(6, rows, cols, 0.05);
  auto kept = format::encode_sparse(rows, cols, m.mask, m.values);
  REQUIRE(kept.ok());
  const format::septq_matrix packed{dense, std::move(kept).value()};

  std::vector<float> out(static_cast<std::size_t>(rows * cols));
  format::decode(packed.view(), make_matrix_view(out.data(), rows, cols));
  int mismatches = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const auto i = static_cast<std::size_t>(r * cols + c);
      const float expected = m.mask[i] ? round_to_fp16(m.values[i]) : dense.view()(r, c);
      mismatches += out[i] != expected || packed.view()(r, c) != expected;
    }
  CHECK(mismatches == 0);

  const format::bit_breakdown b = packed.bits();
  CHECK(b.weights == static_cast<std::uint64_t>(rows * cols));
  CHECK(b.full_bits() == dense.bits().full_bits() + packed.kept.bits().full_bits());
  CHECK(b.code_bits == static_cast<std::uint64_t>(rows * cols * 3));  // codes under kept weights still count
  CHECK(b.paper_bits == b.code_bits);
}

TEST_CASE("encode_sparse rejects bad input with a clear status") {
  const std::vector<std::uint8_t> mask{1, 0, 0, 1};
  const std::vector<float> values{1.0f, 2.0f, 3.0f, 4.0f};
  CHECK(format::encode_sparse(2, 3, mask, values).code() == status::invalid_shape);
  CHECK(format::encode_sparse(0, 4, mask, values).code() == status::invalid_shape);

  std::vector<float> bad = values;
  bad[2] = std::numeric_limits<float>::quiet_NaN();  // not kept: ignored
  CHECK(format::encode_sparse(2, 2, mask, bad).ok());
  bad[3] = std::numeric_limits<float>::infinity();
  const auto inf = format::encode_sparse(2, 2, mask, bad);
  CHECK(inf.code() == status::non_finite_input);
  CHECK(inf.message().find("(1, 1)") != std::string::npos);
  bad[3] = 1e6f;  // finite, beyond fp16
  CHECK(format::encode_sparse(2, 2, mask, bad).code() == status::unsupported);

  const index_t wide = format::sparse_matrix::max_cols + 1;
  const std::vector<std::uint8_t> wide_mask(static_cast<std::size_t>(wide), 0);
  const std::vector<float> wide_values(static_cast<std::size_t>(wide), 0.0f);
  CHECK(format::encode_sparse(1, wide, wide_mask, wide_values).code() == status::unsupported);
  CHECK(format::encode_sparse(1, wide - 1, std::span(wide_mask).first(static_cast<std::size_t>(wide - 1)),
                              std::span(wide_values).first(static_cast<std::size_t>(wide - 1)))
            .ok());
}
