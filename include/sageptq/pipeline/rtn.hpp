#pragma once
/// @file rtn.hpp
/// The calibration-free baselines as methods: `rtn` (b-bit uniform grids per group, quant/rtn.hpp) and `q1_0`
/// (sign + fp16 scale per 128, quant/q1_0.hpp), returned as quantized<Packed> with their report. The Hessian factor
/// is optional: given, the report gets the calibrated errors tr((W−Q)H(W−Q)ᵀ) and its ratio to tr(W H Wᵀ), with the
/// factor's damped H; without it both stay 0.
///
/// Also the report helpers every method of pipeline/ shares (namespace detail).
/// Threading: the quantizers' rows and the error's row blocks run on the caller's executor; results are
/// bit-identical for every thread count.

#include <chrono>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "../calib/hessian.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../format/q1_0.hpp"
#include "../format/rtn.hpp"
#include "../quant/q1_0.hpp"
#include "../quant/rtn.hpp"
#include "quantized.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

namespace detail {
class stopwatch {
 public:
  [[nodiscard]] double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

/// invalid_shape unless the factor is for `cols` input channels.
inline outcome check_factor(const calib::hessian_factor& factor, index_t cols) {
  if (factor.cols() != cols)
    return fail(status::invalid_shape, "the Hessian factor is for " + std::to_string(factor.cols()) +
                                           " columns, the weight matrix has " + std::to_string(cols));
  return {};
}

/// A quantized<Packed> with its shape, method name and bits, and `dequantized` = decode(packed): what a decoder
/// will see, by construction.
template <class Packed>
quantized<Packed> make_quantized(std::string method, index_t rows, index_t cols, Packed packed) {
  quantized<Packed> out{std::move(packed), std::vector<float>(static_cast<std::size_t>(rows * cols)), {}};
  decode(out.packed.view(), make_matrix_view(out.dequantized.data(), rows, cols));
  out.report.method = std::move(method);
  out.report.rows = rows;
  out.report.cols = cols;
  out.report.bits = out.packed.bits();
  return out;
}

/// hessian_error = tr((W−Q) H (W−Q)ᵀ) and relative_error = sqrt(hessian_error / tr(W H Wᵀ)) (0 for W = 0).
template <class Weights, class Exec>
void fill_hessian_errors(matrix_report& report, const Weights& w, const std::vector<float>& q, const Eigen::MatrixXd& h,
                         const Exec& exec) {
  const auto qv = make_matrix_view(q.data(), w.rows(), w.cols());
  const float zero = 0.0f;
  const matrix_view<const float> zeros{&zero, {w.rows(), w.cols()}, {0, 0}};  // stride 0: no allocation
  report.hessian_error = calib::hessian_weighted_error(w, qv, h, exec);
  const double total = calib::hessian_weighted_error(w, zeros, h, exec);
  report.relative_error = total > 0 ? std::sqrt(report.hessian_error / total) : 0.0;
}

/// A calibration-free quantizer `quantize` (weight view -> result<Packed>) as the method `name`: the packed matrix,
/// its decode and report, timed; the calibrated errors where a factor is given.
template <class Packed, class Weights, class Exec, class Quantize>
result<quantized<Packed>> calibration_free_method(std::string name, const Weights& weights,
                                                  const calib::hessian_factor* factor, const Exec& exec,
                                                  Quantize&& quantize) {
  const auto w = sageptq::view(weights);
  if (factor)
    if (auto ok = check_factor(*factor, w.cols()); !ok) return ok;
  const stopwatch clock;
  auto packed = quantize(w);
  if (!packed.has_value()) return packed.as_outcome();
  const double seconds = clock.seconds();
  auto out = make_quantized(std::move(name), w.rows(), w.cols(), std::move(packed).value());
  out.report.times.quantize = seconds;
  if (factor) fill_hessian_errors(out.report, w, out.dequantized, factor->h, exec);
  return out;
}

}  // namespace detail

/// `rtn`: quant::quantize_rtn as a method. @param factor optional (nullptr: no calibrated errors).
/// @return the packed matrix, its decoded values and report; or quantize_rtn's errors, or invalid_shape when the
///         factor is for another width.
template <host_matrix_like Weights, executor Exec = inline_executor>
result<quantized<format::rtn_matrix>> quantize_rtn_method(const Weights& weights, const quant::rtn_config& cfg,
                                                          const calib::hessian_factor* factor = nullptr,
                                                          const Exec& exec = {}) {
  return detail::calibration_free_method<format::rtn_matrix>(
      "rtn", weights, factor, exec, [&](const auto& w) { return quant::quantize_rtn(w, cfg, exec); });
}

/// `q1_0`: quant::quantize_q1_0 as a method (see quantize_rtn_method).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<quantized<format::q1_0_matrix>> quantize_q1_0_method(const Weights& weights,
                                                            const calib::hessian_factor* factor = nullptr,
                                                            const Exec& exec = {}) {
  return detail::calibration_free_method<format::q1_0_matrix>(
      "q1_0", weights, factor, exec, [&](const auto& w) { return quant::quantize_q1_0(w, exec); });
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
