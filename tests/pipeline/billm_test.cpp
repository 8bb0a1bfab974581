// The billm method against a plain transcription of BiLLM's per-block algorithm (bigptq.py's block loop,
// structural_searching, generate_structural_mask, high_order_residual), written with whole-block masks as BiLLM
// does; decode(packed) == dequantized; compensation; determinism; statuses; bpw and output error vs baselines.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/core/random.hpp>
#include <sageptq/pipeline/billm.hpp>
#include <sageptq/pipeline/rtn.hpp>
#include <sageptq/quant/error.hpp>
#include <sageptq/synthetic/layer.hpp>

#include "support/calibrated_layer.hpp"

using namespace sageptq;

namespace {

using problem = sageptq_test::calibrated_problem;
using sageptq_test::make_calibrated_problem;
using sageptq_test::same_bits;

// ---- The plain reference: BiLLM's code, one block at a time, on row-major rows x width matrices ----------------

using matrix = std::vector<float>;
using mask = std::vector<char>;

float torch_sign(float x) { return x > 0 ? 1.0f : (x < 0 ? -1.0f : 0.0f); }

/// binary.py's high_order_residual (means and scales in double, then float).
matrix high_order_residual(const matrix& x, const mask& m, index_t rows, index_t width, int order) {
  matrix sum_order(x.size(), 0.0f);
  for (int od = 0; od < order; ++od)
    for (index_t r = 0; r < rows; ++r) {
      double sum = 0, dev = 0;
      index_t n = 0;
      for (index_t c = r * width; c < (r + 1) * width; ++c)
        if (m[c]) sum += x[c] - sum_order[c], ++n;
      const float mu = n ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
      for (index_t c = r * width; c < (r + 1) * width; ++c)
        if (m[c]) dev += std::fabs((x[c] - sum_order[c]) - mu);
      const float alpha = n ? static_cast<float>(dev / static_cast<double>(n)) : 0.0f;
      for (index_t c = r * width; c < (r + 1) * width; ++c)
        if (m[c]) sum_order[c] = sum_order[c] + (torch_sign((x[c] - sum_order[c]) - mu) * alpha + mu);
    }
  return sum_order;
}

double squared_error(const matrix& x, const matrix& a, const matrix& b, const matrix& c = {}) {
  double e = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = x[i] - (a[i] + b[i] + (c.empty() ? 0.0f : c[i]));
    e += d * d;
  }
  return e;
}

struct reference_masks {
  mask salient, group1, group2;  // rows x width
};

/// utils/autosearch.py's structural_searching + utils/mask.py's generate_structural_mask on S.
reference_masks structural_search(const matrix& s, index_t rows, index_t width, int up_lim) {
  std::vector<double> counts(static_cast<std::size_t>(width), 0.0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < width; ++c) counts[c] += std::fabs(s[r * width + c]);
  std::vector<index_t> top(static_cast<std::size_t>(width));
  std::iota(top.begin(), top.end(), index_t{0});
  std::stable_sort(top.begin(), top.end(), [&](index_t a, index_t b) { return counts[a] > counts[b]; });
  const auto column_mask = [&](index_t k) {
    mask m(s.size(), 0);
    for (index_t i = 0; i < k; ++i)
      for (index_t r = 0; r < rows; ++r) m[r * width + top[i]] = 1;
    return m;
  };
  const auto complement = [](mask m) {
    for (auto& v : m) v = !v;
    return m;
  };
  double best = std::numeric_limits<double>::infinity();
  index_t best_k = 1;
  for (index_t k = 1; k < std::min<index_t>(up_lim, width) || k == 1; ++k) {
    const mask m3 = column_mask(k);
    const double e = squared_error(s, high_order_residual(s, m3, rows, width, 2),
                                   high_order_residual(s, complement(m3), rows, width, 2));
    if (e < best) best = e, best_k = k;
  }
  reference_masks out{column_mask(best_k), {}, {}};
  const matrix group3 = high_order_residual(s, out.salient, rows, width, 2);

  std::vector<float> flat(s.size());  // |S * ~mask3|, all entries
  for (std::size_t i = 0; i < s.size(); ++i) flat[i] = out.salient[i] ? 0.0f : std::fabs(s[i]);
  std::sort(flat.begin(), flat.end());
  const auto n = static_cast<index_t>(flat.size());
  const auto split_masks = [&](float split, mask& g1, mask& g2) {
    g1.assign(s.size(), 0);
    g2.assign(s.size(), 0);
    for (std::size_t i = 0; i < s.size(); ++i)
      if (!out.salient[i]) (std::fabs(s[i]) >= split ? g2 : g1)[i] = 1;
  };
  best = std::numeric_limits<double>::infinity();
  float best_split = 0;
  const float step = (0.90f - 0.10f) / 80.0f;
  for (int i = 0; i < 81; ++i) {
    const float q = i < 40 ? 0.10f + step * static_cast<float>(i) : 0.90f - step * static_cast<float>(80 - i);
    const float h = static_cast<float>(n - 1) * q;  // numpy: float32 virtual index, float64 gamma
    const auto lo = static_cast<index_t>(std::floor(h));
    const double gamma = static_cast<double>(h) - static_cast<double>(lo);
    const float a = flat[lo], b = flat[std::min(lo + 1, n - 1)];
    const double diff = b - a;
    const auto split = static_cast<float>(gamma >= 0.5 ? b - diff * (1 - gamma) : a + diff * gamma);
    mask g1, g2;
    split_masks(split, g1, g2);
    const double e = squared_error(s, high_order_residual(s, g1, rows, width, 1),
                                   high_order_residual(s, g2, rows, width, 1), group3);
    if (e < best) best = e, best_split = split;
  }
  split_masks(best_split, out.group1, out.group2);
  return out;
}

/// high_order_residual as stored: fp16 (mu, alpha), alpha fitted against the stored mu, sign(0) = +1.
matrix stored_residual(const matrix& x, const mask& m, index_t rows, index_t width, int order) {
  matrix q(x.size(), 0.0f);
  for (int od = 0; od < order; ++od)
    for (index_t r = 0; r < rows; ++r) {
      double sum = 0, dev = 0;
      index_t n = 0;
      for (index_t c = r * width; c < (r + 1) * width; ++c)
        if (m[c]) sum += x[c] - q[c], ++n;
      if (n == 0) continue;
      const float mu = round_to_fp16(static_cast<float>(sum / static_cast<double>(n)));
      for (index_t c = r * width; c < (r + 1) * width; ++c)
        if (m[c]) dev += std::fabs(static_cast<double>(x[c] - q[c]) - mu);
      const float alpha = round_to_fp16(static_cast<float>(dev / static_cast<double>(n)));
      for (index_t c = r * width; c < (r + 1) * width; ++c)
        if (m[c]) {
          const float t = ((x[c] - q[c]) >= mu ? alpha : -alpha) + mu;
          q[c] = od == 0 ? t : q[c] + t;
        }
    }
  return q;
}

struct reference_result {
  matrix q;                             // rows x cols
  std::vector<std::vector<char>> salient;  // per block, per column
  mask group2;                          // rows x cols, non-salient entries in group 2
};

/// bigptq.py's fasterquant (braq, orders (1, 1, 2)) with plain loops; `compensate = false` is disable_gptq.
reference_result reference_billm(const problem& p, bool hessian_metric, bool compensate) {
  const index_t rows = p.layer.rows, cols = p.layer.cols, block = 128;
  matrix w = p.layer.weights;
  reference_result out{matrix(w.size()), {}, mask(w.size(), 0)};
  for (index_t b0 = 0; b0 < cols; b0 += block) {
    const index_t width = std::min(block, cols - b0);
    matrix wb(static_cast<std::size_t>(rows * width)), s(wb.size());
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < width; ++c) {
        const float x = w[r * cols + b0 + c], d = static_cast<float>(p.factor.u(b0 + c, b0 + c));
        wb[r * width + c] = x;
        s[r * width + c] = hessian_metric ? (x * x) / (d * d) : x;
      }
    const reference_masks m = structural_search(s, rows, width, 50);
    const matrix q1 = stored_residual(wb, m.group1, rows, width, 1), q2 = stored_residual(wb, m.group2, rows, width, 1),
                 q3 = stored_residual(wb, m.salient, rows, width, 2);
    out.salient.emplace_back(m.salient.begin(), m.salient.begin() + width);
    std::vector<float> err(static_cast<std::size_t>(width));
    for (index_t r = 0; r < rows; ++r) {
      for (index_t c = 0; c < width; ++c) {
        const index_t i = r * width + c;
        const float q = m.salient[i] ? q3[i] : (m.group2[i] ? q2[i] : q1[i]);
        out.q[r * cols + b0 + c] = q;
        out.group2[r * cols + b0 + c] = m.group2[i];
        err[c] = (wb[i] - q) / static_cast<float>(p.factor.u(b0 + c, b0 + c));
      }
      if (compensate)
        for (index_t j = b0 + width; j < cols; ++j) {
          float update = 0;
          for (index_t c = 0; c < width; ++c) update += err[c] * static_cast<float>(p.factor.u(b0 + c, j));
          w[r * cols + j] -= update;
        }
    }
  }
  return out;
}

void check_against_reference(const problem& p, const pipeline::billm_config& cfg, float tolerance) {
  const bool hessian = cfg.salient_metric == pipeline::billm_metric::hessian;
  const reference_result ref = reference_billm(p, hessian, cfg.compensate);
  auto got = pipeline::quantize_billm(p.w(), p.factor, cfg, thread_executor(2));
  REQUIRE_MESSAGE(got.ok(), got.message());
  const auto& packed = got->packed;
  const index_t rows = p.layer.rows, cols = p.layer.cols, words = packed.view().words_per_row();
  for (index_t c = 0; c < cols; ++c) {
    CAPTURE(c);
    CHECK(format::billm::bit(packed.salient.data(), c) == (ref.salient[c / 128][c % 128] != 0));
    for (index_t r = 0; r < rows; ++r)
      if (!format::billm::bit(packed.salient.data(), c))
        CHECK(format::billm::bit(packed.second.data() + r * words, c) == (ref.group2[r * cols + c] != 0));
  }
  float worst = 0, first_block = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const float d = std::fabs(got->dequantized[r * cols + c] - ref.q[r * cols + c]);
      worst = std::max(worst, d);
      if (c < 128) first_block = std::max(first_block, d);
    }
  CHECK(first_block == 0.0f);  // the same weights reach the first block: bit for bit
  CHECK(worst <= tolerance);
}

std::vector<float> decoded(const format::billm_matrix& m) {
  std::vector<float> out(static_cast<std::size_t>(m.rows * m.cols));
  format::decode(m.view(), make_matrix_view(out.data(), m.rows, m.cols));
  return out;
}

}  // namespace

TEST_CASE("billm matches a plain transcription of BiLLM's code (16 x 300: ragged last block)") {
  const problem p = make_calibrated_problem(16, 300, 3, 600);
  pipeline::billm_config cfg;
  SUBCASE("hessian metric, no compensation: every block bit for bit") {
    cfg.compensate = false;
    check_against_reference(p, cfg, 0.0f);
  }
  SUBCASE("magnitude metric, no compensation: every block bit for bit") {
    cfg.compensate = false;
    cfg.salient_metric = pipeline::billm_metric::magnitude;
    check_against_reference(p, cfg, 0.0f);
  }
  SUBCASE("hessian metric with compensation: same masks; float update order changes later blocks by rounding") {
    check_against_reference(p, cfg, 1e-4f);
  }
}

TEST_CASE("billm_search: the break-point quantiles count the zeroed salient entries, as BiLLM's search_matrix") {
  // No exact zero in S, and a salient share above 10%: the low quantiles are the zeroed salient entries.
  random_generator rng(9);
  const index_t rows = 8, width = 96;
  std::vector<float> s(static_cast<std::size_t>(rows * width));
  for (auto& v : s) v = static_cast<float>(0.01 + std::pow(rng.uniform(), 3.0));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < 30; ++c) s[r * width + c] *= 40.0f;  // 30 strong columns
  const auto sv = make_matrix_view(std::as_const(s).data(), rows, width);
  pipeline::billm_config cfg;
  const auto choice = pipeline::billm_search(sv, cfg);
  CHECK(choice.salient_columns >= 10);
  CHECK(pipeline::detail::billm_split_candidates(sv, choice.salient, choice.salient_columns, cfg).front() == 0.0f);
  const reference_masks ref = structural_search(s, rows, width, cfg.max_salient_columns);
  index_t k = 0;
  for (index_t c = 0; c < width; ++c) {
    CHECK((choice.salient[c] != 0) == (ref.salient[c] != 0));
    k += ref.salient[c];
  }
  CHECK(choice.salient_columns == k);
  for (index_t i = 0; i < rows * width; ++i)
    if (!ref.salient[i % width]) CHECK((std::fabs(s[i]) >= choice.split) == (ref.group2[i] != 0));
}

TEST_CASE("billm: decode(packed) == dequantized bit for bit, bits = bytes stored, report filled") {
  for (const index_t cols : {256, 172, 129}) {  // 129: a last block of one column
    CAPTURE(cols);
    const problem p = make_calibrated_problem(24, cols, 5 + static_cast<std::uint64_t>(cols), 400);
    for (const auto metric : {pipeline::billm_metric::hessian, pipeline::billm_metric::magnitude}) {
      pipeline::billm_config cfg;
      cfg.salient_metric = metric;
      auto got = pipeline::quantize_billm(p.w(), p.factor, cfg);
      REQUIRE_MESSAGE(got.ok(), got.message());
      CHECK(same_bits(decoded(got->packed), got->dequantized));
      const auto& m = got->packed;
      const std::uint64_t bytes =
          (m.salient.size() + m.signs.size() + m.second.size()) * sizeof(std::uint32_t) + m.scales.size() * 2;
      const auto& r = got->report;
      CHECK(r.bits.full_bits() == 8 * bytes);
      CHECK(r.method == "billm");
      CHECK(r.rows == 24);
      CHECK(r.salient_fraction == doctest::Approx(static_cast<double>(m.salient_columns()) / cols));
      CHECK(r.salient_fraction > 0);
      CHECK(r.hessian_error == doctest::Approx(calib::hessian_weighted_error(p.w(), got->dequantized_view(), p.factor.h)));
      CHECK(r.relative_error > 0);
      CHECK(r.relative_error < 1);
      CHECK(r.bits.paper_bpw() < r.bits.full_bpw());
    }
  }
}

TEST_CASE("billm: compensation lowers the Hessian-weighted error") {
  double with = 0, without = 0;
  int wins = 0;
  for (std::uint64_t seed = 0; seed < 6; ++seed) {
    const problem p = make_calibrated_problem(32, 384, 100 + seed, 768);
    pipeline::billm_config cfg;
    const auto a = pipeline::quantize_billm(p.w(), p.factor, cfg);
    cfg.compensate = false;
    const auto b = pipeline::quantize_billm(p.w(), p.factor, cfg);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    with += a->report.hessian_error;
    without += b->report.hessian_error;
    wins += a->report.hessian_error < b->report.hessian_error;
  }
  MESSAGE("billm Hessian-weighted error over 6 layers: compensated " << with << ", not compensated " << without);
  CHECK(with < 0.9 * without);
  CHECK(wins >= 5);
}

TEST_CASE("billm: identical output for 1 and 2 threads") {
  const problem p = make_calibrated_problem(40, 300, 17, 500);
  const auto a = pipeline::quantize_billm(p.w(), p.factor, {}, inline_executor{});
  const auto b = pipeline::quantize_billm(p.w(), p.factor, {}, thread_executor(2));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(same_bits(a->dequantized, b->dequantized));
  CHECK(a->packed.salient == b->packed.salient);
  CHECK(a->packed.signs == b->packed.signs);
  CHECK(a->packed.second == b->packed.second);
  CHECK(std::memcmp(a->packed.scales.data(), b->packed.scales.data(), a->packed.scales.size() * 2) == 0);
}

TEST_CASE("billm: bad input gives a clear status") {
  const problem p = make_calibrated_problem(8, 64, 23, 128);
  std::vector<float> w = p.layer.weights;
  const auto wv = make_matrix_view(std::as_const(w).data(), 8, 64);
  pipeline::billm_config cfg;
  cfg.block_size = 100;
  CHECK(pipeline::quantize_billm(wv, p.factor, cfg).code() == status::invalid_argument);
  cfg = {};
  cfg.max_salient_columns = 1;
  CHECK(pipeline::quantize_billm(wv, p.factor, cfg).code() == status::invalid_argument);
  cfg = {};
  cfg.split_quantile_min = 0.95f;
  CHECK(pipeline::quantize_billm(wv, p.factor, cfg).code() == status::invalid_argument);
  CHECK(pipeline::quantize_billm(make_matrix_view(std::as_const(w).data(), 16, 32), p.factor).code() ==
        status::invalid_shape);
  w[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK(pipeline::quantize_billm(wv, p.factor).code() == status::non_finite_input);
  w[5] = 1e30f;  // finite, beyond fp16
  const auto huge = pipeline::quantize_billm(wv, p.factor);
  CHECK(huge.code() == status::unsupported);
  CHECK(!huge.has_value());
  calib::hessian_factor reordered = p.factor;
  std::swap(reordered.perm[0], reordered.perm[1]);
  CHECK(pipeline::quantize_billm(p.w(), reordered).code() == status::unsupported);
}

TEST_CASE("billm: bits per weight and relative output error against q1_0 and 2-bit rtn") {
  for (const auto& [rows, cols] : {std::pair<index_t, index_t>{512, 512}, {1408, 512}}) {
    const problem p = make_calibrated_problem(rows, cols, 31, 1024);
    auto billm = pipeline::quantize_billm(p.w(), p.factor, {}, thread_executor(2));
    auto q1 = pipeline::quantize_q1_0_method(p.w(), &p.factor);
    auto rtn2 = pipeline::quantize_rtn_method(p.w(), quant::rtn_config{2, 128, false}, &p.factor);
    REQUIRE(billm.ok());
    REQUIRE(q1.ok());
    REQUIRE(rtn2.ok());
    const auto x = p.layer.activation_view().block(0, 0, 256, cols);
    const double e_billm = quant::relative_output_error(p.w(), billm->dequantized_view(), x);
    const double e_q1 = quant::relative_output_error(p.w(), q1->dequantized_view(), x);
    const double e_rtn2 = quant::relative_output_error(p.w(), rtn2->dequantized_view(), x);
    const auto& b = billm->report.bits;
    MESSAGE(rows << " x " << cols << ": billm full " << b.full_bpw() << " bpw, paper " << b.paper_bpw()
                 << " bpw, salient " << billm->report.salient_fraction << ", output error " << e_billm << " ("
                 << billm->report.times.total() << " s); q1_0 " << q1->report.bits.full_bpw() << " bpw, " << e_q1
                 << "; rtn 2-bit g128 " << rtn2->report.bits.full_bpw() << " bpw, " << e_rtn2);
    CHECK(b.full_bpw() == doctest::Approx(2.0 + 1.0 / static_cast<double>(rows) + 1.0));
    CHECK(b.paper_bpw() == doctest::Approx(1.0 + billm->report.salient_fraction + 1.0 / static_cast<double>(rows)));
    CHECK(e_billm < e_q1);
  }
}
