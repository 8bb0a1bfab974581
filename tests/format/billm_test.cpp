// format::billm: decode against a plain reading of the layout, exact bit accounting (full = bytes stored x 8,
// paper-style as BiLLM counts), ragged last blocks.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <sageptq/core/random.hpp>
#include <sageptq/format/billm.hpp>

using namespace sageptq;

namespace {

/// A billm_matrix with random bits, random fp16 scales and `salient` random salient columns.
format::billm_matrix random_matrix(index_t rows, index_t cols, index_t block, index_t salient, std::uint64_t seed) {
  random_generator rng(seed);
  auto m = format::billm_matrix::zeros(rows, cols, block);
  for (auto c : sample_without_replacement(rng, static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(salient)))
    m.salient[c / 32] |= 1u << (c % 32);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {  // only logical columns: padding stays zero
      const auto word = static_cast<std::size_t>(r * m.view().words_per_row() + c / 32);
      m.signs[word] |= static_cast<std::uint32_t>(rng.below(2)) << (c % 32);
      m.second[word] |= static_cast<std::uint32_t>(rng.below(2)) << (c % 32);
    }
  for (auto& s : m.scales) s = fp16(static_cast<float>(rng.uniform() - 0.3));
  return m;
}

bool bit(const std::vector<std::uint32_t>& words, std::size_t row_offset, index_t c) {
  return (words[row_offset + static_cast<std::size_t>(c / 32)] >> (c % 32)) & 1u;
}

}  // namespace

TEST_CASE("billm decode follows the layout: salient t1 + t2, groups one term, ragged last block") {
  static_assert(std::is_trivially_copyable_v<format::billm_view<>>);
  for (const index_t cols : {128, 300, 44}) {
    for (const index_t block : {128, 64}) {
      CAPTURE(cols);
      CAPTURE(block);
      const index_t rows = 5, blocks = (cols + block - 1) / block, words = blocks * block / 32;
      const auto m = random_matrix(rows, cols, block, cols / 8, 11 + static_cast<std::uint64_t>(cols + block));
      REQUIRE(std::ssize(m.salient) == words);
      REQUIRE(std::ssize(m.signs) == rows * words);
      REQUIRE(std::ssize(m.scales) == rows * blocks * 8);
      std::vector<float> out(static_cast<std::size_t>(rows * cols));
      format::decode(m.view(), make_matrix_view(out.data(), rows, cols));
      for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c) {
          const auto row = static_cast<std::size_t>(r * words);
          const fp16* s = m.scales.data() + (r * blocks + c / block) * 8;
          const auto term = [&](bool positive, int pair) {
            const float alpha = s[2 * pair + 1].to_float(), mu = s[2 * pair].to_float();
            return (positive ? alpha : -alpha) + mu;
          };
          float expected;
          if (bit(m.salient, 0, c)) {
            const float t1 = term(bit(m.signs, row, c), 2);
            expected = t1 + term(bit(m.second, row, c), 3);
          } else {
            expected = term(bit(m.signs, row, c), bit(m.second, row, c) ? 1 : 0);
          }
          const float got = out[static_cast<std::size_t>(r * cols + c)];
          REQUIRE(std::memcmp(&got, &expected, sizeof got) == 0);
        }
    }
  }
}

TEST_CASE("billm bits: full = bytes stored x 8, split by purpose; paper = signs + salient second plane + bitmap") {
  for (const index_t cols : {512, 300, 44}) {
    CAPTURE(cols);
    const index_t rows = 7, k = cols / 10;
    const auto m = random_matrix(rows, cols, 128, k, 3);
    CHECK(m.salient_columns() == k);
    const format::bit_breakdown b = m.bits();
    const std::uint64_t stored_bytes = (m.salient.size() + m.signs.size() + m.second.size()) * sizeof(std::uint32_t) +
                                       m.scales.size() * sizeof(fp16);
    CHECK(b.full_bits() == 8 * stored_bytes);
    const auto r = static_cast<std::uint64_t>(rows), c = static_cast<std::uint64_t>(cols),
               ks = static_cast<std::uint64_t>(k), blocks = (c + 127) / 128;
    CHECK(b.weights == r * c);
    CHECK(b.sign_bits == r * c + r * ks);
    CHECK(b.group_id_bits == r * (c - ks));
    CHECK(b.salient_position_bits == c);
    CHECK(b.scale_bits == r * blocks * 8 * 16);
    CHECK(b.padding_bits == (2 * r + 1) * (blocks * 128 - c));
    CHECK(b.paper_bits == r * c + r * ks + c);
  }
  const auto m = random_matrix(512, 512, 128, 64, 5);
  CHECK(m.bits().full_bpw() == doctest::Approx(2.0 + 1.0 / 512 + 1.0));  // two planes, bitmap, 8 fp16 per 128
}
