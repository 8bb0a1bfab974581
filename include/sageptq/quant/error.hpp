#pragma once
/// @file error.hpp
/// Quantization error metrics on host matrices (plain loops in double: references, not hot paths).

#include <cmath>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace quant {

/// ||(W - Q) X^T|| / ||W X^T||: relative error of the layer output over calibration tokens.
/// W and Q are rows x cols; X is samples x cols (one token per row).
template <host_matrix_like W, host_matrix_like Q, host_matrix_like X, executor Exec = inline_executor>
double relative_output_error(const W& weights, const Q& quantized, const X& activations, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  const auto q = sageptq::view(quantized);
  const auto x = sageptq::view(activations);
  SAGEPTQ_ASSERT(w.rows() == q.rows() && w.cols() == q.cols() && x.cols() == w.cols());
  std::vector<double> num(static_cast<std::size_t>(w.rows())), den(static_cast<std::size_t>(w.rows()));
  exec.parallel_for(w.rows(), [&](index_t r) {
    double n = 0, d = 0;
    for (index_t s = 0; s < x.rows(); ++s) {
      double yw = 0, ye = 0;
      for (index_t c = 0; c < w.cols(); ++c) {
        const double xv = to_float(x(s, c));
        const double wv = to_float(w(r, c));
        yw += wv * xv;
        ye += (wv - static_cast<double>(to_float(q(r, c)))) * xv;
      }
      n += ye * ye;
      d += yw * yw;
    }
    num[static_cast<std::size_t>(r)] = n;
    den[static_cast<std::size_t>(r)] = d;
  });
  double n = 0, d = 0;
  for (std::size_t r = 0; r < num.size(); ++r) n += num[r], d += den[r];
  return d > 0 ? std::sqrt(n / d) : 0.0;
}

}  // namespace quant
SAGEPTQ_NAMESPACE_END
