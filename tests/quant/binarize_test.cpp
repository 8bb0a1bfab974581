// quant/binarize.hpp against plain references on seeded random inputs: closed forms (alpha = mean|w|, with mean,
// Hessian-weighted), alternating refinement, per-(row, group), shared and factorized group scales, bad input.

#include "sageptq/quant/binarize.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "sageptq/core/executor.hpp"
#include "sageptq/core/random.hpp"

namespace sp = sageptq;
namespace q = sageptq::quant;
using sp::index_t;

namespace {

std::vector<float> heavy_tailed(std::uint64_t seed, std::size_t n, double shift = 0.0) {
  sp::random_generator rng(seed);
  std::vector<float> w(n);
  for (auto& v : w) v = static_cast<float>(0.02 * rng.student_t(4) + shift);
  return w;
}

std::vector<float> positive_weights(std::uint64_t seed, std::size_t n) {
  sp::random_generator rng(seed);
  std::vector<float> h(n);
  for (auto& v : h) v = static_cast<float>(0.1 + 2.0 * rng.uniform());
  return h;
}

// Plain reference: weighted closed form, written as the formulas read.
q::binary_scalar reference_closed_form(const std::vector<float>& w, const std::vector<float>& h, bool with_mean,
                                       bool fp16) {
  auto round = [&](double v) { return fp16 ? sp::round_to_fp16(static_cast<float>(v)) : static_cast<float>(v); };
  double sh = 0, shw = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double hi = h.empty() ? 1.0 : h[i];
    sh += hi;
    shw += hi * w[i];
  }
  q::binary_scalar b;
  b.mu = with_mean ? round(shw / sh) : 0.0f;
  double dev = 0;
  for (std::size_t i = 0; i < w.size(); ++i)
    dev += (h.empty() ? 1.0 : h[i]) * std::fabs(static_cast<double>(w[i]) - b.mu);
  b.alpha = round(dev / sh);
  return b;
}

double weighted_error(const std::vector<float>& w, const std::vector<float>& h, const q::binary_scalar& b, bool mean) {
  double e = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double d = w[i] - static_cast<double>(q::binary_value(b, w[i], mean));
    e += (h.empty() ? 1.0 : h[i]) * d * d;
  }
  return e;
}

// Plain reference ARB loop: explicit sign vector, 2x2 solve by Cramer's rule, stop when the signs repeat.
q::binary_fit reference_refine(const std::vector<float>& w, const std::vector<float>& h, q::binary_scalar b,
                               int max_iter) {
  q::binary_fit fit{b, 0, false};
  std::vector<int> signs(w.size());
  for (int it = 0; it < max_iter; ++it) {
    for (std::size_t i = 0; i < w.size(); ++i) signs[i] = w[i] >= fit.scalar.mu ? 1 : -1;
    double a = 0, bb = 0, c = 0, d = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double hi = h.empty() ? 1.0 : h[i];
      a += hi, bb += hi * signs[i], c += hi * w[i], d += hi * signs[i] * w[i];
    }
    const double det = a * a - bb * bb;
    fit.scalar.mu = sp::round_to_fp16(static_cast<float>((a * c - bb * d) / det));
    fit.scalar.alpha = sp::round_to_fp16(static_cast<float>((a * d - bb * c) / det));
    fit.iterations = it + 1;
    bool same = true;
    for (std::size_t i = 0; i < w.size(); ++i) same = same && signs[i] == (w[i] >= fit.scalar.mu ? 1 : -1);
    if (same) {
      fit.converged = true;
      break;
    }
  }
  return fit;
}

}  // namespace

TEST_CASE("binarize: alpha = mean|w| for one group without a mean") {
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    const auto w = heavy_tailed(seed, 300 + seed);
    double sum = 0;
    for (float v : w) sum += std::fabs(static_cast<double>(v));
    const auto exact = q::fit_binary(w, {}, {.with_mean = false, .max_iter = 0, .fp16_scalars = false});
    CHECK(exact.alpha == static_cast<float>(sum / static_cast<double>(w.size())));
    CHECK(exact.mu == 0.0f);
    const auto stored = q::fit_binary(w, {}, {});
    CHECK(stored.alpha == sp::round_to_fp16(static_cast<float>(sum / static_cast<double>(w.size()))));
    // L2-optimal for the signs sign(w): any other alpha is worse.
    const double e = weighted_error(w, {}, exact, false);
    CHECK(weighted_error(w, {}, {exact.alpha * 1.01f, 0.0f}, false) > e);
    CHECK(weighted_error(w, {}, {exact.alpha * 0.99f, 0.0f}, false) > e);
  }
}

TEST_CASE("binarize: closed form with mean and with Hessian weights matches the reference") {
  for (std::uint64_t seed = 10; seed < 16; ++seed) {
    const auto w = heavy_tailed(seed, 257, 0.01);
    const auto h = positive_weights(seed + 100, w.size());
    for (bool mean : {false, true})
      for (bool fp16 : {false, true})
        for (const auto* weights : {static_cast<const std::vector<float>*>(nullptr), &h}) {
          const std::vector<float> hw = weights ? *weights : std::vector<float>{};
          const auto got = q::fit_binary(w, hw, {.with_mean = mean, .max_iter = 0, .fp16_scalars = fp16});
          CHECK(got == reference_closed_form(w, hw, mean, fp16));
        }
  }
  CHECK(q::fit_binary({}, {}, {}) == q::binary_scalar{});
}

TEST_CASE("binarize: alternating refinement matches the reference loop and never increases the error") {
  int refined = 0;
  for (std::uint64_t seed = 20; seed < 40; ++seed) {
    sp::random_generator rng(seed);
    std::vector<float> w(200);
    for (auto& v : w)
      v = static_cast<float>(rng.uniform() < 0.8 ? 0.01 * rng.normal() : 0.05 + 0.02 * rng.normal());  // skewed
    const auto h = seed % 2 ? positive_weights(seed, w.size()) : std::vector<float>{};
    const q::binarize_options opts{.with_mean = true, .max_iter = 50, .fp16_scalars = true};
    const auto start = q::fit_binary(w, h, opts);
    const auto fit = q::refine_binary(w, h, start, opts);
    const auto ref = reference_refine(w, h, start, 50);
    CHECK(fit.scalar == ref.scalar);
    CHECK(fit.iterations == ref.iterations);
    CHECK(fit.converged);
    CHECK(weighted_error(w, h, fit.scalar, true) <= weighted_error(w, h, start, true) * (1 + 1e-3));
    refined += fit.iterations > 1;
  }
  CHECK(refined > 0);  // the skewed inputs did move the signs
  // Without a mean the closed form is already optimal: one solve, same alpha.
  const auto w = heavy_tailed(3, 100);
  const auto fit = q::binarize(w, {}, {.with_mean = false, .max_iter = 10, .fp16_scalars = true});
  CHECK(fit.iterations == 1);
  CHECK(fit.scalar == q::fit_binary(w, {}, {}));
  // All values equal: the constant itself, alpha 0.
  const std::vector<float> flat(10, 0.25f);
  CHECK(q::binarize(flat, {}, {.with_mean = true, .max_iter = 5, .fp16_scalars = true}).scalar ==
        q::binary_scalar{0.0f, 0.25f});
}

TEST_CASE("binarize: per-(row, group) and shared groups match per-group references, for any thread count") {
  const index_t rows = 7, cols = 172;
  const auto w = heavy_tailed(50, static_cast<std::size_t>(rows * cols));
  const auto h = positive_weights(51, static_cast<std::size_t>(cols));
  std::vector<std::int32_t> ids(static_cast<std::size_t>(cols));
  for (index_t c = 0; c < cols; ++c)
    ids[static_cast<std::size_t>(c)] = c % 11 == 0 ? -1 : static_cast<std::int32_t>(c % 3);
  const auto wv = sp::make_matrix_view(w.data(), rows, cols);
  const q::binarize_options opts{.with_mean = true, .max_iter = 20, .fp16_scalars = true};

  auto table = q::binarize_row_groups(wv, q::column_groups{ids}, 3, opts, h);
  REQUIRE(table.ok());
  auto threaded = q::binarize_row_groups(wv, q::column_groups{ids}, 3, opts, h, sp::thread_executor(2));
  REQUIRE(threaded.ok());
  CHECK(threaded->scalars == table->scalars);
  for (index_t r = 0; r < rows; ++r)
    for (int g = 0; g < 3; ++g) {
      std::vector<float> values, weights;
      for (index_t c = 0; c < cols; ++c)
        if (ids[static_cast<std::size_t>(c)] == g)
          values.push_back(wv(r, c)), weights.push_back(h[static_cast<std::size_t>(c)]);
      const auto start = reference_closed_form(values, weights, true, true);
      CHECK((*table)(r, g) == reference_refine(values, weights, start, 20).scalar);
    }

  auto shared = q::binarize_shared_groups(wv, q::column_groups{ids}, 3,
                                          {.with_mean = false, .max_iter = 0, .fp16_scalars = true});
  REQUIRE(shared.ok());
  CHECK(shared->rows == 1);
  for (int g = 0; g < 3; ++g) {
    std::vector<float> values;
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c)
        if (ids[static_cast<std::size_t>(c)] == g) values.push_back(wv(r, c));
    CHECK((*shared)(0, g) == reference_closed_form(values, {}, false, true));
  }

  // Per-weight (value) groups through a callable map: |w| above or below 0.02.
  auto by_value = [&](index_t r, index_t c) { return std::fabs(wv(r, c)) > 0.02f ? 1 : 0; };
  auto values_table = q::binarize_row_groups(wv, by_value, 2, {});
  REQUIRE(values_table.ok());
  CHECK((*values_table)(0, 1).alpha > (*values_table)(0, 0).alpha);
}

TEST_CASE("binarize: refinement limits are reported as no_convergence with the value") {
  bool found = false;
  for (std::uint64_t seed = 1; seed < 50 && !found; ++seed) {
    sp::random_generator rng(seed);
    std::vector<float> w(64);
    for (auto& v : w) v = static_cast<float>(std::exp(2.0 * rng.normal()));  // strongly skewed
    const auto wv = sp::make_matrix_view(w.data(), 1, 64);
    auto r = q::binarize_row_groups(wv, [](index_t, index_t) { return 0; }, 1,
                                    {.with_mean = true, .max_iter = 1, .fp16_scalars = true});
    if (r.code() == sp::status::no_convergence) {
      found = true;
      CHECK(r.has_value());
      CHECK(r->max_iterations == 1);
    }
  }
  CHECK(found);
}

TEST_CASE("binarize: factorized alpha_r * beta_g") {
  const index_t rows = 12, cols = 96;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(cols));
  for (index_t c = 0; c < cols; ++c) ids[static_cast<std::size_t>(c)] = c == 5 ? -1 : static_cast<std::int32_t>(c % 4);

  SUBCASE("one group: alpha_r = mean|w| of the row") {
    const auto w = heavy_tailed(60, static_cast<std::size_t>(rows * cols));
    std::vector<std::int32_t> one(static_cast<std::size_t>(cols), 0);
    one[5] = -1;
    auto s = q::fit_factorized(sp::make_matrix_view(w.data(), rows, cols), one, 1);
    REQUIRE(s.ok());
    CHECK(s->group[0] == 1.0f);
    for (index_t r = 0; r < rows; ++r) {
      double sum = 0;
      for (index_t c = 0; c < cols; ++c)
        if (c != 5) sum += std::fabs(static_cast<double>(w[static_cast<std::size_t>(r * cols + c)]));
      CHECK(s->row[static_cast<std::size_t>(r)] == sp::round_to_fp16(static_cast<float>(sum / (cols - 1))));
    }
  }
  SUBCASE("exact rank-1 magnitudes are recovered, and alpha is optimal for the stored beta") {
    sp::random_generator rng(61);
    std::vector<float> a(static_cast<std::size_t>(rows)), b(4), w(static_cast<std::size_t>(rows * cols));
    for (auto& v : a) v = static_cast<float>(0.01 + 0.05 * rng.uniform());
    for (auto& v : b) v = static_cast<float>(0.5 + rng.uniform());
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c)
        w[static_cast<std::size_t>(r * cols + c)] =
            a[static_cast<std::size_t>(r)] * b[static_cast<std::size_t>(c % 4)] * (rng.below(2) ? 1.0f : -1.0f);
    const auto wv = sp::make_matrix_view(w.data(), rows, cols);
    auto s = q::fit_factorized(wv, ids, 4);
    REQUIRE(s.ok());
    auto threaded = q::fit_factorized(wv, ids, 4, {}, {}, sp::thread_executor(2));
    CHECK(threaded->row == s->row);
    CHECK(threaded->group == s->group);
    for (index_t r = 0; r < rows; ++r)
      for (int g = 0; g < 4; ++g)
        CHECK(s->scale(r, g) ==
              doctest::Approx(a[static_cast<std::size_t>(r)] * b[static_cast<std::size_t>(g)]).epsilon(2e-3));
    auto objective = [&](index_t r, float alpha) {
      double e = 0;
      for (index_t c = 0; c < cols; ++c) {
        const int g = ids[static_cast<std::size_t>(c)];
        if (g < 0) continue;
        const double d = std::fabs(wv(r, c)) - static_cast<double>(alpha) * s->group[static_cast<std::size_t>(g)];
        e += d * d;
      }
      return e;
    };
    for (index_t r = 0; r < rows; ++r) {
      const sp::fp16 h(s->row[static_cast<std::size_t>(r)]);
      const float up = sp::fp16::from_bits(static_cast<std::uint16_t>(h.bits + 1)).to_float();
      const float down = sp::fp16::from_bits(static_cast<std::uint16_t>(h.bits - 1)).to_float();
      CHECK(objective(r, s->row[static_cast<std::size_t>(r)]) <= objective(r, up));
      CHECK(objective(r, s->row[static_cast<std::size_t>(r)]) <= objective(r, down));
    }
    // The quantizer's value is the decoder's product, sign by sign.
    CHECK(s->value(0, 1, -0.5f) == -(s->row[0] * s->group[1]));
  }
  SUBCASE("Hessian-weighted fit on heavy-tailed data: no nearby beta does better") {
    auto w = heavy_tailed(62, static_cast<std::size_t>(rows * cols));
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) w[static_cast<std::size_t>(r * cols + c)] *= 1.0f + static_cast<float>(c % 4);
    const auto h = positive_weights(63, static_cast<std::size_t>(cols));
    const auto wv = sp::make_matrix_view(w.data(), rows, cols);
    auto s = q::fit_factorized(wv, ids, 4, {}, h);
    REQUIRE(s.ok());
    // Weighted objective for given beta, with every alpha_r at its weighted least-squares optimum.
    auto objective = [&](const std::vector<double>& beta) {
      double total = 0;
      for (index_t r = 0; r < rows; ++r) {
        double num = 0, den = 0;
        for (index_t c = 0; c < cols; ++c)
          if (const int g = ids[static_cast<std::size_t>(c)]; g >= 0) {
            num += h[static_cast<std::size_t>(c)] * std::fabs(wv(r, c)) * beta[static_cast<std::size_t>(g)];
            den +=
                h[static_cast<std::size_t>(c)] * beta[static_cast<std::size_t>(g)] * beta[static_cast<std::size_t>(g)];
          }
        const double alpha = num / den;
        for (index_t c = 0; c < cols; ++c)
          if (const int g = ids[static_cast<std::size_t>(c)]; g >= 0) {
            const double d = std::fabs(wv(r, c)) - alpha * beta[static_cast<std::size_t>(g)];
            total += h[static_cast<std::size_t>(c)] * d * d;
          }
      }
      return total;
    };
    const std::vector<double> found(s->group.begin(), s->group.end());
    const double best = objective(found);
    CHECK(best < objective({1.0, 1.0, 1.0, 1.0}));  // better than one scale per row
    for (int g = 0; g < 4; ++g)
      for (double step : {0.98, 1.02}) {
        auto moved = found;
        moved[static_cast<std::size_t>(g)] *= step;
        CHECK(best <= objective(moved));
      }
  }
  SUBCASE("bad input") {
    std::vector<float> w(static_cast<std::size_t>(rows * cols), 0.1f);
    const auto wv = sp::make_matrix_view(w.data(), rows, cols);
    auto bad_ids = ids;
    bad_ids[3] = 4;
    CHECK(q::fit_factorized(wv, bad_ids, 4).code() == sp::status::invalid_argument);
    CHECK(q::fit_factorized(wv, std::span(ids).first(10), 4).code() == sp::status::invalid_shape);
    CHECK(q::fit_factorized(wv, ids, 0).code() == sp::status::invalid_argument);
    const std::vector<float> negative(static_cast<std::size_t>(cols), -1.0f);
    CHECK(q::fit_factorized(wv, ids, 4, {}, negative).code() == sp::status::invalid_argument);
    w[7] = std::nanf("");
    CHECK(q::fit_factorized(wv, ids, 4).code() == sp::status::non_finite_input);
    CHECK(q::binarize_row_groups(wv, q::column_groups{ids}, 4, {}).code() == sp::status::non_finite_input);
    w[7] = 0.0f;
    CHECK(q::binarize_row_groups(wv, q::column_groups{bad_ids}, 4, {}).code() == sp::status::invalid_argument);
    CHECK(q::binarize_shared_groups(wv, q::column_groups{bad_ids}, 4, {}).code() == sp::status::invalid_argument);
    // A zero matrix gives zero scales, not NaN.
    std::vector<float> zero(static_cast<std::size_t>(rows * cols), 0.0f);
    auto s = q::fit_factorized(sp::make_matrix_view(zero.data(), rows, cols), ids, 4);
    REQUIRE(s.has_value());
    for (float v : s->row) CHECK(v == 0.0f);
    for (float v : s->group) CHECK(sp::is_finite(v));
  }
}
