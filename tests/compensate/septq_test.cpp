#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/compensate/septq.hpp>
#include <sageptq/core/random.hpp>
#include <sageptq/synthetic/layer.hpp>

using namespace sageptq;

namespace {

struct septq_problem {
  synthetic::layer layer;
  Eigen::MatrixXd hessian;
  calib::hessian_factor factor;
};

septq_problem make_septq_problem(index_t rows, index_t cols, std::uint64_t seed, index_t dead_column = -1) {
  synthetic::layer_config cfg;
  cfg.rows = rows;
  cfg.cols = cols;
  cfg.samples = 512;
  cfg.seed = seed;
  septq_problem p{synthetic::make_layer(cfg), {}, {}};
  if (dead_column >= 0)
    for (index_t s = 0; s < cfg.samples; ++s) p.layer.activations[static_cast<std::size_t>(s * cols + dead_column)] = 0;
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(p.layer.activation_view()).ok());
  p.hessian = acc.hessian();
  auto f = calib::prepare(acc);
  REQUIRE(f.ok());
  p.factor = std::move(f).value();
  return p;
}

}  // namespace

TEST_CASE("SEPTQ importance scores match (w0 - Q0)^2 / U_jj^2 computed with plain loops") {
  const septq_problem p = make_septq_problem(32, 128, 81, 9);
  const auto grid = compensate::septq_grid(2);
  auto scores = compensate::importance_scores(p.layer.weight_view(), p.factor, grid);
  REQUIRE(scores.ok());
  std::vector<float> w0 = p.layer.weights;
  for (index_t r = 0; r < 32; ++r) w0[static_cast<std::size_t>(r * 128 + 9)] = 0;  // dead column
  auto q0 = quant::quantize_uniform(make_matrix_view(w0.data(), 32, 128), grid);
  REQUIRE(q0.ok());
  int mismatches = 0;
  for (index_t r = 0; r < 32; ++r)
    for (index_t c = 0; c < 128; ++c) {
      const float e = w0[static_cast<std::size_t>(r * 128 + c)] - q0->value(r, c);
      const auto d = static_cast<float>(p.factor.u(c, c));
      mismatches += (*scores)[static_cast<std::size_t>(r * 128 + c)] != e * e / (d * d);
    }
  CHECK(mismatches == 0);
  auto two = compensate::importance_scores(p.layer.weight_view(), p.factor, grid, thread_executor(2));
  REQUIRE(two.ok());
  CHECK(*two == *scores);
}

TEST_CASE("SEPTQ top-fraction mask: rank floor(N * fraction) of the descending scores, ties kept") {
  random_generator rng(91);
  std::vector<float> s(1000);
  for (auto& v : s) v = static_cast<float>(rng.below(200));  // many ties
  for (double fraction : {0.001, 0.01, 0.05, 0.5, 0.999}) {
    CAPTURE(fraction);
    auto m = compensate::top_fraction_mask(s, fraction);
    REQUIRE(m.ok());
    std::vector<float> sorted = s;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const float threshold = sorted[static_cast<std::size_t>(1000 * fraction)];
    for (std::size_t i = 0; i < s.size(); ++i) CHECK((*m)[i] == (s[i] >= threshold));
    CHECK(std::count(m->begin(), m->end(), 1) >= static_cast<long>(1000 * fraction));
  }
  auto none = compensate::top_fraction_mask(s, 0.0);
  REQUIRE(none.ok());
  CHECK(std::count(none->begin(), none->end(), 1) == 0);
  CHECK(compensate::top_fraction_mask(s, 1.0).code() == status::invalid_argument);
  CHECK(compensate::top_fraction_mask(s, -0.1).code() == status::invalid_argument);
  CHECK(compensate::top_fraction_mask(s, NAN).code() == status::invalid_argument);
}

TEST_CASE("SEPTQ keeps ~1% of the weights and lowers GPTQ's error at the same bits") {
  double septq_err = 0, gptq_err = 0;
  for (std::uint64_t seed = 0; seed < 5; ++seed) {
    const septq_problem p = make_septq_problem(64, 256, 200 + seed);
    auto s = compensate::septq(p.layer.weight_view(), p.factor, {2, 0.01, 128, compensate::kept_precision::exact});
    REQUIRE(s.ok());
    CHECK(s->kept >= 64 * 256 / 100);
    CHECK(s->kept <= 64 * 256 / 100 + 2);
    auto g = compensate::gptq_uniform(p.layer.weight_view(), p.factor, compensate::septq_grid(2));
    REQUIRE(g.ok());
    septq_err += calib::hessian_weighted_error(p.layer.weight_view(),
                                               make_matrix_view(s->quantized.compensated.q.data(), 64, 256), p.hessian);
    gptq_err += calib::hessian_weighted_error(p.layer.weight_view(), make_matrix_view(g->compensated.q.data(), 64, 256),
                                              p.hessian);
  }
  CAPTURE(septq_err / gptq_err);
  CHECK(septq_err < 0.9 * gptq_err);
}

TEST_CASE("SEPTQ rejects bad input") {
  const septq_problem p = make_septq_problem(8, 32, 99);
  CHECK(compensate::septq(p.layer.weight_view(), p.factor, {0, 0.01, 128, {}}).code() == status::invalid_argument);
  CHECK(compensate::septq(p.layer.weight_view(), p.factor, {2, 1.5, 128, {}}).code() == status::invalid_argument);
  std::vector<float> w = p.layer.weights;
  w[0] = NAN;
  CHECK(compensate::septq(make_matrix_view(w.data(), 8, 32), p.factor, {}).code() == status::non_finite_input);
  CHECK(compensate::importance_scores(make_matrix_view(p.layer.weights.data(), 16, 16), p.factor,
                                      compensate::septq_grid(2))
            .code() == status::invalid_shape);
}
