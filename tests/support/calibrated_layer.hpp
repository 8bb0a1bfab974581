#pragma once
// Test helpers shared by the stage tests: a synthetic layer with its prepared Hessian factor and the Hessian-weighted
// error with plain loops (the reference the library's reports are checked against); same_bits.hpp comes with it.
#include <doctest/doctest.h>

#include <cstdint>
#include <utility>
#include <vector>

#include <Eigen/Dense>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/synthetic/layer.hpp>

#include "same_bits.hpp"

namespace sageptq_test {

struct calibrated_problem {
  sageptq::synthetic::layer layer;
  sageptq::calib::hessian_factor factor;
  [[nodiscard]] sageptq::matrix_view<const float> w() const { return layer.weight_view(); }
};

/// A synthetic LLM-like layer (heavy-tailed weights, outlier input channels, correlated activations) with `samples`
/// activation rows (0: 2 x cols) and its factor; `dead` >= 0 zeroes that input channel's activations (a dead column).
inline calibrated_problem make_calibrated_problem(sageptq::index_t rows, sageptq::index_t cols, std::uint64_t seed,
                                                  sageptq::index_t samples = 0, sageptq::index_t dead = -1,
                                                  bool act_order = false) {
  sageptq::synthetic::layer_config cfg;
  cfg.rows = rows;
  cfg.cols = cols;
  cfg.samples = samples > 0 ? samples : 2 * cols;
  cfg.seed = seed;
  calibrated_problem p{sageptq::synthetic::make_layer(cfg), {}};
  if (dead >= 0)
    for (sageptq::index_t s = 0; s < p.layer.samples; ++s)
      p.layer.activations[static_cast<std::size_t>(s * cols + dead)] = 0;
  sageptq::calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(p.layer.activation_view()).ok());
  sageptq::calib::prepare_options opt;
  opt.act_order = act_order;
  auto f = sageptq::calib::prepare(acc, opt);
  REQUIRE(f.ok());
  p.factor = std::move(f).value();
  return p;
}

/// sum_r (w_r - q_r) H (w_r - q_r)^T over row-major rows x cols matrices, with plain loops in double.
inline double reference_hessian_error(const std::vector<float>& w, const std::vector<float>& q,
                                      const Eigen::MatrixXd& h, sageptq::index_t rows, sageptq::index_t cols) {
  double total = 0;
  for (sageptq::index_t r = 0; r < rows; ++r)
    for (sageptq::index_t i = 0; i < cols; ++i)
      for (sageptq::index_t j = 0; j < cols; ++j) {
        const auto a = static_cast<std::size_t>(r * cols + i), b = static_cast<std::size_t>(r * cols + j);
        total += (static_cast<double>(w[a]) - q[a]) * h(i, j) * (static_cast<double>(w[b]) - q[b]);
      }
  return total;
}

}  // namespace sageptq_test
