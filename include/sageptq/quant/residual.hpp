#pragma once
/// @file residual.hpp
/// Residual binarization of order k (BiLLM's high_order_residual): binarize w, binarize what is left, and so on,
///   r_0 = w,  t_i = alpha_i s_i + mu_i with s_i = sign(r_{i-1} - mu_i),  r_i = r_{i-1} - t_i,
///   q = t_1 + t_2 + ... + t_k  (float, left to right: the order format::sage decodes its sign planes in).
/// Each order is one quant::binarize fit (closed form, optional mean, optional refinement, optional weights), fitted
/// on the residual of the previous orders as the quantizer computes it in float.
/// Matrix level: one set of k terms per (row, group) of a group_map (a mask is a map returning 0 or -1); rows run
/// in parallel on the caller's executor, the output does not depend on the thread count.

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "binarize.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace quant {

struct residual_options {
  int order = 2;                                                                      ///< 1 to 8 binary planes
  binarize_options binarize{.with_mean = true, .max_iter = 0, .fp16_scalars = true};  ///< BiLLM: with mean
};

struct residual_fit {
  std::vector<binary_scalar> terms;  ///< one per order
  int iterations = 0;                ///< the largest refinement count over the orders
  bool converged = true;
};

/// One residual-binarized value and the sign of each order (bit i set: s_i = +1).
struct residual_point {
  float value = 0;
  std::uint32_t positive = 0;
};

/// Quantize w with fitted terms, exactly as a decoder that sums the stored planes computes it.
[[nodiscard]] inline residual_point residual_quantize(std::span<const binary_scalar> terms, float w,
                                                      bool with_mean) noexcept {
  residual_point p;
  float r = w;
  for (std::size_t i = 0; i < terms.size(); ++i) {
    const float t = binary_value(terms[i], r, with_mean);
    if (binary_sign(terms[i], r, with_mean)) p.positive |= 1u << i;
    p.value = i == 0 ? t : p.value + t;
    r -= t;
  }
  return p;
}

/// Fit `opts.order` terms to one set of values (h: per-value weights or empty).
[[nodiscard]] inline residual_fit fit_residual(std::span<const float> w, std::span<const float> h,
                                               const residual_options& opts) {
  residual_fit fit;
  std::vector<float> r(w.begin(), w.end());
  for (int k = 0; k < opts.order; ++k) {
    const binary_fit b = binarize(r, h, opts.binarize);
    fit.terms.push_back(b.scalar);
    fit.iterations = std::max(fit.iterations, b.iterations);
    fit.converged = fit.converged && b.converged;
    for (auto& v : r) v -= binary_value(b.scalar, v, opts.binarize.with_mean);
  }
  return fit;
}

/// k terms per (row, group), row-major [rows][groups][order].
struct residual_table {
  index_t rows = 0;
  int groups = 0;
  int order = 0;
  std::vector<binary_scalar> terms;
  int max_iterations = 0;

  [[nodiscard]] std::span<const binary_scalar> operator()(index_t r, int g) const noexcept {
    return {
        terms.data() + (static_cast<std::size_t>(r) * static_cast<std::size_t>(groups) + static_cast<std::size_t>(g)) *
                           static_cast<std::size_t>(order),
        static_cast<std::size_t>(order)};
  }
};

/// Residual binarization per row per group (BiLLM: per row per mask).
/// @return the terms; no_convergence (with the value) if a refinement hit its limit; invalid_argument /
///         invalid_shape / non_finite_input for bad input.
template <host_matrix_like Weights, group_map Groups, executor Exec = inline_executor>
result<residual_table> residual_row_groups(const Weights& weights, const Groups& group_of, int groups,
                                           const residual_options& opts, std::span<const float> col_weights = {},
                                           const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (opts.order < 1 || opts.order > 8)
    return fail(status::invalid_argument, "residual order must be in [1, 8], got " + std::to_string(opts.order));
  if (auto ok = detail::check_groups(groups); !ok) return ok;
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  if (auto ok = detail::check_column_weights(col_weights, w.cols()); !ok) return ok;

  const auto ng = static_cast<std::size_t>(groups), order = static_cast<std::size_t>(opts.order);
  residual_table table{w.rows(), groups, opts.order,
                       std::vector<binary_scalar>(static_cast<std::size_t>(w.rows()) * ng * order), 0};
  const auto summary = detail::fit_row_groups(
      w, group_of, groups, col_weights, exec, [&](index_t r, int g, const auto& values, const auto& h) {
        const residual_fit fit = fit_residual(values, h, opts);
        const std::size_t at = (static_cast<std::size_t>(r) * ng + static_cast<std::size_t>(g)) * order;
        std::copy(fit.terms.begin(), fit.terms.end(), table.terms.begin() + static_cast<std::ptrdiff_t>(at));
        return detail::iterations_converged{fit.iterations, fit.converged};
      });
  table.max_iterations = summary.max_iterations;
  return detail::finish_fit(std::move(table), summary, groups);
}

}  // namespace quant
SAGEPTQ_NAMESPACE_END
