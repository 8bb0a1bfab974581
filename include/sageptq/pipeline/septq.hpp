#pragma once
/// @file septq.hpp
/// The `septq` method (algorithms.md §3.1, septq.py): static importance scores (w − Q0)²/U_jj² against a per-row
/// asymmetric b-bit MSE-searched grid, the top `keep_fraction` of them kept, GPTQ (per row, the same grid, block
/// 128) with the kept weights held at their updated values, here rounded to fp16 — the format's precision — and that
/// rounding compensated like any other error. compensate/septq.hpp runs it; this header packs the result as
/// format::septq_matrix (dense codes + fp16 CSR overlay) and reports bits, calibrated errors and the kept share.
///
/// The factor is used in its own column order (SEPTQ's reference runs without act order; either order packs, as the
/// grids are per row). Threading: as compensate::septq, bit-identical for every thread count; packing is
/// single-threaded.

#include <string>
#include <utility>

#include "../calib/hessian.hpp"
#include "../compensate/septq.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../format/septq.hpp"
#include "../format/sparse.hpp"
#include "gptq.hpp"
#include "quantized.hpp"
#include "rtn.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

struct septq_config {
  int bits = 2;                 ///< dense code width, 1..8
  double keep_fraction = 0.01;  ///< share of weights kept in fp16, in [0, 1) (SEPTQ's --sparsity 1)
  index_t block_size = 128;     ///< columns per lazy-update block
};

/// `septq` on one matrix. See the file comment.
/// @return the packed matrix, decode(packed) and the report; or invalid_argument (bits, fraction, block),
///         invalid_shape, non_finite_input, unsupported (a scale or kept value beyond fp16, more than 65536 columns).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<quantized<format::septq_matrix>> quantize_septq(const Weights& weights, const calib::hessian_factor& factor,
                                                       const septq_config& cfg, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = detail::check_factor(factor, w.cols()); !ok) return ok;
  if (w.cols() > format::sparse_matrix::max_cols)
    return fail(status::unsupported, "septq's kept weights use 16-bit column indices: " + std::to_string(w.cols()) +
                                         " columns > 65536");

  const detail::stopwatch quantize_clock;
  auto septq = compensate::septq(
      w, factor, {cfg.bits, cfg.keep_fraction, cfg.block_size, compensate::kept_precision::fp16}, exec);
  if (!septq.has_value()) return septq.as_outcome();
  const double quantize_seconds = quantize_clock.seconds();

  const detail::stopwatch pack_clock;
  auto dense = pack_uniform(septq->quantized.codes);
  if (!dense.has_value()) return dense.as_outcome();
  // Kept entries of q are fp16 values already (kept_precision::fp16): the overlay stores them exactly.
  auto kept = format::encode_sparse(w.rows(), w.cols(), septq->keep, septq->quantized.compensated.q);
  if (!kept.has_value()) return kept.as_outcome();
  auto out = detail::make_quantized("septq", w.rows(), w.cols(),
                                    format::septq_matrix{std::move(dense).value(), std::move(kept).value()});
  out.report.times.quantize = quantize_seconds;
  out.report.times.pack = pack_clock.seconds();
  out.report.salient_fraction = static_cast<double>(septq->kept) / static_cast<double>(w.rows() * w.cols());
  detail::fill_hessian_errors(out.report, w, out.dequantized, factor.h, exec);
  return out;
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
