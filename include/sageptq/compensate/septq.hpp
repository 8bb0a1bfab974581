#pragma once
/// @file septq.hpp
/// SEPTQ's ingredients (septq.py, algorithms.md §3.1) and the method composed from them:
///  - `importance_scores`: score_ij = (w_ij − Q0_ij)² / U_jj², static (computed once, on W₀ = W with dead columns
///    zeroed), where Q0 = round-to-nearest with SEPTQ's per-row asymmetric MSE-searched grid and U_jj the diagonal
///    of the factor of H⁻¹ for column j;
///  - `top_fraction_mask`: threshold = the score at rank ⌊N · fraction⌋ of the scores sorted in descending order,
///    mask = score >= threshold (ties kept, so a few more than N · fraction entries may be kept);
///  - `septq`: GPTQ (per row, the same MSE grid fitted on W₀) with the masked weights kept exactly.
/// These live here rather than in saliency/ because they are SEPTQ's exact recipe (saliency/metric.hpp has the
/// score as a general metric; its top-p split rounds differently).
///
/// Threading: rows run on the caller's executor; results are bit-identical for every thread count.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "../calib/hessian.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../quant/uniform.hpp"
#include "gptq.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace compensate {

/// SEPTQ's quantizer: b bits, one asymmetric grid per row, MSE range search (grid 100, shrink 0.8, norm 2.4).
inline quant::uniform_config septq_grid(int bits) { return {bits, 0, false, true, {}}; }

/// SEPTQ's static importance scores, rows x cols row-major in original column order (float, as septq.py).
/// @param reference the quantizer of Q0 (SEPTQ: septq_grid(bits)).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<std::vector<float>> importance_scores(const Weights& weights, const calib::hessian_factor& factor,
                                             const quant::uniform_config& reference, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  const index_t rows = w.rows(), n = w.cols();
  if (factor.cols() != n || factor.u.rows() != n || std::ssize(factor.perm) != n)
    return fail(status::invalid_shape, "the Hessian factor is for " + std::to_string(factor.cols()) +
                                           " columns, the weight matrix has " + std::to_string(n));
  std::vector<float> w0(static_cast<std::size_t>(rows * n));
  exec.parallel_for(rows, [&](index_t r) {
    for (index_t c = 0; c < n; ++c) w0[static_cast<std::size_t>(r * n + c)] = to_float(w(r, c));
  });
  for (index_t j : factor.dead_columns)
    for (index_t r = 0; r < rows; ++r) w0[static_cast<std::size_t>(r * n + j)] = 0.0f;
  auto q0 = quant::quantize_uniform(make_matrix_view(static_cast<const float*>(w0.data()), rows, n), reference, exec);
  if (!q0.has_value()) return q0.as_outcome();

  std::vector<float> u_diag(static_cast<std::size_t>(n));  // original column order
  for (index_t k = 0; k < n; ++k)
    u_diag[static_cast<std::size_t>(factor.perm[static_cast<std::size_t>(k)])] = static_cast<float>(factor.u(k, k));
  exec.parallel_for(rows, [&](index_t r) {
    for (index_t c = 0; c < n; ++c) {
      float& s = w0[static_cast<std::size_t>(r * n + c)];
      const float e = s - q0->value(r, c), d = u_diag[static_cast<std::size_t>(c)];
      s = e * e / (d * d);
    }
  });
  return w0;
}

/// SEPTQ's top-k mask over `scores` (see the file comment); 1 = keep. `fraction` in [0, 1) (SEPTQ's --sparsity is
/// in percent: 1 means 0.01). fraction = 0 keeps nothing (septq.py would still keep the largest score).
inline result<std::vector<std::uint8_t>> top_fraction_mask(std::span<const float> scores, double fraction) {
  if (!(fraction >= 0 && fraction < 1))
    return fail(status::invalid_argument, "keep fraction must be in [0, 1), got " + std::to_string(fraction));
  std::vector<std::uint8_t> mask(scores.size(), 0);
  if (fraction == 0 || scores.empty()) return mask;
  const auto rank = static_cast<std::size_t>(static_cast<double>(scores.size()) * fraction);
  std::vector<float> sorted(scores.begin(), scores.end());
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(rank), sorted.end(), std::greater<>());
  const float threshold = sorted[rank];
  for (std::size_t i = 0; i < scores.size(); ++i) mask[i] = scores[i] >= threshold;
  return mask;
}

struct septq_config {
  int bits = 2;
  double keep_fraction = 0.01;  ///< SEPTQ's --sparsity 1 (percent)
  index_t block_size = 128;
  kept_precision keep_as = kept_precision::exact;
};

struct septq_result {
  gptq_uniform_result quantized;   ///< Q (kept weights included), grids and codes, loss
  std::vector<std::uint8_t> keep;  ///< rows x cols, 1 = kept at higher precision
  index_t kept = 0;                ///< number of kept weights
};

/// SEPTQ on one matrix: scores, mask, then GPTQ with the mask (septq.py's fasterquant, act order off).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<septq_result> septq(const Weights& weights, const calib::hessian_factor& factor, const septq_config& cfg,
                           const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  const quant::uniform_config grid = septq_grid(cfg.bits);
  if (auto ok = quant::check_uniform_config(grid); !ok) return ok;
  auto scores = importance_scores(w, factor, grid, exec);
  if (!scores.has_value()) return scores.as_outcome();
  auto keep = top_fraction_mask(*scores, cfg.keep_fraction);
  if (!keep.has_value()) return keep.as_outcome();
  gptq_options opt;
  opt.block_size = cfg.block_size;
  opt.keep = make_matrix_view(static_cast<const std::uint8_t*>(keep->data()), w.rows(), w.cols());
  opt.keep_as = cfg.keep_as;
  auto quantized = gptq_uniform(w, factor, grid, opt, exec);
  if (!quantized.has_value()) return quantized.as_outcome();
  septq_result out{std::move(quantized).value(), std::move(keep).value(), 0};
  out.kept = static_cast<index_t>(std::count(out.keep.begin(), out.keep.end(), std::uint8_t{1}));
  return out;
}

}  // namespace compensate
SAGEPTQ_NAMESPACE_END
