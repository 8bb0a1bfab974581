#pragma once
/// @file assign.hpp
/// Assign every unsalient weight to one of G groups and fit the binarization scales, so that
/// q = sign(w) · scale(group) is decodable from what is stored. Two families, as policies:
///
///  - `value_groups`: magnitude intervals of |w| (optimal 1-D k-means on |w|, which is exactly the L2-optimal
///    grouping for sign·α_g with α_g = mean |w| of the group). The decoder needs a ⌈log₂G⌉-bit id *per weight*:
///    a non-uniform codebook in disguise, ≈ 1 + ⌈log₂G⌉ bpw.
///  - `column_groups`: groups of input channels; the id is stored once per column (≈ 0 bpw). Scales by `mode`:
///      shared           q = sign(w)·β_g(c)          G scalars
///      row_times_group  q = sign(w)·α_r·β_g(c)      rows + G scalars (OneBit-style factorisation)
///      per_row_group    q = sign(w)·α_{r,g(c)}      rows·G scalars
///    Columns are clustered by their least-squares scale given the row scales (for `shared`: their mean |w|), with
///    the optimal 1-D partition, alternating with the row scales a few times (each step lowers ||W − Q||_F).
///
/// Every stored scale is rounded to fp16 before it is used, so `dequantize()` reproduces the fit's error exactly.
/// Salient weights (a dense mask, 1 = salient) are excluded from the fit and decode to 0 (stored elsewhere).
/// Single-threaded; O(iterations · rows · cols).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../format/bit_accounting.hpp"
#include "partition_1d.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace group {

/// Magnitude intervals of |w|; ids per weight.
struct value_groups {
  int bins = 4096;  ///< |w| is binned on this many equal steps of [0, max|w|]; the DP is exact over bin edges
};

enum class column_scales { shared, row_times_group, per_row_group };

/// Groups of input channels; ids per column.
struct column_groups {
  column_scales mode = column_scales::row_times_group;
  int iterations = 4;  ///< alternations of (column grouping, row scales)
};

/// Everything a decoder needs besides the sign plane.
struct grouping {
  enum class kind { value, column } family = kind::column;
  column_scales mode = column_scales::shared;
  index_t rows = 0, cols = 0;
  int groups = 1;
  std::vector<std::uint8_t> weight_group;  ///< value: rows·cols ids (salient positions: 0, not stored)
  std::vector<std::uint8_t> column_group;  ///< column: one id per column
  std::vector<fp16> group_scale;           ///< value, shared, row_times_group: G scalars
  std::vector<fp16> row_scale;             ///< row_times_group: rows; per_row_group: rows·G (row-major)

  /// The magnitude a decoder gives weight (r, c).
  [[nodiscard]] float magnitude(index_t r, index_t c) const noexcept {
    if (family == kind::value)
      return group_scale[weight_group[static_cast<std::size_t>(r * cols + c)]].to_float();
    const std::size_t g = column_group[static_cast<std::size_t>(c)];
    switch (mode) {
      case column_scales::shared: return group_scale[g].to_float();
      case column_scales::row_times_group:
        return row_scale[static_cast<std::size_t>(r)].to_float() * group_scale[g].to_float();
      case column_scales::per_row_group: return row_scale[static_cast<std::size_t>(r) * groups + g].to_float();
    }
    return 0.0f;
  }
};

/// ⌈log₂ G⌉ (0 for G = 1).
constexpr int id_bits(int groups) noexcept {
  int b = 0;
  while ((1 << b) < groups) ++b;
  return b;
}

/// The bits of the binarized part: signs, group ids and scales (weights = the unsalient weights they describe).
inline format::bit_breakdown bits(const grouping& q, index_t unsalient) {
  format::bit_breakdown b;
  b.weights = static_cast<std::uint64_t>(unsalient);
  b.sign_bits = static_cast<std::uint64_t>(unsalient);
  b.paper_bits = b.sign_bits;
  const auto ids = static_cast<std::uint64_t>(id_bits(q.groups));
  b.group_id_bits = ids * static_cast<std::uint64_t>(q.family == grouping::kind::value ? unsalient : q.cols);
  b.scale_bits = 16 * static_cast<std::uint64_t>(q.group_scale.size() + q.row_scale.size());
  return b;
}

/// q = sign(w)·magnitude for every unsalient weight, 0 for salient ones (rows·cols, row-major).
template <host_matrix_like Weights>
std::vector<float> dequantize(const grouping& q, const Weights& weights, const std::vector<std::uint8_t>& salient) {
  const auto w = sageptq::view(weights);
  std::vector<float> out(static_cast<std::size_t>(q.rows * q.cols), 0.0f);
  for (index_t r = 0; r < q.rows; ++r)
    for (index_t c = 0; c < q.cols; ++c) {
      const auto p = static_cast<std::size_t>(r * q.cols + c);
      if (!salient.empty() && salient[p]) continue;
      const float m = q.magnitude(r, c);
      out[p] = to_float(w(r, c)) >= 0.0f ? m : -m;
    }
  return out;
}

/// Σ over unsalient weights of (w − q)².
template <host_matrix_like Weights>
double squared_error(const grouping& q, const Weights& weights, const std::vector<std::uint8_t>& salient) {
  const auto w = sageptq::view(weights);
  double e = 0;
  for (index_t r = 0; r < q.rows; ++r)
    for (index_t c = 0; c < q.cols; ++c) {
      if (!salient.empty() && salient[static_cast<std::size_t>(r * q.cols + c)]) continue;
      const double d = std::fabs(static_cast<double>(to_float(w(r, c)))) - q.magnitude(r, c);
      e += d * d;
    }
  return e;
}

namespace detail {
template <class View>
outcome check_fit_inputs(const View& w, const std::vector<std::uint8_t>& salient, int groups) {
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  if (groups < 1 || groups > 256)
    return fail(status::invalid_argument, "groups must be in [1, 256], got " + std::to_string(groups));
  if (!salient.empty() && salient.size() != static_cast<std::size_t>(w.rows() * w.cols()))
    return fail(status::invalid_shape, "salient mask has " + std::to_string(salient.size()) + " entries, expected " +
                                           std::to_string(w.rows() * w.cols()));
  if (!salient.empty() && std::all_of(salient.begin(), salient.end(), [](std::uint8_t s) { return s != 0; }))
    return fail(status::invalid_shape, "every weight is salient: nothing to group");
  return {};
}

inline outcome check_scales(const grouping& q) {
  for (const auto* v : {&q.group_scale, &q.row_scale})
    for (const fp16 s : *v)
      if (!is_finite(s.to_float())) return fail(status::unsupported, "a group scale exceeds the fp16 range");
  return {};
}
}  // namespace detail

/// Value groups: G magnitude intervals of |w| over the unsalient weights.
/// @return the grouping, or invalid_shape / non_finite_input / invalid_argument (groups outside [1, 256], bins < 1)
///         / unsupported (a scale beyond fp16).
template <host_matrix_like Weights>
result<grouping> fit(const value_groups& policy, const Weights& weights, const std::vector<std::uint8_t>& salient,
                     int groups) {
  const auto w = sageptq::view(weights);
  if (auto ok = detail::check_fit_inputs(w, salient, groups); !ok) return ok;
  if (policy.bins < 1) return fail(status::invalid_argument, "value_groups needs bins >= 1");
  const index_t rows = w.rows(), cols = w.cols();
  const auto unsalient = [&](index_t r, index_t c) {
    return salient.empty() || !salient[static_cast<std::size_t>(r * cols + c)];
  };

  // Bin |w| on a uniform grid; the DP runs over the non-empty bins (their means, weighted by count).
  double top = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      if (unsalient(r, c)) top = std::max(top, std::fabs(static_cast<double>(to_float(w(r, c)))));
  const auto nbins = static_cast<std::size_t>(policy.bins);
  const auto bin_of = [&](double a) {
    return top > 0 ? std::min(nbins - 1, static_cast<std::size_t>(a / top * static_cast<double>(nbins))) : 0;
  };
  std::vector<double> count(nbins, 0.0), sum(nbins, 0.0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      if (unsalient(r, c)) {
        const double a = std::fabs(static_cast<double>(to_float(w(r, c))));
        const std::size_t b = bin_of(a);
        count[b] += 1;
        sum[b] += a;
      }
  std::vector<double> x, weight;
  std::vector<std::size_t> bin_index;
  for (std::size_t b = 0; b < nbins; ++b)
    if (count[b] > 0) x.push_back(sum[b] / count[b]), weight.push_back(count[b]), bin_index.push_back(b);
  const partition_1d part = optimal_partition_1d(x, weight, groups);

  grouping q;
  q.family = grouping::kind::value;
  q.rows = rows;
  q.cols = cols;
  q.groups = static_cast<int>(part.ends.size());
  std::vector<std::uint8_t> group_of_bin(nbins, 0);
  // Group t starts at its first non-empty bin; the empty bins before the next group hold no weight.
  for (std::size_t t = 1; t < part.ends.size(); ++t)
    std::fill(group_of_bin.begin() + static_cast<std::ptrdiff_t>(bin_index[static_cast<std::size_t>(part.ends[t - 1])]),
              group_of_bin.end(), static_cast<std::uint8_t>(t));
  std::vector<double> g_sum(static_cast<std::size_t>(q.groups), 0.0), g_count(g_sum);
  q.weight_group.assign(static_cast<std::size_t>(rows * cols), 0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      if (unsalient(r, c)) {
        const double a = std::fabs(static_cast<double>(to_float(w(r, c))));
        const std::uint8_t g = group_of_bin[bin_of(a)];
        q.weight_group[static_cast<std::size_t>(r * cols + c)] = g;
        g_sum[g] += a;
        g_count[g] += 1;
      }
  for (std::size_t g = 0; g < g_sum.size(); ++g)
    q.group_scale.emplace_back(static_cast<float>(g_count[g] > 0 ? g_sum[g] / g_count[g] : 0.0));
  if (auto ok = detail::check_scales(q); !ok) return ok;
  return q;
}

/// Column groups: G groups of input channels with the scales of `policy.mode`.
/// @return the grouping, or invalid_shape / non_finite_input / invalid_argument (groups outside [1, 256],
///         iterations < 1) / unsupported (a scale beyond fp16).
template <host_matrix_like Weights>
result<grouping> fit(const column_groups& policy, const Weights& weights, const std::vector<std::uint8_t>& salient,
                     int groups) {
  const auto w = sageptq::view(weights);
  if (auto ok = detail::check_fit_inputs(w, salient, groups); !ok) return ok;
  if (policy.iterations < 1) return fail(status::invalid_argument, "column_groups needs iterations >= 1");
  const index_t rows = w.rows(), cols = w.cols();
  const auto at = [&](index_t r, index_t c) -> double {  // |w|, or −1 where salient (left out of every sum)
    if (!salient.empty() && salient[static_cast<std::size_t>(r * cols + c)]) return -1.0;
    return std::fabs(static_cast<double>(to_float(w(r, c))));
  };
  const bool row_scales = policy.mode != column_scales::shared;

  std::vector<double> alpha(static_cast<std::size_t>(rows), 1.0), beta_col(static_cast<std::size_t>(cols));
  std::vector<double> col_weight(static_cast<std::size_t>(cols)), beta(static_cast<std::size_t>(groups));
  std::vector<std::uint8_t> col_group(static_cast<std::size_t>(cols), 0);
  std::vector<index_t> order(static_cast<std::size_t>(cols));
  for (int it = 0; it < policy.iterations; ++it) {
    // Column step: the least-squares scale of each column given α, then the optimal 1-D partition of those scales
    // (a column's cost of taking scale β is ω_c (β_c − β)² + const, ω_c = Σ_r α_r²).
    // Rows outer, so that a row-major matrix is read in order; each column's sums still run over r in order.
    std::fill(beta_col.begin(), beta_col.end(), 0.0);  // the numerators, until divided below
    std::fill(col_weight.begin(), col_weight.end(), 0.0);
    for (index_t r = 0; r < rows; ++r) {
      const double ar = alpha[static_cast<std::size_t>(r)];
      for (index_t c = 0; c < cols; ++c)
        if (const double a = at(r, c); a >= 0) {
          beta_col[static_cast<std::size_t>(c)] += ar * a;
          col_weight[static_cast<std::size_t>(c)] += ar * ar;
        }
    }
    for (std::size_t c = 0; c < beta_col.size(); ++c)
      beta_col[c] = col_weight[c] > 0 ? beta_col[c] / col_weight[c] : 0.0;
    for (index_t c = 0; c < cols; ++c) order[static_cast<std::size_t>(c)] = c;
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      return beta_col[static_cast<std::size_t>(a)] < beta_col[static_cast<std::size_t>(b)];
    });
    std::vector<double> x(static_cast<std::size_t>(cols)), wt(static_cast<std::size_t>(cols));
    for (std::size_t i = 0; i < order.size(); ++i)
      x[i] = beta_col[static_cast<std::size_t>(order[i])], wt[i] = col_weight[static_cast<std::size_t>(order[i])];
    const partition_1d part = optimal_partition_1d(x, wt, groups);
    beta.assign(part.ends.size(), 0.0);
    for (std::size_t t = 0, start = 0; t < part.ends.size(); start = static_cast<std::size_t>(part.ends[t++])) {
      double num = 0, den = 0;
      for (std::size_t i = start; i < static_cast<std::size_t>(part.ends[t]); ++i) {
        col_group[static_cast<std::size_t>(order[i])] = static_cast<std::uint8_t>(t);
        num += wt[i] * x[i];
        den += wt[i];
      }
      beta[t] = den > 0 ? num / den : 0.0;
    }
    if (!row_scales) break;  // α ≡ 1: one column step is the optimum
    // Row step: α_r = Σ_c |w| β_g(c) / Σ_c β_g(c)², then normalise mean α to 1 (α·β is scale-invariant).
    double mean_alpha = 0;
    for (index_t r = 0; r < rows; ++r) {
      double num = 0, den = 0;
      for (index_t c = 0; c < cols; ++c)
        if (const double a = at(r, c); a >= 0) {
          const double b = beta[col_group[static_cast<std::size_t>(c)]];
          num += a * b, den += b * b;
        }
      mean_alpha += alpha[static_cast<std::size_t>(r)] = den > 0 ? num / den : 0.0;
    }
    mean_alpha /= static_cast<double>(rows);
    if (mean_alpha > 0)
      for (auto& a : alpha) a /= mean_alpha;
  }

  grouping q;
  q.family = grouping::kind::column;
  q.mode = policy.mode;
  q.rows = rows;
  q.cols = cols;
  q.groups = static_cast<int>(beta.size());
  q.column_group = std::move(col_group);
  switch (policy.mode) {
    case column_scales::shared:
      for (const double b : beta) q.group_scale.emplace_back(static_cast<float>(b));
      break;
    case column_scales::row_times_group: {
      // Round β first, then refit α to the rounded β, so the stored pair is the best one fp16 can hold.
      for (const double b : beta) q.group_scale.emplace_back(static_cast<float>(b));
      for (index_t r = 0; r < rows; ++r) {
        double num = 0, den = 0;
        for (index_t c = 0; c < cols; ++c)
          if (const double a = at(r, c); a >= 0) {
            const double b = q.group_scale[q.column_group[static_cast<std::size_t>(c)]].to_float();
            num += a * b, den += b * b;
          }
        q.row_scale.emplace_back(static_cast<float>(den > 0 ? num / den : 0.0));
      }
      break;
    }
    case column_scales::per_row_group: {
      // α_{r,g} = mean |w| over the row's unsalient weights in group g (exact least squares per cell).
      const auto g_count = static_cast<std::size_t>(q.groups);
      std::vector<double> num(g_count), den(g_count);
      for (index_t r = 0; r < rows; ++r) {
        std::fill(num.begin(), num.end(), 0.0);
        std::fill(den.begin(), den.end(), 0.0);
        for (index_t c = 0; c < cols; ++c)
          if (const double a = at(r, c); a >= 0) {
            num[q.column_group[static_cast<std::size_t>(c)]] += a;
            den[q.column_group[static_cast<std::size_t>(c)]] += 1;
          }
        for (std::size_t g = 0; g < g_count; ++g)
          q.row_scale.emplace_back(static_cast<float>(den[g] > 0 ? num[g] / den[g] : 0.0));
      }
      break;
    }
  }
  if (auto ok = detail::check_scales(q); !ok) return ok;
  return q;
}

}  // namespace group
SAGEPTQ_NAMESPACE_END
