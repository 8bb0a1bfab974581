#pragma once
/// @file compose.hpp
/// `quantize_matrix` over stages chosen by policy, for experiments with metrics and quantizers that are not in the
/// library: saliency metric -> split rule -> quantizer (fitted knowing the salient units) -> optional GPTQ
/// compensation. The named methods (quantize_matrix.hpp) are fixed compositions with their own packed formats; a
/// composition returns the decoded matrix and the bits its quantizer says it stores.
///
/// A quantizer is a compensate::column_quantizer (begin_block / quantize_column) that also has
///     outcome prepare(matrix_view<const float> w0, const saliency::salient_set& salient,
///                     const calib::hessian_factor& factor);         // fit grids/scales on W0 (dead columns zeroed)
///     format::bit_breakdown bits() const;                           // every bit it would store
/// Columns are presented in the factor's working order (perm[k] is the source column of working column k).
/// Threading: stages run on the caller's executor; see each stage.

#include <string>
#include <utility>
#include <vector>

#include "../calib/hessian.hpp"
#include "../compensate/gptq.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../format/bit_accounting.hpp"
#include "../saliency/metric.hpp"
#include "../saliency/split.hpp"
#include "quantized.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

template <class Q>
concept matrix_quantizer =
    compensate::column_quantizer<Q> &&
    requires(Q& q, const Q& cq, matrix_view<const float> w0, const saliency::salient_set& s,
             const calib::hessian_factor& f) {
      { q.prepare(w0, s, f) } -> std::same_as<outcome>;
      { cq.bits() } -> std::same_as<format::bit_breakdown>;
    };

/// The stages of one composition. The metric sees U's diagonal (source column order) when it asks for it.
template <saliency::metric Metric, matrix_quantizer Quantizer>
struct stages {
  Metric metric{};
  saliency::granularity unit = saliency::granularity::input_channel;
  saliency::split_rule rule = saliency::split_rule::top(0.01);
  Quantizer quantizer{};
  bool compensate = true;
  index_t block_size = 128;
};

struct composed {
  std::vector<float> dequantized;  ///< rows x cols, row-major, source column order
  saliency::salient_set salient;
  matrix_report report;
};

/// Run the stages on one matrix. Errors of any stage are returned as they are.
template <host_matrix_like Weights, saliency::metric Metric, matrix_quantizer Quantizer,
          executor Exec = inline_executor>
result<composed> quantize_matrix(const Weights& weights, const calib::hessian_factor& factor,
                                 stages<Metric, Quantizer>& s, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  const index_t rows = w.rows(), cols = w.cols();
  if (factor.cols() != cols)
    return fail(status::invalid_shape, "the Hessian factor is for " + std::to_string(factor.cols()) +
                                           " columns, the weight matrix has " + std::to_string(cols));
  std::vector<float> w0(static_cast<std::size_t>(rows * cols));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) w0[static_cast<std::size_t>(r * cols + c)] = to_float(w(r, c));
  for (index_t c : factor.dead_columns)
    for (index_t r = 0; r < rows; ++r) w0[static_cast<std::size_t>(r * cols + c)] = 0.0f;
  const auto w0_view = make_matrix_view(static_cast<const float*>(w0.data()), rows, cols);

  std::vector<float> u_diag(static_cast<std::size_t>(cols));
  for (index_t k = 0; k < cols; ++k)
    u_diag[static_cast<std::size_t>(factor.perm[static_cast<std::size_t>(k)])] = static_cast<float>(factor.u(k, k));
  auto salient = saliency::find_salient(s.metric, w0_view, s.unit, s.rule,
                                        make_vector_view(static_cast<const float*>(u_diag.data()), cols),
                                        saliency::no_input{}, exec);
  if (!salient.ok()) return salient.as_outcome();
  if (auto ok = s.quantizer.prepare(w0_view, *salient, factor); !ok) return ok;

  composed out;
  if (s.compensate) {
    auto run = compensate::gptq(w0_view, factor, s.quantizer, {.block_size = s.block_size}, exec);
    if (!run.ok()) return run.as_outcome();
    out.dequantized = std::move(run->q);
  } else {
    // No compensation: the same policy calls on the unchanged weights, in working order.
    std::vector<float> wk(w0.size()), col(static_cast<std::size_t>(rows)), q(col.size());
    for (index_t r = 0; r < rows; ++r)
      for (index_t k = 0; k < cols; ++k)
        wk[static_cast<std::size_t>(r * cols + k)] =
            w0[static_cast<std::size_t>(r * cols + factor.perm[static_cast<std::size_t>(k)])];
    out.dequantized.assign(w0.size(), 0.0f);
    for (index_t b0 = 0; b0 < cols; b0 += s.block_size) {
      const compensate::block_context ctx{make_matrix_view(static_cast<const float*>(wk.data()), rows, cols),
                                          {}, b0, std::min(cols, b0 + s.block_size), factor.perm, {}};
      if (auto ok = s.quantizer.begin_block(ctx, exec); !ok) return ok;
      for (index_t k = ctx.begin; k < ctx.end; ++k) {
        for (index_t r = 0; r < rows; ++r) col[static_cast<std::size_t>(r)] = wk[static_cast<std::size_t>(r * cols + k)];
        s.quantizer.quantize_column(k, 0, col, q);
        const index_t c = factor.perm[static_cast<std::size_t>(k)];
        for (index_t r = 0; r < rows; ++r)
          out.dequantized[static_cast<std::size_t>(r * cols + c)] = q[static_cast<std::size_t>(r)];
      }
    }
  }
  out.report.method = "composed";
  out.report.rows = rows;
  out.report.cols = cols;
  out.report.salient_fraction = static_cast<double>(salient->weight_count()) / static_cast<double>(rows * cols);
  out.report.bits = s.quantizer.bits();
  out.report.hessian_error = calib::hessian_weighted_error(
      w0_view, make_matrix_view(static_cast<const float*>(out.dequantized.data()), rows, cols), factor.h, exec);
  out.salient = std::move(*salient);
  return out;
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
