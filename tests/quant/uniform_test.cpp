#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <sageptq/core/random.hpp>
#include <sageptq/quant/uniform.hpp>

using namespace sageptq;

namespace {

std::vector<float> heavy_tailed(index_t rows, index_t cols, std::uint64_t seed) {
  random_generator rng(seed);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (auto& v : w) v = static_cast<float>(0.02 * rng.student_t(4) + 0.003);  // a little off-centre
  return w;
}

/// GPTQ's min-max grid with plain scalars, the scale rounded to fp16 first (our convention).
struct scalar_grid {
  float scale, zero, maxq;
  float quantize(float x) const {
    if (scale == 0) return 0;
    const float q = std::min(std::max(std::nearbyint(x / scale + zero), 0.0f), maxq);
    return scale * (q - zero);
  }
};

scalar_grid scalar_fit(float lo, float hi, int bits, bool symmetric, bool round_scale) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  auto r = [&](float s) { return round_scale ? static_cast<float>(fp16(s)) : s; };
  if (symmetric) return {r(std::max(-lo, hi) / (maxq / 2)), maxq / 2, maxq};
  const float scale = r((hi - lo) / maxq);
  return {scale, scale > 0 ? std::min(std::max(std::nearbyint(-lo / scale), 0.0f), maxq) : 0.0f, maxq};
}

/// quant.py's find_params(mse=True) on one row, with plain loops.
scalar_grid scalar_mse_fit(const float* x, index_t n, int bits, bool symmetric, bool round_scale) {
  float lo = x[0], hi = x[0];
  for (index_t i = 1; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  scalar_grid best = scalar_fit(lo, hi, bits, symmetric, round_scale);
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 80; ++i) {
    const float p = static_cast<float>(1.0 - i / 100.0);
    const scalar_grid g = scalar_fit(p * lo, p * hi, bits, symmetric, round_scale);
    double err = 0;
    for (index_t j = 0; j < n; ++j) err += std::pow(std::fabs(g.quantize(x[j]) - x[j]), 2.4f);
    if (err < best_err) best_err = err, best = g;
  }
  return best;
}

}  // namespace

TEST_CASE("uniform quantizer matches a scalar reference: min-max and MSE search, per row and per group") {
  const index_t rows = 24, cols = 200;
  const auto w = heavy_tailed(rows, cols, 11);
  const auto wv = make_matrix_view(w.data(), rows, cols);
  for (int bits : {1, 2, 3, 4, 8})
    for (bool symmetric : {false, true})
      for (bool mse : {false, true})
        for (index_t group : {index_t{0}, index_t{64}}) {
          CAPTURE(bits);
          CAPTURE(symmetric);
          CAPTURE(mse);
          CAPTURE(group);
          const quant::uniform_config cfg{bits, group, symmetric, mse, {}};
          auto m = quant::quantize_uniform(wv, cfg);
          REQUIRE(m.ok());
          const index_t g = group == 0 ? cols : group;
          CHECK(m->groups_per_row == (cols + g - 1) / g);
          int mismatches = 0;
          for (index_t r = 0; r < rows; ++r)
            for (index_t c0 = 0; c0 < cols; c0 += g) {
              const index_t n = std::min(g, cols - c0);
              const float* x = w.data() + r * cols + c0;
              scalar_grid ref;
              if (mse) {
                ref = scalar_mse_fit(x, n, bits, symmetric, true);
              } else {
                float lo = x[0], hi = x[0];
                for (index_t i = 1; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
                ref = scalar_fit(lo, hi, bits, symmetric, true);
              }
              const auto& got = m->grid(r, c0);
              mismatches += got.scale != ref.scale || got.zero != ref.zero;
              for (index_t c = c0; c < c0 + n; ++c) mismatches += m->value(r, c) != ref.quantize(x[c - c0]);
            }
          CHECK(mismatches == 0);
        }
}

TEST_CASE("MSE range search: fp16 scale rounding costs a negligible error, and the search beats min-max") {
  // GPTQ does not round its scales; we do, so that a stored scale reproduces the output. Measure the difference.
  const index_t rows = 64, cols = 512;
  const auto w = heavy_tailed(rows, cols, 12);
  for (int bits : {2, 3, 4}) {
    double ours = 0, gptq = 0, minmax = 0;
    auto m = quant::quantize_uniform(make_matrix_view(w.data(), rows, cols), {bits, 0, false, true, {}});
    REQUIRE(m.ok());
    for (index_t r = 0; r < rows; ++r) {
      const float* x = w.data() + r * cols;
      const scalar_grid exact = scalar_mse_fit(x, cols, bits, false, false);
      float lo = x[0], hi = x[0];
      for (index_t i = 1; i < cols; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
      const scalar_grid mm = scalar_fit(lo, hi, bits, false, true);
      for (index_t c = 0; c < cols; ++c) {
        ours += std::pow(static_cast<double>(m->value(r, c)) - x[c], 2);
        gptq += std::pow(static_cast<double>(exact.quantize(x[c])) - x[c], 2);
        minmax += std::pow(static_cast<double>(mm.quantize(x[c])) - x[c], 2);
      }
    }
    CAPTURE(bits);
    CAPTURE(ours / gptq - 1);
    CHECK(std::abs(ours / gptq - 1) < 2e-3);
    CHECK(ours < minmax);
  }
}

TEST_CASE("range search kernel: pow_nonneg and range_error against std::pow on fresh random inputs") {
  random_generator rng(21);
  double worst = 0;
  for (int i = 0; i < 200000; ++i) {
    const auto e = static_cast<float>(std::ldexp(1.0 + rng.uniform(), static_cast<int>(rng.uniform() * 60) - 50));
    const auto p = static_cast<float>(0.5 + 3.5 * rng.uniform());
    const double ref = std::pow(static_cast<double>(e), static_cast<double>(p));
    if (ref < 1e-36) continue;
    worst = std::max(worst, std::abs(quant::detail::pow_nonneg(e, p) - ref) / ref);
  }
  CAPTURE(worst);
  CHECK(worst < 1e-5);
  CHECK(quant::detail::pow_nonneg(0.0f, 2.4f) == 0.0f);
  CHECK(quant::detail::pow_nonneg(1e-35f, 2.4f) == 0.0f);
  CHECK(quant::detail::pow_nonneg(1.0f, 2.4f) == doctest::Approx(1.0).epsilon(1e-6));

  // range_error: the sum of |q - x|^norm with uniform_grid::quantize's codes, for ragged lengths and scale 0.
  for (index_t n : {index_t{1}, index_t{7}, index_t{255}, index_t{256}, index_t{1000}}) {
    const auto x = heavy_tailed(1, n, static_cast<std::uint64_t>(100 + n));
    for (float shrink : {1.0f, 0.6f, 0.25f}) {
      const quant::uniform_grid g = quant::fit_minmax_grid(-0.05f * shrink, 0.04f * shrink, 3, false);
      double ref = 0;
      for (float v : x) ref += std::pow(std::abs(static_cast<double>(g.quantize(v)) - v), 2.4);
      const double got = quant::detail::range_error(x, g, 2.4f, std::numeric_limits<double>::infinity());
      CAPTURE(n);
      CAPTURE(shrink);
      CHECK(got == doctest::Approx(ref).epsilon(1e-5));
      // A bound below the error stops early with a partial sum that already reaches it.
      if (n > 256) CHECK(quant::detail::range_error(x, g, 2.4f, ref * 0.01) >= ref * 0.01);
    }
    double zero_ref = 0;
    for (float v : x) zero_ref += std::pow(std::abs(static_cast<double>(v)), 2.4);
    CHECK(quant::detail::range_error(x, quant::uniform_grid{}, 2.4f, std::numeric_limits<double>::infinity()) ==
          doctest::Approx(zero_ref).epsilon(1e-5));
  }
}

TEST_CASE("range search with importances: weighted error, and a grid that spares the costly values") {
  // range_error with importances is the weighted sum, for ragged lengths (the 256-value chunks).
  for (index_t n : {index_t{5}, index_t{256}, index_t{700}}) {
    const auto x = heavy_tailed(1, n, static_cast<std::uint64_t>(300 + n));
    random_generator rng(static_cast<std::uint64_t>(n));
    std::vector<float> importance(static_cast<std::size_t>(n));
    for (auto& v : importance) v = static_cast<float>(0.1 + 10 * rng.uniform());
    const quant::uniform_grid g = quant::fit_minmax_grid(-0.03f, 0.02f, 2, false);
    double ref = 0;
    for (index_t i = 0; i < n; ++i)
      ref += importance[static_cast<std::size_t>(i)] *
             std::pow(std::abs(static_cast<double>(g.quantize(x[static_cast<std::size_t>(i)])) - x[static_cast<std::size_t>(i)]), 2.4);
    CAPTURE(n);
    CHECK(quant::detail::range_error(x, g, 2.4f, std::numeric_limits<double>::infinity(), importance) ==
          doctest::Approx(ref).epsilon(1e-5));
  }
  // 200 ordinary values and 4 large ones that cost 400x each (channels of large activations): the unweighted
  // search clips the large ones; weighted, the grid keeps them and its weighted error is far lower.
  random_generator rng(5);
  std::vector<float> x, importance;
  for (int i = 0; i < 200; ++i) {
    x.push_back(static_cast<float>(0.01 * rng.normal()));
    importance.push_back(1.0f);
  }
  for (float big : {0.09f, -0.08f, 0.07f, -0.1f}) {
    x.push_back(big);
    importance.push_back(400.0f);
  }
  const quant::uniform_config cfg{3, 0, false, true, {}};
  const auto view = make_vector_view(static_cast<const float*>(x.data()), std::ssize(x));
  const quant::uniform_grid plain = quant::fit_uniform_grid(view, cfg);
  const quant::uniform_grid weighted = quant::fit_uniform_grid(view, cfg, importance);
  const auto weighted_error = [&](const quant::uniform_grid& g) {
    return quant::detail::range_error(x, g, 2.4f, std::numeric_limits<double>::infinity(), importance);
  };
  CHECK(weighted.scale > plain.scale);  // a wider range
  CHECK(weighted_error(weighted) < 0.5 * weighted_error(plain));
  // Equal importances choose the unweighted grid.
  const std::vector<float> ones(x.size(), 2.0f);  // a power of two: every weighted sum is exactly twice
  const quant::uniform_grid same = quant::fit_uniform_grid(view, cfg, ones);
  CHECK(same.scale == plain.scale);
  CHECK(same.zero == plain.zero);
}

TEST_CASE("uniform quantizer: codes, thread invariance and bad input") {
  const index_t rows = 40, cols = 100;
  auto w = heavy_tailed(rows, cols, 13);
  const quant::uniform_config cfg{3, 32, false, true, {}};
  auto one = quant::quantize_uniform(make_matrix_view(w.data(), rows, cols), cfg);
  auto two = quant::quantize_uniform(make_matrix_view(w.data(), rows, cols), cfg, thread_executor(2));
  REQUIRE(one.ok());
  REQUIRE(two.ok());
  CHECK(one->codes == two->codes);
  CHECK(one->dequantize() == two->dequantize());
  for (auto code : one->codes) CHECK(code <= 7);
  CHECK(one->column_group[99] == 3);  // the last, partial group
  for (const auto& g : one->grids) CHECK(static_cast<float>(fp16(g.scale)) == g.scale);

  // An all-zero row quantizes to zeros.
  std::vector<float> zeros(static_cast<std::size_t>(cols), 0.0f);
  auto z = quant::quantize_uniform(make_matrix_view(zeros.data(), 1, cols), cfg);
  REQUIRE(z.ok());
  for (float v : z->dequantize()) CHECK(v == 0.0f);

  const auto wv = make_matrix_view(w.data(), rows, cols);
  CHECK(quant::quantize_uniform(wv, {0, 0, false, false, {}}).code() == status::invalid_argument);
  CHECK(quant::quantize_uniform(wv, {9, 0, false, false, {}}).code() == status::invalid_argument);
  CHECK(quant::quantize_uniform(wv, {2, -1, false, false, {}}).code() == status::invalid_argument);
  CHECK(quant::quantize_uniform(wv, {2, 0, false, true, {0, 0.8, 2.4}}).code() == status::invalid_argument);
  CHECK(quant::quantize_uniform(wv, {2, 0, false, true, {100, 0.8, 17.0}}).code() == status::invalid_argument);
  CHECK(quant::quantize_uniform(wv, {2, 0, false, true, {100, 0.8, 16.0}}).ok());
  CHECK(quant::quantize_uniform(make_matrix_view(w.data(), 0, cols), cfg).code() == status::invalid_shape);
  w[5] = std::nanf("");
  CHECK(quant::quantize_uniform(wv, cfg).code() == status::non_finite_input);
  w[5] = 1e30f;  // the scale overflows fp16
  CHECK(quant::quantize_uniform(wv, cfg).code() == status::unsupported);
}
