#pragma once
/// @file column_runs.hpp
/// Quantize a matrix by runs of consecutive input channels (columns), each run with its own named method, with
/// GPTQ-style error compensation from every run into the runs after it: the precision per input-channel block that
/// TOGA chooses (toga/), or any hand-made mix (say 3 bits on the outlier block, 1 bit elsewhere).
///
/// The math is GPTQ/OBS at the granularity of runs, with H⁻¹ = UᵀU (U = factor.u, identity column order):
///  - Run b = [c0, c1) sees the weights W_b = W[:, c0:c1] as compensated by all earlier runs, and its own factor
///    (calib::column_block_factor): u' = U_bb and h' = (U_bbᵀ U_bb)⁻¹, the Schur complement of the later columns,
///    so that a calibrated method inside the run compensates its own columns exactly as GPTQ would.
///  - With E_b = W_b − Q_b, the later columns absorb the run's error: W[:, c1:] −= E_b U_bb⁻¹ U[c0:c1, c1:] (column
///    by column GPTQ inside the run composes to exactly this block update).
///  - The calibrated error splits exactly over the runs: tr((W₀−Q) H (W₀−Q)ᵀ) = Σ_b tr(E_b h'_b E_bᵀ), where each
///    term is the hessian_error in run b's report and W₀ is W with dead columns zeroed.
/// Dead columns (H_jj = 0) are zeroed in W first, as compensate::gptq and sage do; each run's factor lists its own.
/// Methods without calibration (rtn, q1_0) ignore the factor for quantizing; their reports still give the run's term.
///
/// Precision: the working copy of W and the updates are double; each run quantizes the float rounding of its
/// compensated columns (a one-run call passes W₀ itself: it decodes to what quantize_matrix gives, bit for bit).
/// Threading: each run's method runs on the caller's executor; the updates run over fixed chunks of rows (a row's
/// update never depends on another row), so results are bit-identical for every thread count.

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../calib/hessian.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "quantize_matrix.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

/// Columns [previous run's end (0 for the first), end) quantized with one method.
struct column_run {
  index_t end = 0;
  method m;
};

struct column_runs_result {
  std::vector<matrix_result> runs;  ///< per run: its packed rows x (end - begin) matrix, decoded values, report
  std::vector<float> dequantized;   ///< rows x cols row-major, the runs side by side
  double hessian_error = 0;         ///< tr((W - Q) H (W - Q)^T) with the factor's damped H
};

namespace detail {
/// Rows per task of the update between runs. Fixed, so that results do not depend on the thread count.
inline constexpr index_t column_runs_chunk_rows = 128;
}  // namespace detail

/// Quantize `weights` run by run (see the file comment). A run's report is its method's, for its columns, with
/// hessian_error = tr(E_b h'_b E_bᵀ) and relative_error relative to the run's compensated weights.
/// @return the runs, the whole decoded matrix and tr((W₀−Q) H (W₀−Q)ᵀ); invalid_argument for no runs, ends not
///         strictly increasing, a last end other than cols or an act-order factor; invalid_shape when the factor is
///         for another width; non_finite_input; or the first failing run's error, its message prefixed by the run.
template <host_matrix_like Weights, executor Exec = inline_executor>
result<column_runs_result> quantize_column_runs(const Weights& weights, const calib::hessian_factor& factor,
                                                std::span<const column_run> runs, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  const index_t rows = w.rows(), cols = w.cols();
  if (factor.cols() != cols || factor.u.rows() != cols || factor.u.cols() != cols || std::ssize(factor.perm) != cols)
    return fail(status::invalid_shape, "the Hessian factor is for " + std::to_string(factor.cols()) +
                                           " columns, the weight matrix has " + std::to_string(cols));
  if (runs.empty()) return fail(status::invalid_argument, "quantize_column_runs needs at least one run");
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const index_t begin = i == 0 ? 0 : runs[i - 1].end;
    if (runs[i].end <= begin)
      return fail(status::invalid_argument, "run " + std::to_string(i) + " ends at column " +
                                                std::to_string(runs[i].end) + ", not after its start " +
                                                std::to_string(begin) + ": run ends must be strictly increasing");
  }
  if (runs.back().end != cols)
    return fail(status::invalid_argument, "the last run ends at column " + std::to_string(runs.back().end) +
                                              ", the matrix has " + std::to_string(cols) + " columns");
  for (index_t k = 0; k < cols; ++k)
    if (factor.perm[static_cast<std::size_t>(k)] != k)
      return fail(status::invalid_argument, "quantize_column_runs needs the identity column order; the Hessian "
                                            "factor was prepared in act order");

  using row_major = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const index_t chunk = detail::column_runs_chunk_rows, chunks = (rows + chunk - 1) / chunk;
  std::vector<char> dead(static_cast<std::size_t>(cols), 0);
  for (index_t j : factor.dead_columns) dead[static_cast<std::size_t>(j)] = 1;
  const auto w0 = [&](index_t r, index_t c) { return dead[static_cast<std::size_t>(c)] ? 0.0f : to_float(w(r, c)); };
  row_major wk(rows, cols);  // W₀, then compensated run by run
  exec.parallel_for(chunks, [&](index_t ci) {
    for (index_t r = ci * chunk; r < std::min(rows, (ci + 1) * chunk); ++r)
      for (index_t c = 0; c < cols; ++c) wk(r, c) = static_cast<double>(w0(r, c));
  });

  column_runs_result out;
  out.runs.reserve(runs.size());
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const index_t c0 = i == 0 ? 0 : runs[i - 1].end, c1 = runs[i].end, nb = c1 - c0;
    const std::string where = "run " + std::to_string(i) + " (columns [" + std::to_string(c0) + ", " +
                              std::to_string(c1) + "), " + method_name(runs[i].m) + "): ";
    auto fb = calib::column_block_factor(factor, c0, c1);
    if (!fb.has_value()) return fail(fb.code(), where + fb.message());
    std::vector<float> wb(static_cast<std::size_t>(rows * nb));
    exec.parallel_for(chunks, [&](index_t ci) {
      for (index_t r = ci * chunk; r < std::min(rows, (ci + 1) * chunk); ++r)
        for (index_t c = 0; c < nb; ++c) wb[static_cast<std::size_t>(r * nb + c)] = static_cast<float>(wk(r, c0 + c));
    });
    auto q = quantize_matrix(make_matrix_view(static_cast<const float*>(wb.data()), rows, nb), &fb.value(),
                             runs[i].m, exec);
    if (!q.has_value()) return fail(q.code(), where + q.message());

    if (c1 < cols) {  // W[:, c1:] −= E U_bb⁻¹ U[c0:c1, c1:]
      Eigen::MatrixXd m = factor.u.block(c0, c1, nb, cols - c1);
      factor.u.block(c0, c0, nb, nb).triangularView<Eigen::Upper>().solveInPlace(m);
      const std::vector<float>& qb = q->dequantized;
      exec.parallel_for(chunks, [&](index_t ci) {
        const index_t r0 = ci * chunk, nr = std::min(chunk, rows - r0);
        row_major e(nr, nb);
        for (index_t r = 0; r < nr; ++r)
          for (index_t c = 0; c < nb; ++c) {
            const auto at = static_cast<std::size_t>((r0 + r) * nb + c);
            e(r, c) = static_cast<double>(wb[at]) - static_cast<double>(qb[at]);
          }
        wk.block(r0, c1, nr, cols - c1).noalias() -= e * m;
      });
    }
    out.runs.push_back(std::move(q).value());
  }

  wk = row_major();  // release the working copy before the whole-matrix copies
  out.dequantized.resize(static_cast<std::size_t>(rows * cols));
  std::vector<float> w0_copy(out.dequantized.size());
  exec.parallel_for(chunks, [&](index_t ci) {
    for (index_t r = ci * chunk; r < std::min(rows, (ci + 1) * chunk); ++r) {
      for (index_t c = 0; c < cols; ++c) w0_copy[static_cast<std::size_t>(r * cols + c)] = w0(r, c);
      index_t c0 = 0;
      for (std::size_t i = 0; i < runs.size(); ++i) {
        const index_t nb = runs[i].end - c0;
        std::copy_n(out.runs[i].dequantized.begin() + r * nb, nb, out.dequantized.begin() + r * cols + c0);
        c0 = runs[i].end;
      }
    }
  });
  const auto w0_view = make_matrix_view(static_cast<const float*>(w0_copy.data()), rows, cols);
  const auto q_view = make_matrix_view(static_cast<const float*>(out.dequantized.data()), rows, cols);
  out.hessian_error = calib::hessian_weighted_error(w0_view, q_view, factor.h, exec);
  return out;
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
