// CPU GEMV kernels (cpu/gemv.hpp): every ISA path, forced directly and through SAGEPTQ_CPU_ISA, against a float64
// reference of the decoded matrix on fresh random inputs, for batch 1..8 and ragged shapes (172 columns, rows not a
// multiple of any tile), with outputs poisoned first; the tolerance is shown to catch one flipped sign bit or scale;
// bad inputs return their statuses; results are bit-identical for any thread count.
// The int8 path (avx512_vnni) is held to the same fp32 tolerance against the reference on its dequantized
// activations (int8_effective_x), and to fp32 + the documented int8 bound against the reference on x. Salient codes
// of every width 1..8 (the SIMD decodes differ by width; the VNNI tiles add the tail themselves), and the AVX-512
// fold of x against the scalar one, bit for bit.

#include "sageptq/cpu/gemv.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "random_packed.hpp"

namespace sp = sageptq;
namespace t = sageptq_test;
using sp::index_t;
using sp::cpu::isa;

namespace {

std::vector<isa> supported_paths() {
  std::vector<isa> paths;
  for (isa p : sp::cpu::all_isas)
    if (sp::cpu::supported(p)) paths.push_back(p);
  return paths;
}

/// The float64 reference a path must meet within fp32_tolerance: on x, or on the int8 path's dequantized x.
template <class View>
t::reference path_reference(const View& w, index_t rows, index_t cols, const std::vector<float>& x, index_t batch,
                            isa path) {
  if constexpr (requires { t::int8_effective_x(w, x, batch); })
    if (path == isa::avx512_vnni) return t::dense_reference(w, rows, cols, t::int8_effective_x(w, x, batch), batch);
  return t::dense_reference(w, rows, cols, x, batch);
}

/// Runs gemv on `path` into a NaN-poisoned y and returns y (batch x rows).
template <class View, class E = sp::inline_executor>
std::vector<float> run(const View& w, index_t rows, index_t cols, const std::vector<float>& x, index_t batch, isa path,
                       const E& exec = {}) {
  std::vector<float> y(static_cast<std::size_t>(batch * rows), std::numeric_limits<float>::quiet_NaN());
  auto done = sp::cpu::gemv(w, sp::make_matrix_view(x.data(), batch, cols), sp::make_matrix_view(y.data(), batch, rows),
                            exec, path);
  REQUIRE_MESSAGE(done.ok(), done.message());
  return y;
}

/// Checks every path and batch 1..8 of one packed matrix against its float64 reference.
template <class View>
void check_all_paths(const View& w, index_t rows, index_t cols, std::uint64_t seed) {
  for (index_t batch = 1; batch <= 8; ++batch) {
    const auto x = t::random_x(batch, cols, seed * 100 + static_cast<std::uint64_t>(batch));
    const auto exact = t::dense_reference(w, rows, cols, x, batch);
    for (isa path : supported_paths()) {
      CAPTURE(sp::cpu::to_string(path));
      CAPTURE(batch);
      const auto y = run(w, rows, cols, x, batch, path);
      CHECK(t::worst_ratio(y.data(), path_reference(w, rows, cols, x, batch, path), cols, t::fp32_tolerance) <= 1.0);
      if constexpr (requires { t::int8_bound(w, x, batch); }) {
        if (path != isa::avx512_vnni) continue;
        // Against x itself: fp32 rounding plus the a-priori int8 bound (int8_activations.hpp).
        const auto int8 = t::int8_bound(w, x, batch);
        double worst = 0;
        for (std::size_t i = 0; i < y.size(); ++i)
          worst = std::max(worst, std::fabs(y[i] - exact.y[i]) / (t::fp32_tolerance(cols, exact.bound[i]) + int8[i]));
        CHECK(worst <= 1.0);
      }
    }
  }
}

/// True when some output of every path misses the reference of the unmodified matrix `original`.
template <class View>
bool every_path_detects(const View& changed, const View& original, index_t rows, index_t cols,
                        const std::vector<float>& x, index_t batch) {
  for (isa path : supported_paths()) {
    const auto ref = path_reference(original, rows, cols, x, batch, path);
    if (t::worst_ratio(run(changed, rows, cols, x, batch, path).data(), ref, cols, t::fp32_tolerance) <= 1.0)
      return false;
  }
  return true;
}

}  // namespace

TEST_CASE("cpu gemv: this CPU runs every path (the CI machine must have AVX-512)") {
  // The suite must test all three paths; on a CPU without them this documents what was skipped.
  MESSAGE("best ISA: " << std::string(sp::cpu::to_string(sp::cpu::best_isa())));
  CHECK(sp::cpu::supported(isa::scalar));
}

TEST_CASE("cpu gemv sage: every path and batch matches the float64 reference (ragged shapes)") {
  for (const t::sage_case cs : {t::sage_case{37, 172, 3, 3, 4, false, 11}, t::sage_case{130, 700, 7, 4, 3, true, 12},
                                t::sage_case{5, 300, 0, 1, 4, false, 13}, t::sage_case{67, 129, 1, 2, 8, false, 14},
                                t::sage_case{21, 400, 17, 2, 3, true, 15}, t::sage_case{9, 172, 2, 2, 4, false, 16, true}}) {
    CAPTURE(cs.rows);
    CAPTURE(cs.cols);
    const auto m = t::random_sage(cs);
    check_all_paths(m.view(), cs.rows, cs.cols, cs.seed);
  }
}

TEST_CASE("cpu gemv sage: every salient code width, counts across the SIMD chunks (16 bytes of codes)") {
  // bits dividing 8 take the byte-chunk decode (128 / bits codes per chunk), 3, 5, 6, 7 the 16-code one
  for (const t::sage_case cs : {t::sage_case{45, 700, 150, 2, 1, false, 81}, t::sage_case{33, 500, 70, 3, 2, true, 82},
                                t::sage_case{29, 420, 77, 2, 4, false, 83}, t::sage_case{26, 400, 40, 2, 5, false, 84},
                                t::sage_case{19, 380, 33, 2, 6, true, 85}, t::sage_case{23, 300, 17, 1, 7, false, 86},
                                t::sage_case{18, 333, 35, 3, 8, false, 87}}) {
    CAPTURE(cs.salient_bits);
    CAPTURE(cs.salient);
    const auto m = t::random_sage(cs);
    check_all_paths(m.view(), cs.rows, cs.cols, cs.seed);
  }
}

TEST_CASE("cpu gemv sage: the AVX-512 fold of x (beta * permuted x) is bit-identical to the scalar one") {
  if (!sp::cpu::supported(isa::avx512)) {
    MESSAGE("this CPU lacks AVX-512: nothing to compare");
    return;
  }
  // permutation codes of 8 to 17 bits, the identity flag, group boundaries inside 16-column steps, row padding
  for (const t::sage_case cs : {t::sage_case{2, 172, 3, 3, 4, false, 91}, t::sage_case{2, 129, 1, 2, 8, false, 92},
                                t::sage_case{2, 5000, 50, 4, 4, false, 93}, t::sage_case{1, 70000, 9, 3, 2, false, 94},
                                t::sage_case{2, 300, 0, 1, 4, false, 95},
                                t::sage_case{2, 172, 2, 2, 4, false, 96, true}}) {
    CAPTURE(cs.cols);
    const auto m = t::random_sage(cs);
    const auto w = m.view();
    const index_t batch = 3, stride = cs.cols + 5, padded = 32 * m.shape.sign_row_words();
    auto x = t::random_x(batch, stride, cs.seed);
    const sp::matrix_view<const float> xv{x.data(), {batch, cs.cols}, {stride, 1}};
    REQUIRE(sp::cpu::detail::fold_avx512_supported(w, xv));
    std::vector<float> simd(static_cast<std::size_t>(batch * padded), NAN), scalar = simd;
    sp::cpu::detail::fold_avx512(w, xv, simd.data(), padded);
    sp::cpu::detail::fold_scalar(w, xv, scalar.data(), padded);
    CHECK(std::memcmp(simd.data(), scalar.data(), simd.size() * sizeof(float)) == 0);
    // the reference itself: beta_g(j) x[source(j)], zero past the binarized columns
    bool matches = true;
    for (index_t b = 0; b < batch; ++b)
      for (index_t j = 0; j < padded; ++j) {
        const float want = j < m.shape.binarized_cols()
                               ? w.group_scales[w.group(0, j)].to_float() * x[static_cast<std::size_t>(
                                                                                 b * stride + w.source_column(j))]
                               : 0.0f;
        matches &= scalar[static_cast<std::size_t>(b * padded + j)] == want;
      }
    CHECK(matches);
  }
}

TEST_CASE("cpu gemv q1_0 and rtn: every path and batch matches the float64 reference") {
  for (auto [r, c] : {std::pair<index_t, index_t>{37, 172}, {70, 384}, {3, 1}}) {
    const index_t rows = r, cols = c;  // structured bindings cannot be captured by CAPTURE's lambda (C++20)
    CAPTURE(rows);
    CAPTURE(cols);
    const auto q = t::random_q1_0(rows, cols, static_cast<std::uint64_t>(rows + cols));
    check_all_paths(q.view(), rows, cols, 21);
    for (sp::format::rtn_layout layout : {sp::format::rtn_layout{4, 64, false}, sp::format::rtn_layout{3, 1000, true}}) {
      const auto r = t::random_rtn(rows, cols, layout, static_cast<std::uint64_t>(rows * cols));
      check_all_paths(r.view(), rows, cols, 22);
    }
  }
}

TEST_CASE("cpu gemv: one flipped sign bit, row scale, group scale or salient code fails the tolerance") {
  const t::sage_case cs{37, 172, 3, 3, 4, false, 31};
  const auto m = t::random_sage(cs);
  const index_t batch = 2;
  const auto x = t::random_x(batch, cs.cols, 32);
  for (isa path : supported_paths()) {  // the unmodified matrix passes on every path
    CAPTURE(sp::cpu::to_string(path));
    CHECK(t::worst_ratio(run(m.view(), cs.rows, cs.cols, x, batch, path).data(),
                         path_reference(m.view(), cs.rows, cs.cols, x, batch, path), cs.cols, t::fp32_tolerance) <= 1.0);
  }

  // The binarized weight that multiplies the largest |x| of batch column 0: a flip moves y by 2 |w x|.
  index_t stored = 0;
  auto magnitude = [&](index_t j) { return std::fabs(x[static_cast<std::size_t>(m.view().source_column(j))]); };
  for (index_t j = 0; j < m.shape.binarized_cols(); ++j)
    if (magnitude(j) > magnitude(stored)) stored = j;
  auto flipped = m;
  flipped.signs[static_cast<std::size_t>(5 * m.shape.sign_row_words() + stored / 32)] ^= 1u << (stored % 32);
  CHECK(every_path_detects(flipped.view(), m.view(), cs.rows, cs.cols, x, batch));

  auto row_scale = m;
  row_scale.row_scales[4] = sp::fp16(row_scale.row_scales[4].to_float() * 1.0625f);
  CHECK(every_path_detects(row_scale.view(), m.view(), cs.rows, cs.cols, x, batch));

  auto group_scale = m;
  group_scale.group_scales[1] = sp::fp16(group_scale.group_scales[1].to_float() * 1.0625f);
  CHECK(every_path_detects(group_scale.view(), m.view(), cs.rows, cs.cols, x, batch));

  auto code = m;
  code.salient_codes[static_cast<std::size_t>(9 * m.shape.salient_row_words())] ^= 1u;  // row 9, code 0, low bit
  CHECK(every_path_detects(code.view(), m.view(), cs.rows, cs.cols, x, batch));
  // The low bit of the salient code with the largest |x|, for each SIMD decode (bytes of 8 / b codes, 16 codes).
  for (const int bits : {1, 3, 4, 8}) {
    CAPTURE(bits);
    const t::sage_case wide{37, 400, 40, 2, bits, false, 34};
    const auto s = t::random_sage(wide);
    const auto sx = t::random_x(batch, wide.cols, 35);
    const index_t kb = s.shape.binarized_cols();
    index_t best = 0;
    for (index_t k = 0; k < wide.salient; ++k)
      if (std::fabs(sx[static_cast<std::size_t>(s.view().source_column(kb + k))]) >
          std::fabs(sx[static_cast<std::size_t>(s.view().source_column(kb + best))]))
        best = k;
    auto flipped_code = s;
    const index_t bit = 11 * 32 * s.shape.salient_row_words() + best * bits;  // row 11
    flipped_code.salient_codes[static_cast<std::size_t>(bit / 32)] ^= 1u << (bit % 32);
    CHECK(every_path_detects(flipped_code.view(), s.view(), wide.rows, wide.cols, sx, batch));
  }

  const auto q = t::random_q1_0(cs.rows, cs.cols, 33);
  auto qflip = q;
  const auto best = m.view().source_column(stored);  // the same large |x|, unpermuted in q1_0
  qflip.signs[static_cast<std::size_t>(2 * q.view().words_per_row() + best / 32)] ^= 1u << (best % 32);
  CHECK(every_path_detects(qflip.view(), q.view(), cs.rows, cs.cols, x, batch));
  auto qscale = q;
  qscale.scales[3] = sp::fp16(qscale.scales[3].to_float() * 1.0625f);
  CHECK(every_path_detects(qscale.view(), q.view(), cs.rows, cs.cols, x, batch));
}

TEST_CASE("cpu gemv: SAGEPTQ_CPU_ISA forces each path, and the default call follows it") {
  const t::sage_case cs{19, 172, 2, 2, 4, false, 41};
  const auto m = t::random_sage(cs);
  const index_t batch = 3;
  const auto x = t::random_x(batch, cs.cols, 42);
  const char* saved = std::getenv("SAGEPTQ_CPU_ISA");
  const std::string restore = saved ? saved : "";
  for (isa path : supported_paths()) {
    ::setenv("SAGEPTQ_CPU_ISA", sp::cpu::to_string(path), 1);
    REQUIRE(sp::cpu::active_isa().ok());
    CHECK(*sp::cpu::active_isa() == path);
    std::vector<float> y(static_cast<std::size_t>(batch * cs.rows), std::numeric_limits<float>::quiet_NaN());
    REQUIRE(sp::cpu::gemv(m.view(), sp::make_matrix_view(x.data(), batch, cs.cols),
                          sp::make_matrix_view(y.data(), batch, cs.rows))
                .ok());
    CHECK(y == run(m.view(), cs.rows, cs.cols, x, batch, path));  // same path, same bits
  }
  ::setenv("SAGEPTQ_CPU_ISA", "sse9", 1);
  CHECK(sp::cpu::active_isa().code() == sp::status::invalid_argument);
  std::vector<float> y(static_cast<std::size_t>(batch * cs.rows));
  CHECK(sp::cpu::gemv(m.view(), sp::make_matrix_view(x.data(), batch, cs.cols),
                      sp::make_matrix_view(y.data(), batch, cs.rows))
            .code() == sp::status::invalid_argument);
  if (restore.empty())
    ::unsetenv("SAGEPTQ_CPU_ISA");
  else
    ::setenv("SAGEPTQ_CPU_ISA", restore.c_str(), 1);
}

TEST_CASE("cpu gemv: bit-identical for any thread count") {
  const t::sage_case cs{300, 500, 5, 4, 4, false, 51};
  const auto m = t::random_sage(cs);
  const auto x = t::random_x(4, cs.cols, 52);
  for (isa path : supported_paths())
    CHECK(run(m.view(), cs.rows, cs.cols, x, 4, path) ==
          run(m.view(), cs.rows, cs.cols, x, 4, path, sp::thread_executor(3)));
}

TEST_CASE("cpu gemv: bad input returns its status") {
  const t::sage_case cs{8, 172, 2, 3, 4, false, 61};
  const auto m = t::random_sage(cs);
  std::vector<float> x(9 * 172, 0.5f), y(9 * 8);
  auto call = [&](index_t batch, index_t cols, index_t rows) {
    return sp::cpu::gemv(m.view(), sp::make_matrix_view(x.data(), batch, cols), sp::make_matrix_view(y.data(), batch, rows),
                         sp::inline_executor{}, isa::scalar)
        .code();
  };
  CHECK(call(9, 172, 8) == sp::status::invalid_argument);
  CHECK(call(2, 171, 8) == sp::status::invalid_shape);
  CHECK(call(2, 172, 7) == sp::status::invalid_shape);
  x[5] = std::numeric_limits<float>::infinity();
  CHECK(call(2, 172, 8) == sp::status::non_finite_input);
  x[5] = 0.5f;
  std::vector<float> wide(2 * 16);
  CHECK(sp::cpu::gemv(m.view(), sp::make_matrix_view(x.data(), 2, 172), sp::matrix_view<float>{wide.data(), {2, 8}, {1, 2}},
                      sp::inline_executor{}, isa::scalar)
            .code() == sp::status::invalid_layout);

  auto table = m;
  table.shape.scale_mode = sp::format::sage_scale_mode::table;
  CHECK(sp::cpu::can_implement(table.view(), 1).code() == sp::status::unsupported);
  auto planes = m;
  planes.shape.planes = 2;
  CHECK(sp::cpu::can_implement(planes.view(), 1).code() == sp::status::unsupported);
  CHECK(sp::cpu::can_implement(m.view(), 0).code() == sp::status::invalid_argument);
}
