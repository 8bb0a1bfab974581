#pragma once
/// @file binarize.hpp
/// Binarization with one scalar pair per group: w ~ alpha * s + mu, s = +1 where w >= mu and -1 elsewhere.
///
///  - Closed form (fit_binary): mu = weighted mean of w (or 0 without a mean), alpha = weighted mean |w - mu|: the
///    L2-optimal alpha for the sign pattern sign(w - mu) (BiLLM's binarizer; PB-LLM's alpha = mean|w| when mu = 0).
///  - Alternating refinement (refine_binary, ARB-LLM style): given the signs, (mu, alpha) by weighted least squares
///    in closed form; given (mu, alpha), the signs sign(w - mu); until the signs stop changing or max_iter.
///  - Per-weight weights h (e.g. diag(H) of the columns a row's weights sit in) turn every fit into a weighted
///    least-squares fit of sum h (w - q)^2: the Hessian-aware variant. No weights means h = 1.
///  - Matrix level: one pair per (row, group) (binarize_row_groups), one pair per group shared by all rows
///    (binarize_shared_groups), and the factorized scale alpha_r * beta_g of sign(w) (fit_factorized: alternating
///    least squares, the OneBit / ARB-RC structure a GEMV folds out of its inner loop). Groups come from a
///    `group_map`: any callable (row, col) -> group id in [0, groups), or -1 for weights excluded (salient ones);
///    `column_groups` adapts a per-column id array, a mask is a map returning 0 or -1.
///
/// Scalars are rounded to fp16 as they are fitted (binarize_options::fp16_scalars), so the signs and residuals the
/// fit computes are those of the values a packed format stores; format/binary_term.hpp holds the shared arithmetic.
/// Sums run in double in index order. Matrix-level fits parallelize over rows on the caller's executor; their output
/// does not depend on the thread count.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../format/binary_term.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace quant {

struct binary_scalar {
  float alpha = 0;
  float mu = 0;  ///< 0 when fitted without a mean
  friend bool operator==(const binary_scalar&, const binary_scalar&) = default;
};

struct binarize_options {
  bool with_mean = false;    ///< fit mu (BiLLM) or keep mu = 0
  int max_iter = 0;          ///< alternating refinement rounds after the closed form; 0: closed form only
  bool fp16_scalars = true;  ///< round alpha and mu to fp16 as they are fitted, as packed formats store them
};

struct binary_fit {
  binary_scalar scalar;
  int iterations = 0;     ///< least-squares solves of the refinement (0 for the closed form alone)
  bool converged = true;  ///< false when the signs still changed at max_iter
};

/// The sign bit of w (true: s = +1), as a packed format stores it: w >= mu (w >= 0 without a mean).
[[nodiscard]] inline bool binary_sign(const binary_scalar& b, float w, bool with_mean) noexcept {
  return w >= (with_mean ? b.mu : 0.0f);
}

/// The binarized value of w: format::binary_term with the sign of w - mu.
[[nodiscard]] inline float binary_value(const binary_scalar& b, float w, bool with_mean) noexcept {
  const bool positive = binary_sign(b, w, with_mean);
  return with_mean ? format::binary_term(positive, b.alpha, b.mu) : format::binary_term(positive, b.alpha);
}

namespace detail {
inline float to_scalar(double v, bool fp16) noexcept {
  const auto f = static_cast<float>(v);
  return fp16 ? round_to_fp16(f) : f;
}
/// Weight of element i; all-zero (or absent) weights mean plain L2.
struct element_weights {
  std::span<const float> h;
  bool uniform;
  element_weights(std::span<const float> weights, [[maybe_unused]] std::size_t n)
      : h(weights), uniform(weights.empty()) {
    SAGEPTQ_ASSERT(weights.empty() || weights.size() == n);
    if (!uniform) {
      double total = 0;
      for (float v : weights) total += v;
      uniform = !(total > 0);
    }
  }
  double operator[](std::size_t i) const noexcept { return uniform ? 1.0 : static_cast<double>(h[i]); }
};
}  // namespace detail

/// Closed form: mu = weighted mean (with_mean) or 0, alpha = weighted mean |w - mu|. Empty input gives {0, 0}.
[[nodiscard]] inline binary_scalar fit_binary(std::span<const float> w, std::span<const float> h,
                                              const binarize_options& opts) {
  const detail::element_weights hw(h, w.size());
  double total = 0, sum = 0;
  for (std::size_t i = 0; i < w.size(); ++i) total += hw[i], sum += hw[i] * w[i];
  if (!(total > 0)) return {};
  binary_scalar b;
  b.mu = opts.with_mean ? detail::to_scalar(sum / total, opts.fp16_scalars) : 0.0f;
  double abs_dev = 0;
  for (std::size_t i = 0; i < w.size(); ++i) abs_dev += hw[i] * std::fabs(static_cast<double>(w[i]) - b.mu);
  b.alpha = detail::to_scalar(abs_dev / total, opts.fp16_scalars);
  return b;
}

/// Alternating refinement from `start`: signs s = sign(w - mu), then (mu, alpha) minimizing sum h (w - alpha s - mu)^2
/// (a 2x2 normal system), repeated until the signs no longer change or opts.max_iter solves. Without a mean the
/// signs are sign(w) for any alpha >= 0, so one solve (alpha = weighted mean |w|) is the optimum.
[[nodiscard]] inline binary_fit refine_binary(std::span<const float> w, std::span<const float> h, binary_scalar start,
                                              const binarize_options& opts) {
  const detail::element_weights hw(h, w.size());
  binary_fit fit{start, 0, true};
  for (int it = 0; it < opts.max_iter; ++it) {
    const float mu = opts.with_mean ? fit.scalar.mu : 0.0f;
    // Normal equations for (mu, alpha) given s: [A B; B A] [mu; alpha] = [C; D], A = sum h, B = sum h s, ...
    double a = 0, b = 0, c = 0, d = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double s = w[i] >= mu ? 1.0 : -1.0;
      a += hw[i], b += hw[i] * s, c += hw[i] * w[i], d += hw[i] * s * w[i];
    }
    if (!(a > 0)) return fit;
    binary_scalar next;
    if (!opts.with_mean) {
      next.alpha = detail::to_scalar(d / a, opts.fp16_scalars);
    } else if (const double det = a * a - b * b; det > 0) {
      next.mu = detail::to_scalar((a * c - b * d) / det, opts.fp16_scalars);
      next.alpha = detail::to_scalar((a * d - b * c) / det, opts.fp16_scalars);
    } else {  // every sign equal (all w equal): a constant fits best
      next.mu = detail::to_scalar(c / a, opts.fp16_scalars);
    }
    fit.iterations = it + 1;
    bool signs_changed = false;
    for (std::size_t i = 0; i < w.size() && !signs_changed; ++i) signs_changed = (w[i] >= mu) != (w[i] >= next.mu);
    fit.scalar = next;
    if (!signs_changed) return fit;
  }
  fit.converged = opts.max_iter == 0;  // otherwise every solve moved a sign: the limit stopped it
  return fit;
}

/// Closed form, then refinement (opts.max_iter rounds).
[[nodiscard]] inline binary_fit binarize(std::span<const float> w, std::span<const float> h,
                                         const binarize_options& opts) {
  return refine_binary(w, h, fit_binary(w, h, opts), opts);
}

/// A callable (row, col) -> group id in [0, groups), or -1 for an excluded weight.
template <class F>
concept group_map = requires(const F& group_of, index_t r, index_t c) {
  { group_of(r, c) } -> std::convertible_to<int>;
};

/// Structural column groups: the group of (r, c) is id[c] for every row.
struct column_groups {
  std::span<const std::int32_t> id;
  [[nodiscard]] int operator()(index_t, index_t c) const noexcept { return id[static_cast<std::size_t>(c)]; }
};

/// One scalar pair per (row, group), row-major [rows][groups] (rows = 1 for shared groups).
struct group_table {
  index_t rows = 0;
  int groups = 0;
  std::vector<binary_scalar> scalars;
  int max_iterations = 0;  ///< the largest refinement count over all groups

  [[nodiscard]] const binary_scalar& operator()(index_t r, int g) const noexcept {
    return scalars[static_cast<std::size_t>(r * groups + g)];
  }
};

namespace detail {
inline outcome check_column_weights(std::span<const float> h, index_t cols) {
  if (h.empty()) return {};
  if (static_cast<index_t>(h.size()) != cols)
    return fail(status::invalid_shape, "column weights have " + std::to_string(h.size()) + " entries for " +
                                           std::to_string(cols) + " columns");
  for (std::size_t c = 0; c < h.size(); ++c)
    if (!is_finite(h[c]) || h[c] < 0.0f)
      return fail(status::invalid_argument, "column weight " + std::to_string(c) + " is negative or not finite");
  return {};
}

/// Values (and weights) of row r appended to their group's bucket (`groups` buckets each); false if a group id is
/// out of range. The bound is checked against `groups`, not size(): GCC 12 at -O3 then sees the index is in range.
template <class View, class Groups>
bool gather_row(const View& w, index_t r, const Groups& group_of, int groups, std::span<const float> col_h,
                std::vector<std::vector<float>>& values, std::vector<std::vector<float>>& weights) {
  SAGEPTQ_ASSERT(std::ssize(values) == groups && std::ssize(weights) == groups);
  for (index_t c = 0; c < w.cols(); ++c) {
    const int g = group_of(r, c);
    if (g < 0) continue;
    if (g >= groups) return false;
    values[static_cast<std::size_t>(g)].push_back(to_float(w(r, c)));
    if (!col_h.empty()) weights[static_cast<std::size_t>(g)].push_back(col_h[static_cast<std::size_t>(c)]);
  }
  return true;
}

inline outcome check_groups(int groups) {
  if (groups < 1) return fail(status::invalid_argument, "groups must be >= 1, got " + std::to_string(groups));
  return {};
}

/// What a fit over many groups reports: its largest refinement count, whether every refinement converged, and
/// whether every group id was in range.
struct fit_summary {
  int max_iterations = 0;
  bool converged = true;
  bool ids_ok = true;

  void add(int iterations, bool fit_converged) noexcept {
    max_iterations = std::max(max_iterations, iterations);
    converged = converged && fit_converged;
  }
};

/// What one group's fit reports to fit_row_groups.
struct iterations_converged {
  int iterations;
  bool converged;
};

/// Gathers the weights of every (row, group) and calls fit(r, g, values, weights) -> iterations_converged for each;
/// rows run in parallel, the summary is reduced in row order.
template <class View, class Groups, class Exec, class Fit>
fit_summary fit_row_groups(const View& w, const Groups& group_of, int groups, std::span<const float> col_h,
                           const Exec& exec, Fit&& fit) {
  std::vector<fit_summary> rows(static_cast<std::size_t>(w.rows()));
  exec.parallel_for(w.rows(), [&](index_t r) {
    fit_summary& summary = rows[static_cast<std::size_t>(r)];
    std::vector<std::vector<float>> values(static_cast<std::size_t>(groups)), h(static_cast<std::size_t>(groups));
    summary.ids_ok = gather_row(w, r, group_of, groups, col_h, values, h);
    for (int g = 0; g < groups && summary.ids_ok; ++g) {
      const auto [iterations, converged] =
          fit(r, g, values[static_cast<std::size_t>(g)], h[static_cast<std::size_t>(g)]);
      summary.add(iterations, converged);
    }
  });
  fit_summary total;
  for (const auto& row : rows) {
    total.add(row.max_iterations, row.converged);
    total.ids_ok = total.ids_ok && row.ids_ok;
  }
  return total;
}

/// The statuses of a group fit: invalid_argument for bad ids, no_convergence (with the value) for a refinement limit.
template <class T>
result<T> finish_fit(T value, const fit_summary& summary, int groups) {
  if (!summary.ids_ok)
    return fail(status::invalid_argument, "a group id is outside [-1, " + std::to_string(groups) + ")");
  if (!summary.converged)
    return {std::move(value), status::no_convergence, "binarization refinement hit max_iter with signs still moving"};
  return value;
}

}  // namespace detail

/// One scalar pair per (row, group): the BiLLM/ARB per-row-per-mask binarizer.
/// @param col_weights per-column weights (diag H) for the Hessian-aware fit, or empty.
/// @return [rows][groups] scalars; no_convergence (with the value) if a refinement hit max_iter; invalid_argument /
///         invalid_shape / non_finite_input for bad input.
template <host_matrix_like Weights, group_map Groups, executor Exec = inline_executor>
result<group_table> binarize_row_groups(const Weights& weights, const Groups& group_of, int groups,
                                        const binarize_options& opts, std::span<const float> col_weights = {},
                                        const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = detail::check_groups(groups); !ok) return ok;
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  if (auto ok = detail::check_column_weights(col_weights, w.cols()); !ok) return ok;

  group_table table{w.rows(), groups, std::vector<binary_scalar>(static_cast<std::size_t>(w.rows() * groups)), 0};
  const auto summary = detail::fit_row_groups(w, group_of, groups, col_weights, exec,
                                              [&](index_t r, int g, const auto& values, const auto& h) {
                                                const binary_fit fit = binarize(values, h, opts);
                                                table.scalars[static_cast<std::size_t>(r * groups + g)] = fit.scalar;
                                                return detail::iterations_converged{fit.iterations, fit.converged};
                                              });
  table.max_iterations = summary.max_iterations;
  return detail::finish_fit(std::move(table), summary, groups);
}

/// One scalar pair per group shared by every row (the "layer-wise lookup table" of G scalars).
/// @return [1][groups] scalars, statuses as binarize_row_groups.
template <host_matrix_like Weights, group_map Groups, executor Exec = inline_executor>
result<group_table> binarize_shared_groups(const Weights& weights, const Groups& group_of, int groups,
                                           const binarize_options& opts, std::span<const float> col_weights = {},
                                           const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = detail::check_groups(groups); !ok) return ok;
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  if (auto ok = detail::check_column_weights(col_weights, w.cols()); !ok) return ok;

  std::vector<std::vector<float>> values(static_cast<std::size_t>(groups)), h(static_cast<std::size_t>(groups));
  detail::fit_summary summary;
  for (index_t r = 0; r < w.rows() && summary.ids_ok; ++r)
    summary.ids_ok = detail::gather_row(w, r, group_of, groups, col_weights, values, h);
  std::vector<binary_fit> fits(static_cast<std::size_t>(groups));
  if (summary.ids_ok)
    exec.parallel_for(groups, [&](index_t g) {
      const auto gi = static_cast<std::size_t>(g);
      fits[gi] = binarize(values[gi], h[gi], opts);
    });
  group_table table{1, groups, {}, 0};
  for (const auto& fit : fits) {
    table.scalars.push_back(fit.scalar);
    summary.add(fit.iterations, fit.converged);
  }
  table.max_iterations = summary.max_iterations;
  return detail::finish_fit(std::move(table), summary, groups);
}

struct factorized_options {
  int max_iter = 50;         ///< alternating least-squares rounds
  double tolerance = 1e-10;  ///< stop when the objective changes by less than tolerance * |objective|
};

/// w(r, c) ~ row[r] * group[g(c)] * sign(w(r, c)); both vectors fp16-representable, as format::sage stores them.
struct factorized_scales {
  std::vector<float> row;
  std::vector<float> group;  ///< normalized so that the weighted mean of group^2 over columns is 1
  int iterations = 0;

  [[nodiscard]] float scale(index_t r, int g) const noexcept {
    return format::factorized_scale(row[static_cast<std::size_t>(r)], group[static_cast<std::size_t>(g)]);
  }
  /// The binarized value of w = W(r, c) with c in group g, exactly as the sage decoder computes it.
  [[nodiscard]] float value(index_t r, int g, float w) const noexcept {
    return format::binary_term(w >= 0.0f, scale(r, g));
  }
};

/// Factorized scales alpha_r * beta_g for the signs sign(W) over structural column groups (column_group[c] in
/// [0, groups), -1 excluded), minimizing sum_c h_c (|w_rc| - alpha_r beta_g(c))^2 by alternating least squares
/// (a weighted rank-1 fit of the per-(row, group) sums). Both are rounded to fp16 at the end, and alpha is refitted
/// for the rounded beta. Empty groups keep beta = 1.
/// @return the scales; no_convergence (with the value) if max_iter rounds did not reach the tolerance.
template <host_matrix_like Weights, executor Exec = inline_executor>
result<factorized_scales> fit_factorized(const Weights& weights, std::span<const std::int32_t> column_group, int groups,
                                         const factorized_options& opts = {}, std::span<const float> col_weights = {},
                                         const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = detail::check_groups(groups); !ok) return ok;
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  if (auto ok = detail::check_column_weights(col_weights, w.cols()); !ok) return ok;
  if (static_cast<index_t>(column_group.size()) != w.cols())
    return fail(status::invalid_shape, "column_group has " + std::to_string(column_group.size()) + " entries for " +
                                           std::to_string(w.cols()) + " columns");
  for (auto g : column_group)
    if (g < -1 || g >= groups)
      return fail(status::invalid_argument, "a column group id is outside [-1, " + std::to_string(groups) + ")");

  const auto rows = static_cast<std::size_t>(w.rows()), ng = static_cast<std::size_t>(groups);
  const detail::element_weights h(col_weights, static_cast<std::size_t>(w.cols()));
  std::vector<double> n(ng, 0.0), m(rows * ng, 0.0);  // n_g = sum h_c, m_rg = sum h_c |w_rc| over c in g
  for (index_t c = 0; c < w.cols(); ++c)
    if (const int g = column_group[static_cast<std::size_t>(c)]; g >= 0)
      n[static_cast<std::size_t>(g)] += h[static_cast<std::size_t>(c)];
  exec.parallel_for(w.rows(), [&](index_t r) {
    double* mr = m.data() + static_cast<std::size_t>(r) * ng;
    for (index_t c = 0; c < w.cols(); ++c)
      if (const int g = column_group[static_cast<std::size_t>(c)]; g >= 0)
        mr[g] += h[static_cast<std::size_t>(c)] * std::fabs(static_cast<double>(to_float(w(r, c))));
  });

  std::vector<double> alpha(rows, 0.0), beta(ng, 1.0);
  auto update_alpha = [&] {
    double denom = 0;
    for (std::size_t g = 0; g < ng; ++g) denom += n[g] * beta[g] * beta[g];
    exec.parallel_for(w.rows(), [&](index_t r) {
      double num = 0;
      for (std::size_t g = 0; g < ng; ++g) num += beta[g] * m[static_cast<std::size_t>(r) * ng + g];
      alpha[static_cast<std::size_t>(r)] = denom > 0 ? num / denom : 0.0;
    });
  };
  auto objective = [&] {  // sum h (|w| - a b)^2 minus the constant sum h w^2
    double obj = 0;
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t g = 0; g < ng; ++g)
        obj += alpha[r] * beta[g] * (n[g] * alpha[r] * beta[g] - 2.0 * m[r * ng + g]);
    return obj;
  };

  factorized_scales out;
  update_alpha();
  double previous = objective();
  bool converged = ng == 1;  // one group: alpha alone is the exact optimum
  for (int it = 0; it < opts.max_iter && !converged; ++it) {
    double alpha2 = 0;
    for (double a : alpha) alpha2 += a * a;
    if (!(alpha2 > 0)) {
      converged = true;
      break;
    }
    double norm_num = 0, norm_den = 0;
    for (std::size_t g = 0; g < ng; ++g) {
      if (!(n[g] > 0)) continue;
      double num = 0;
      for (std::size_t r = 0; r < rows; ++r) num += alpha[r] * m[r * ng + g];
      beta[g] = num / (n[g] * alpha2);
      norm_num += n[g] * beta[g] * beta[g];
      norm_den += n[g];
    }
    if (norm_num > 0) {  // fix the scale ambiguity: weighted mean of beta^2 = 1, so alpha carries the magnitude
      const double norm = std::sqrt(norm_num / norm_den);
      for (std::size_t g = 0; g < ng; ++g)
        if (n[g] > 0) beta[g] /= norm;
    }
    update_alpha();
    out.iterations = it + 1;
    const double current = objective();
    converged = std::fabs(previous - current) <= opts.tolerance * std::fabs(current);
    previous = current;
  }

  for (auto& b : beta) b = round_to_fp16(static_cast<float>(b));
  update_alpha();
  out.group.assign(beta.begin(), beta.end());
  out.row.resize(rows);
  for (std::size_t r = 0; r < rows; ++r) out.row[r] = round_to_fp16(static_cast<float>(alpha[r]));
  if (!converged)
    return {std::move(out), status::no_convergence,
            "factorized scales: " + std::to_string(opts.max_iter) + " rounds did not reach the tolerance"};
  return out;
}

}  // namespace quant
SAGEPTQ_NAMESPACE_END
