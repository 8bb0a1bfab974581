// The SAGE packed format: builder -> decode against a plain reading of the spec, serialize/deserialize round trips,
// strict validation of malformed bytes, exact bit accounting, golden bytes, ragged shapes, determinism, and the
// contract that decode(builder output) reproduces the quantizers' floats bit for bit.

#include "sageptq/format/sage.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sageptq/core/random.hpp"
#include "sageptq/quant/binarize.hpp"
#include "sageptq/quant/residual.hpp"

#include "support/same_bits.hpp"

namespace sp = sageptq;
using sp::index_t;
using sp::format::sage_group_mode;
using sp::format::sage_scale_mode;

namespace {

struct case_spec {
  index_t rows = 8, cols = 172;
  int salient = 2, groups = 3, planes = 1, salient_bits = 4;
  sage_group_mode group_mode = sage_group_mode::column;
  sage_scale_mode scale_mode = sage_scale_mode::factorized;
  bool mean = false, symmetric = false, kept = false, word_rows = false;
  std::uint64_t seed = 1;
};

/// A random packed matrix filled through the builder, and the values a plain reading of the spec gives.
struct built_case {
  sp::format::sage_matrix matrix;
  std::vector<float> expected;  // rows x cols, source column order
};

float random_scale(sp::random_generator& rng) { return sp::round_to_fp16(static_cast<float>(0.01 + rng.uniform())); }

built_case build_case(const case_spec& cs) {
  sp::random_generator rng(cs.seed);
  sp::format::sage_spec spec;
  spec.rows = cs.rows;
  spec.cols = cs.cols;
  for (auto c :
       sp::sample_without_replacement(rng, static_cast<std::uint64_t>(cs.cols), static_cast<std::uint64_t>(cs.salient)))
    spec.salient_columns.push_back(static_cast<index_t>(c));
  if (cs.salient > 1) std::swap(spec.salient_columns.front(), spec.salient_columns.back());  // unsorted tail order
  spec.salient_bits = cs.salient_bits;
  spec.salient_symmetric = cs.symmetric;
  spec.planes = cs.planes;
  spec.groups = cs.groups;
  spec.group_mode = cs.group_mode;
  spec.scale_mode = cs.scale_mode;
  spec.with_mean = cs.mean;
  spec.word_rows = cs.word_rows;
  for (index_t c = 0; c < cs.cols; ++c)
    spec.column_group.push_back(static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(cs.groups))));
  if (cs.kept) {
    spec.orig_rows = cs.rows + 3;
    spec.orig_cols = cs.cols + 5;
    for (index_t r = 0; r < cs.rows; ++r) spec.kept_rows.push_back(static_cast<std::uint32_t>(r + (r > 2 ? 3 : 0)));
    for (index_t c = 0; c < cs.cols; ++c) spec.kept_cols.push_back(static_cast<std::uint32_t>(c + (c > 9 ? 5 : 0)));
  }
  auto created = sp::format::sage_builder::create(spec);
  REQUIRE_MESSAGE(created.ok(), created.message());
  auto& b = *created;

  const auto rows = static_cast<std::size_t>(cs.rows), cols = static_cast<std::size_t>(cs.cols);
  const auto planes = static_cast<std::size_t>(cs.planes), groups = static_cast<std::size_t>(cs.groups);
  std::vector<char> salient(cols, 0);
  for (auto c : spec.salient_columns) salient[static_cast<std::size_t>(c)] = 1;

  std::vector<std::size_t> group(rows * cols);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      const bool by_weight = cs.group_mode == sage_group_mode::weight;
      group[r * cols + c] = by_weight ? rng.below(groups) : static_cast<std::size_t>(spec.column_group[c]);
      if (by_weight && !salient[c])
        b.set_weight_group(static_cast<index_t>(r), static_cast<index_t>(c), static_cast<int>(group[r * cols + c]));
    }
  std::vector<char> positive(planes * rows * cols);
  for (auto& s : positive) s = static_cast<char>(rng.below(2));
  for (std::size_t p = 0; p < planes; ++p)
    b.set_signs(static_cast<int>(p), [&](index_t r, index_t c) {
      return positive[(p * rows + static_cast<std::size_t>(r)) * cols + static_cast<std::size_t>(c)] != 0;
    });

  std::vector<float> alpha(planes * rows), beta(planes * groups), table(planes * rows * groups),
      mean(table.size(), 0.0f);
  for (std::size_t p = 0; p < planes; ++p) {
    if (cs.scale_mode == sage_scale_mode::factorized) {
      for (std::size_t r = 0; r < rows; ++r)
        b.set_row_scale(static_cast<int>(p), static_cast<index_t>(r), alpha[p * rows + r] = random_scale(rng));
      for (std::size_t g = 0; g < groups; ++g)
        b.set_group_scale(static_cast<int>(p), static_cast<int>(g), beta[p * groups + g] = random_scale(rng));
    } else {
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
          const std::size_t at = (p * rows + r) * groups + g;
          table[at] = random_scale(rng);
          if (cs.mean) mean[at] = sp::round_to_fp16(static_cast<float>(rng.uniform() - 0.5));
          b.set_table_scale(static_cast<int>(p), static_cast<index_t>(r), static_cast<int>(g), table[at], mean[at]);
        }
    }
  }
  const std::uint32_t max_code = (1u << cs.salient_bits) - 1u;
  std::vector<sp::quant::uniform_grid> grids(rows);
  std::vector<std::uint32_t> codes(rows * cols, 0);
  if (cs.salient > 0)
    for (std::size_t r = 0; r < rows; ++r) {
      auto& grid = grids[r];
      grid.max_code = max_code;
      grid.scale = random_scale(rng);
      grid.zero = cs.symmetric ? 0.5f * static_cast<float>(max_code) : static_cast<float>(rng.below(max_code + 1));
      b.set_salient_grid(static_cast<index_t>(r), grid);
      for (auto c : spec.salient_columns) {
        const auto code = static_cast<std::uint32_t>(rng.below(max_code + 1));
        codes[r * cols + static_cast<std::size_t>(c)] = code;
        b.set_salient_code(static_cast<index_t>(r), c, code);
      }
    }
  auto finished = std::move(b).finish();
  REQUIRE_MESSAGE(finished.ok(), finished.message());

  // The spec's decode formula, read plainly (docs/format.md section 5).
  std::vector<float> expected(rows * cols);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      if (salient[c]) {
        expected[r * cols + c] = grids[r].scale * (static_cast<float>(codes[r * cols + c]) - grids[r].zero);
        continue;
      }
      const std::size_t g = group[r * cols + c];
      float value = 0;
      for (std::size_t p = 0; p < planes; ++p) {
        float a = cs.scale_mode == sage_scale_mode::factorized ? alpha[p * rows + r] * beta[p * groups + g]
                                                               : table[(p * rows + r) * groups + g];
        if (!positive[(p * rows + r) * cols + c]) a = -a;
        if (cs.mean) a = a + mean[(p * rows + r) * groups + g];
        value = p == 0 ? a : value + a;
      }
      expected[r * cols + c] = value;
    }
  return {std::move(*finished), std::move(expected)};
}

std::vector<float> decoded(const sp::format::sage_matrix& m) {
  std::vector<float> out(static_cast<std::size_t>(m.shape.rows) * m.shape.cols, -12345.0f);  // poisoned
  sp::format::decode(m.view(), sp::make_matrix_view(out.data(), m.shape.rows, m.shape.cols));
  return out;
}

using sageptq_test::same_bits;

std::vector<case_spec> variety() {
  std::vector<case_spec> cases;
  const index_t shapes[][2] = {{8, 172}, {5, 64}, {13, 33}, {3, 1}, {1, 129}, {7, 300}};
  std::uint64_t seed = 100;
  for (const auto& shape : shapes)
    for (int variant = 0; variant < 6; ++variant) {
      case_spec cs;
      cs.rows = shape[0];
      cs.cols = shape[1];
      cs.seed = ++seed;
      cs.salient = shape[1] == 1 ? variant % 2 : static_cast<int>(seed % 4);
      cs.groups = 1 + static_cast<int>(seed % 5);
      cs.planes = 1 + variant % 3;
      cs.salient_bits = 1 + static_cast<int>(seed % 8);
      cs.symmetric = variant % 2 == 1;
      cs.group_mode = variant >= 4 ? sage_group_mode::weight : sage_group_mode::column;
      cs.scale_mode = variant % 4 >= 2 ? sage_scale_mode::table : sage_scale_mode::factorized;
      cs.mean = variant == 3 || variant == 5;
      if (cs.mean) cs.scale_mode = sage_scale_mode::table;
      cs.kept = variant == 2;
      cs.word_rows = seed % 3 == 0;
      cases.push_back(cs);
      if (variant == 0) {  // one group and no salient columns: the builder stores no permutation
        cs.salient = 0;
        cs.groups = 1;
        cs.seed = ++seed;
        cases.push_back(cs);
      }
    }
  return cases;
}

}  // namespace

TEST_CASE("sage: decode of the builder output matches the spec's formula, for every mode and ragged shapes") {
  for (const auto& cs : variety()) {
    CAPTURE(cs.rows);
    CAPTURE(cs.cols);
    CAPTURE(cs.seed);
    const built_case bc = build_case(cs);
    CHECK(same_bits(decoded(bc.matrix), bc.expected));
  }
}

TEST_CASE("sage: serialize -> deserialize round trips bit for bit, and the size equals full_bits") {
  for (const auto& cs : variety()) {
    CAPTURE(cs.seed);
    const built_case bc = build_case(cs);
    const auto bytes = sp::format::serialize(bc.matrix);
    CHECK(bytes.size() * 8 == bc.matrix.bits().full_bits());
    CHECK(bytes.size() % 16 == 0);
    auto back = sp::format::deserialize(bytes);
    REQUIRE_MESSAGE(back.ok(), back.message());
    CHECK(back->shape == bc.matrix.shape);
    CHECK(same_bits(decoded(*back), decoded(bc.matrix)));
    CHECK(sp::format::serialize(*back) == bytes);
    CHECK(back->kept_rows == bc.matrix.kept_rows);
    CHECK(back->kept_cols == bc.matrix.kept_cols);
  }
}

TEST_CASE("sage: bit breakdown of the 8 x 172 fixture, by hand") {
  const built_case bc = build_case({});  // 8 x 172, 2 salient columns at 4 bits, 3 column groups, factorized
  const auto b = bc.matrix.bits();
  CHECK(b.weights == 8 * 172);
  CHECK(b.sign_bits == 8 * 170);
  CHECK(b.code_bits == 8 * 2 * 4);
  CHECK(b.scale_bits == 16 * 8 + 16 * 3 + 16 * 8 + 8 * 8);  // alpha_r, beta_g, salient scale + zero per row
  CHECK(b.group_id_bits == 32 * 4);                         // G + 1 offsets
  CHECK(b.salient_position_bits == 172 * 8);                // the permutation, ceil(log2 172) = 8 bits per column
  CHECK(b.metadata_bits == 64 * 8);
  CHECK(b.paper_bits == 8 * 170 + 8 * 2 * 4);
  CHECK(b.paper_bpw() == doctest::Approx((8.0 * 170 + 64) / (8 * 172)));
  // header 64 + perm 176 (172 B -> 43 words) + offsets 16 + signs 8 rows x 8 words x 4 B + alpha 16 + beta 6
  // + codes 32 + salient scales 16 + zeros 8, each section aligned to 16 bytes
  CHECK(sp::format::serialize(bc.matrix).size() == 64 + 176 + 16 + 256 + 16 + 16 + 32 + 16 + 16);
}

TEST_CASE("sage: an identity permutation is a header flag, word rows pad signs to 32 bits only") {
  case_spec cs;  // 5 x 64, one group, no salient columns
  cs.rows = 5;
  cs.cols = 64;
  cs.salient = 0;
  cs.groups = 1;
  const built_case wide = build_case(cs);
  CHECK(wide.matrix.shape.identity_perm);
  CHECK(wide.matrix.col_perm.empty());
  CHECK(wide.matrix.bits().salient_position_bits == 0);
  CHECK(wide.matrix.shape.sign_row_words() == 4);  // 64 signs padded to 128 bits
  cs.word_rows = true;
  const built_case narrow = build_case(cs);
  CHECK(narrow.matrix.shape.sign_row_words() == 2);
  CHECK(narrow.matrix.bits().padding_bits < wide.matrix.bits().padding_bits);
  CHECK(same_bits(decoded(narrow.matrix), wide.expected));
  CHECK(sp::format::serialize(narrow.matrix).size() * 8 == narrow.matrix.bits().full_bits());

  // A salient column at the tail in its own place, one group: still the identity.
  cs.cols = 3;
  cs.salient = 1;
  const built_case tail = build_case(cs);
  CHECK(tail.matrix.shape.identity_perm == (tail.matrix.view().source_column(2) == 2));

  // Flipping either flag in the bytes is caught: the sizes or the checksum no longer agree.
  auto bytes = sp::format::serialize(narrow.matrix);
  bytes[12] ^= 0x10;
  CHECK_FALSE(sp::format::deserialize(bytes).ok());
  bytes[12] ^= 0x30;
  CHECK_FALSE(sp::format::deserialize(bytes).ok());
  bytes[12] ^= 0x60;  // bit 6 is no flag of version 1
  const auto unknown = sp::format::deserialize(bytes);
  CHECK_FALSE(unknown.ok());
}

TEST_CASE("sage: golden bytes of the seeded fixtures") {
  // Every other section too: weight groups, two planes of table scales with means, symmetric salient grids, kept lists.
  case_spec all_sections;
  all_sections.rows = 5;
  all_sections.cols = 37;
  all_sections.planes = 2;
  all_sections.group_mode = sage_group_mode::weight;
  all_sections.scale_mode = sage_scale_mode::table;
  all_sections.mean = true;
  all_sections.symmetric = true;
  all_sections.kept = true;
  const auto other = sp::format::serialize(build_case(all_sections).matrix);
  CHECK(other.size() == 688);
  CHECK(sp::format::fnv1a64(other) == 0xf34493010871a29cull);

  const auto bytes = sp::format::serialize(build_case({}).matrix);
  CHECK(bytes.size() == 608);
  CHECK(sp::format::fnv1a64(bytes) == 0x3602d984d43f5351ull);  // pinned: change only with a new format version
}

TEST_CASE("sage: identical bytes across builds") {
  for (const auto& cs : variety())
    CHECK(sp::format::serialize(build_case(cs).matrix) == sp::format::serialize(build_case(cs).matrix));
}

TEST_CASE("sage: every truncation and every single-bit flip is rejected") {
  case_spec cs;
  cs.rows = 3;
  cs.cols = 40;
  cs.groups = 2;
  cs.planes = 2;
  cs.scale_mode = sage_scale_mode::table;
  cs.mean = true;
  cs.kept = true;
  const auto bytes = sp::format::serialize(build_case(cs).matrix);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    auto r = sp::format::deserialize(std::span(bytes.data(), n));
    CHECK(r.code() == sp::status::malformed_input);
    CHECK(!r.has_value());
  }
  auto longer = bytes;
  longer.push_back(0);
  CHECK(sp::format::deserialize(longer).code() == sp::status::malformed_input);
  int accepted = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      auto flipped = bytes;
      flipped[i] ^= static_cast<std::uint8_t>(1u << bit);
      accepted += sp::format::deserialize(flipped).code() != sp::status::malformed_input;
    }
  CHECK(accepted == 0);
}

TEST_CASE("sage: content rules hold behind a valid checksum") {
  const auto m = build_case({}).matrix;
  auto rejects = [](const sp::format::sage_matrix& broken) {
    CHECK(sp::format::validate(broken).code() == sp::status::malformed_input);
    CHECK(sp::format::deserialize(sp::format::serialize(broken)).code() == sp::status::malformed_input);
  };
  auto broken = m;
  broken.signs[7] |= 1u << 31;  // row 0, word 7: past the 170 binarized columns
  rejects(broken);
  broken = m;
  broken.col_perm[0] ^= 0xffu;  // the first source column index changes: no longer a permutation
  rejects(broken);
  broken = m;
  broken.group_offsets[1] = broken.group_offsets[2] + 1;
  rejects(broken);
  broken = m;
  broken.salient_codes[0] |= 1u << 8;  // past the 2 x 4 code bits of row 0
  rejects(broken);
  broken = m;
  broken.row_scales[3] = sp::fp16::from_bits(0x7c00);  // +Inf
  rejects(broken);
}

TEST_CASE("sage: malformed headers") {
  const auto good = sp::format::serialize(build_case({}).matrix);
  auto with = [&](std::size_t at, std::uint64_t value, int width) {
    auto b = good;
    for (int i = 0; i < width; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(value >> (8 * i));
    auto r = sp::format::deserialize(b);
    CHECK(r.code() == sp::status::malformed_input);
    return r.message();
  };
  CHECK(with(0, 'X', 1).find("magic") != std::string::npos);
  CHECK(with(8, 2, 2).find("version") != std::string::npos);
  CHECK(with(8, 0, 2).find("version") != std::string::npos);
  with(10, 48, 2);                // header size
  with(12, 1u << 7, 4);           // unknown flag
  with(16, 0xffffffffu, 4);       // rows overflow
  with(20, 0xfffffffu, 4);        // cols: weights beyond the limit
  with(16, 0, 4);                 // no rows
  with(24, 173, 4);               // more salient than columns
  with(28, 0, 4);                 // no groups
  with(32, 5, 1);                 // planes
  with(33, 9, 1);                 // salient bits
  with(34, 2, 1);                 // group mode
  with(35, 2, 1);                 // scale mode
  with(36, 9, 4);                 // orig_rows without kept rows
  with(44, 1, 4);                 // reserved
  with(48, good.size() + 16, 8);  // total bytes
  with(56, 1, 8);                 // reserved
}

TEST_CASE("sage: builder rejects values the format cannot reproduce") {
  sp::format::sage_spec spec;
  spec.rows = 2;
  spec.cols = 10;
  spec.salient_columns = {3};
  {
    auto b = sp::format::sage_builder::create(spec);
    REQUIRE(b.ok());
    b->set_row_scale(0, 0, 0.1f);  // not an fp16 value
    CHECK(std::move(*b).finish().code() == sp::status::invalid_argument);
  }
  {
    auto b = sp::format::sage_builder::create(spec);
    sp::quant::uniform_grid grid;
    grid.max_code = 15;
    grid.scale = 0.5f;
    grid.zero = 2.5f;  // not an integer: an asymmetric grid needs an integer zero
    b->set_salient_grid(1, grid);
    CHECK(std::move(*b).finish().code() == sp::status::invalid_argument);
  }
  {
    auto b = sp::format::sage_builder::create(spec);
    sp::quant::uniform_grid grid;
    grid.max_code = 7;  // 3-bit grid in a 4-bit format
    b->set_salient_grid(0, grid);
    CHECK(std::move(*b).finish().code() == sp::status::invalid_argument);
  }
  auto bad = spec;
  bad.salient_columns = {3, 3};
  CHECK(sp::format::sage_builder::create(bad).code() == sp::status::invalid_argument);
  bad = spec;
  bad.column_group.assign(10, 0);
  bad.column_group[4] = 1;  // groups = 1
  CHECK(sp::format::sage_builder::create(bad).code() == sp::status::invalid_argument);
  bad = spec;
  bad.planes = 5;
  CHECK(sp::format::sage_builder::create(bad).code() == sp::status::invalid_argument);
  bad = spec;
  bad.with_mean = true;  // a mean needs table scales
  CHECK(sp::format::sage_builder::create(bad).code() == sp::status::invalid_argument);
  bad = spec;
  bad.rows = 0;
  CHECK(sp::format::sage_builder::create(bad).code() == sp::status::invalid_shape);
}

TEST_CASE("sage: decode reproduces the factorized quantizer's output bit for bit") {
  sp::random_generator rng(7);
  const index_t rows = 9, cols = 172;
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (auto& v : w) v = static_cast<float>(0.02 * rng.student_t(4));
  const std::vector<index_t> salient = {17, 150};
  std::vector<std::int32_t> group(static_cast<std::size_t>(cols));
  for (index_t c = 0; c < cols; ++c) group[static_cast<std::size_t>(c)] = static_cast<std::int32_t>(c % 4);
  for (auto c : salient) group[static_cast<std::size_t>(c)] = -1;
  const auto wv = sp::make_matrix_view(w.data(), rows, cols);
  auto scales = sp::quant::fit_factorized(wv, group, 4);
  REQUIRE(scales.has_value());

  sp::format::sage_spec spec;
  spec.rows = rows;
  spec.cols = cols;
  spec.salient_columns = salient;
  spec.groups = 4;
  spec.column_group = group;
  auto b = sp::format::sage_builder::create(spec);
  REQUIRE(b.ok());
  b->set_signs(0, [&](index_t r, index_t c) { return wv(r, c) >= 0.0f; });
  for (index_t r = 0; r < rows; ++r) b->set_row_scale(0, r, scales->row[static_cast<std::size_t>(r)]);
  for (int g = 0; g < 4; ++g) b->set_group_scale(0, g, scales->group[static_cast<std::size_t>(g)]);
  std::vector<float> q(w.size());
  for (index_t r = 0; r < rows; ++r) {
    float lo = 0, hi = 0;
    for (auto c : salient) lo = std::min(lo, wv(r, c)), hi = std::max(hi, wv(r, c));
    const auto grid = sp::quant::fit_minmax_grid(lo, hi, 4, false);
    b->set_salient_grid(r, grid);
    for (index_t c = 0; c < cols; ++c) {
      float& out = q[static_cast<std::size_t>(r * cols + c)];
      if (group[static_cast<std::size_t>(c)] < 0) {
        b->set_salient_code(r, c, grid.code(wv(r, c)));
        out = grid.quantize(wv(r, c));
      } else {
        out = scales->value(r, group[static_cast<std::size_t>(c)], wv(r, c));
      }
    }
  }
  auto m = std::move(*b).finish();
  REQUIRE_MESSAGE(m.ok(), m.message());
  CHECK(same_bits(decoded(*m), q));
  auto back = sp::format::deserialize(sp::format::serialize(*m));
  REQUIRE(back.ok());
  CHECK(same_bits(decoded(*back), q));
}

TEST_CASE("sage: decode reproduces residual binarization with means (BiLLM's form) bit for bit") {
  sp::random_generator rng(8);
  const index_t rows = 6, cols = 70;
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (auto& v : w) v = static_cast<float>(0.03 * rng.normal() + 0.002);
  std::vector<std::int32_t> group(static_cast<std::size_t>(cols));
  for (index_t c = 0; c < cols; ++c) group[static_cast<std::size_t>(c)] = c < 30 ? 1 : 0;
  const auto wv = sp::make_matrix_view(w.data(), rows, cols);
  sp::quant::residual_options opts;
  opts.order = 2;
  auto table = sp::quant::residual_row_groups(wv, sp::quant::column_groups{group}, 2, opts);
  REQUIRE(table.ok());

  sp::format::sage_spec spec;
  spec.rows = rows;
  spec.cols = cols;
  spec.planes = 2;
  spec.groups = 2;
  spec.column_group = group;
  spec.scale_mode = sage_scale_mode::table;
  spec.with_mean = true;
  auto b = sp::format::sage_builder::create(spec);
  REQUIRE(b.ok());
  std::vector<float> q(w.size());
  for (index_t r = 0; r < rows; ++r) {
    for (int g = 0; g < 2; ++g)
      for (int p = 0; p < 2; ++p)
        b->set_table_scale(p, r, g, (*table)(r, g)[static_cast<std::size_t>(p)].alpha,
                           (*table)(r, g)[static_cast<std::size_t>(p)].mu);
    for (index_t c = 0; c < cols; ++c) {
      const auto point = sp::quant::residual_quantize((*table)(r, group[static_cast<std::size_t>(c)]), wv(r, c), true);
      q[static_cast<std::size_t>(r * cols + c)] = point.value;
      for (int p = 0; p < 2; ++p) b->set_sign(p, r, c, (point.positive >> p) & 1u);
    }
  }
  auto m = std::move(*b).finish();
  REQUIRE_MESSAGE(m.ok(), m.message());
  CHECK(same_bits(decoded(*m), q));
}

TEST_CASE("sage: kept-row and kept-column lists are validated") {
  case_spec cs;
  cs.kept = true;
  auto m = build_case(cs).matrix;
  CHECK(sp::format::validate(m).ok());
  auto broken = m;
  std::swap(broken.kept_cols[0], broken.kept_cols[1]);
  CHECK(sp::format::validate(broken).code() == sp::status::malformed_input);
  CHECK(sp::format::deserialize(sp::format::serialize(broken)).code() == sp::status::malformed_input);
  broken = m;
  broken.kept_rows.back() = broken.shape.orig_rows;
  CHECK(sp::format::deserialize(sp::format::serialize(broken)).code() == sp::status::malformed_input);
}

TEST_CASE("sage: an in-place view of the serialized bytes decodes like the matrix") {
  for (const auto& cs : variety()) {
    const built_case bc = build_case(cs);
    const auto bytes = sp::format::serialize(bc.matrix);
    // A buffer without C++ objects in it, as a device copy or a mapped file would be.
    void* buffer = ::operator new (bytes.size(), std::align_val_t{16});
    std::memcpy(buffer, bytes.data(), bytes.size());
    const auto in_place = sp::format::view_serialized(bc.matrix.shape, buffer);
    std::vector<float> out(bc.expected.size());
    sp::format::decode(in_place, sp::make_matrix_view(out.data(), cs.rows, cs.cols));
    CHECK(same_bits(out, bc.expected));
    ::operator delete (buffer, std::align_val_t{16});
  }
}

TEST_CASE("sage: full bpw of a LLaMA-shaped layer, by hand") {
  // 4096 x 4096, 41 salient columns (1%) at 4 bits, 4 column groups, factorized scales. Bytes: header 64;
  // permutation 4096 x 12 bits = 6144; offsets 5 x 4 (at 6208); signs 4096 rows x 128 words x 4 (at 6240, 4055 bits
  // used per row); alpha 4096 x 2; beta 4 x 2; codes 4096 rows x 6 words x 4 (164 bits used); salient scales
  // 4096 x 2; zeros 4096.
  sp::format::sage_shape s;
  s.rows = s.orig_rows = 4096;
  s.cols = s.orig_cols = 4096;
  s.salient_cols = 41;
  s.salient_bits = 4;
  s.groups = 4;
  const auto o = sp::format::serialized_offsets(s);
  CHECK(o.section[static_cast<int>(sp::format::sage_section::signs)] == 6240);
  CHECK(o.total == 2222192);
  const auto b = sp::format::sage_bits(s);
  CHECK(b.full_bits() == 8 * o.total);
  CHECK(b.sign_bits == 4096ull * 4055);
  CHECK(b.padding_bits == 4096ull * (41 + 28) + 8 * (12 + 8));  // row tails; gaps before signs and codes
  CHECK(b.full_bpw() == doctest::Approx(1.05962).epsilon(1e-5));
  CHECK(b.paper_bpw() == doctest::Approx(1.03003).epsilon(1e-5));
}

TEST_CASE("sage: find_column_group agrees with a linear scan, empty groups included") {
  // The one search over the group offsets (sage_view::group and the CUDA fold both call it); a staged copy holds
  // only the first G offsets, so the search must never read offsets[G].
  sp::random_generator rng(20261127);
  for (int trial = 0; trial < 200; ++trial) {
    const int groups = 1 + static_cast<int>(rng.below(trial < 100 ? 8 : 600));
    const auto cols = static_cast<std::uint32_t>(groups + rng.below(4000));
    std::vector<std::uint32_t> offsets(static_cast<std::size_t>(groups) + 1, 0u);
    for (int g = 1; g < groups; ++g)  // rising, with repeats (empty groups) and a possibly empty first/last group
      offsets[static_cast<std::size_t>(g)] = static_cast<std::uint32_t>(rng.below(cols + 1));
    std::sort(offsets.begin() + 1, offsets.end() - 1);
    offsets.back() = 0u;  // poison: read, it would put every j in group G
    for (std::uint32_t j = 0; j < cols; j += 1 + static_cast<std::uint32_t>(rng.below(7))) {
      int expected = 0;  // the last group whose range starts at or before j
      for (int g = 0; g < groups; ++g)
        if (offsets[static_cast<std::size_t>(g)] <= j) expected = g;
      REQUIRE(sp::format::find_column_group(offsets.data(), groups, j) == expected);
    }
  }
}
