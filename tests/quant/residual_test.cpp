// quant/residual.hpp against a plain BiLLM-style high_order_residual reference on seeded random inputs.

#include "sageptq/quant/residual.hpp"

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

std::vector<float> gaussian(std::uint64_t seed, std::size_t n) {
  sp::random_generator rng(seed);
  std::vector<float> w(n);
  for (auto& v : w) v = static_cast<float>(0.02 * rng.normal() + 0.003);
  return w;
}

// BiLLM's high_order_residual as it reads: mu = mean(x), alpha = mean|x - mu|, q = alpha sign(x - mu) + mu, then
// the same on x - q; scalars stored in fp16.
struct reference_result {
  std::vector<q::binary_scalar> terms;
  std::vector<float> values;
};
reference_result reference_residual(const std::vector<float>& w, int order) {
  reference_result out;
  std::vector<float> x = w;
  out.values.assign(w.size(), 0.0f);
  for (int k = 0; k < order; ++k) {
    double sum = 0;
    for (float v : x) sum += v;
    const float mu = sp::round_to_fp16(static_cast<float>(sum / static_cast<double>(x.size())));
    double dev = 0;
    for (float v : x) dev += std::fabs(static_cast<double>(v) - mu);
    const float alpha = sp::round_to_fp16(static_cast<float>(dev / static_cast<double>(x.size())));
    out.terms.push_back({alpha, mu});
    for (std::size_t i = 0; i < x.size(); ++i) {
      const float t = (x[i] >= mu ? alpha : -alpha) + mu;
      out.values[i] = k == 0 ? t : out.values[i] + t;
      x[i] -= t;
    }
  }
  return out;
}

double mse(const std::vector<float>& w, const std::vector<q::binary_scalar>& terms) {
  double e = 0;
  for (float v : w) {
    const double d = v - static_cast<double>(q::residual_quantize(terms, v, true).value);
    e += d * d;
  }
  return e / static_cast<double>(w.size());
}

}  // namespace

TEST_CASE("residual: order-k terms and values match the BiLLM reference") {
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    const auto w = gaussian(seed, 128 + seed);
    for (int order = 1; order <= 3; ++order) {
      const auto fit = q::fit_residual(w, {}, {.order = order});
      const auto ref = reference_residual(w, order);
      REQUIRE(fit.terms.size() == static_cast<std::size_t>(order));
      for (int k = 0; k < order; ++k)
        CHECK(fit.terms[static_cast<std::size_t>(k)] == ref.terms[static_cast<std::size_t>(k)]);
      for (std::size_t i = 0; i < w.size(); ++i)
        CHECK(q::residual_quantize(fit.terms, w[i], true).value == ref.values[i]);
    }
    // Order 1 is plain binarization with a mean.
    CHECK(q::fit_residual(w, {}, {.order = 1}).terms[0] == q::fit_binary(w, {}, {.with_mean = true}));
    // Every extra order lowers the error.
    const double e1 = mse(w, q::fit_residual(w, {}, {.order = 1}).terms);
    const double e2 = mse(w, q::fit_residual(w, {}, {.order = 2}).terms);
    const double e3 = mse(w, q::fit_residual(w, {}, {.order = 3}).terms);
    CHECK(e2 < 0.5 * e1);
    CHECK(e3 < e2);
  }
}

TEST_CASE("residual: the sign bits reproduce the value term by term") {
  const auto w = gaussian(9, 64);
  const auto fit = q::fit_residual(w, {}, {.order = 3});
  for (float v : w) {
    const auto p = q::residual_quantize(fit.terms, v, true);
    float value = 0;
    for (std::size_t k = 0; k < 3; ++k) {
      const float a = (p.positive >> k) & 1u ? fit.terms[k].alpha : -fit.terms[k].alpha;
      value = k == 0 ? a + fit.terms[k].mu : value + (a + fit.terms[k].mu);
    }
    CHECK(value == p.value);
  }
}

TEST_CASE("residual: per row per mask, for any thread count, and bad input") {
  const index_t rows = 5, cols = 90;
  const auto w = gaussian(20, static_cast<std::size_t>(rows * cols));
  const auto wv = sp::make_matrix_view(w.data(), rows, cols);
  auto mask = [](index_t, index_t c) { return c % 3 == 0 ? 0 : -1; };  // a salient-column-like mask
  auto table = q::residual_row_groups(wv, mask, 1, {.order = 2});
  REQUIRE(table.ok());
  auto threaded = q::residual_row_groups(wv, mask, 1, {.order = 2}, {}, sp::thread_executor(2));
  REQUIRE(threaded.ok());
  CHECK(threaded->terms == table->terms);
  for (index_t r = 0; r < rows; ++r) {
    std::vector<float> masked;
    for (index_t c = 0; c < cols; c += 3) masked.push_back(wv(r, c));
    const auto ref = reference_residual(masked, 2);
    const auto got = (*table)(r, 0);
    CHECK(got[0] == ref.terms[0]);
    CHECK(got[1] == ref.terms[1]);
  }
  CHECK(q::residual_row_groups(wv, mask, 1, {.order = 0}).code() == sp::status::invalid_argument);
  CHECK(q::residual_row_groups(wv, [](index_t, index_t) { return 2; }, 2, {}).code() == sp::status::invalid_argument);
  std::vector<float> bad = w;
  bad[3] = INFINITY;
  CHECK(q::residual_row_groups(sp::make_matrix_view(bad.data(), rows, cols), mask, 1, {}).code() ==
        sp::status::non_finite_input);
}
