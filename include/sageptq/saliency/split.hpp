#pragma once
/// @file split.hpp
/// The salient/unsalient split of one matrix, driven by the distribution of a metric's unit scores (metric.hpp):
///  - `split_rule::sigmas(t)`: salient iff score > μ + t·σ (μ, σ over the matrix's units), SAGE-PTQ's reading;
///  - `split_rule::top(p)`: the round(p·n) highest-scoring units (a quantile), SEPTQ's and BiLLM's reading.
/// Ties are broken by unit index (lower index first), so the set is a pure function of the scores.
/// Output: `salient_set`, the salient units as a sorted index list. For input channels that list is what the packed
/// format stores (the salient columns become a dense tail of K, kernels.md §3 / §7.1); `dense_mask()` expands any
/// granularity to a per-weight mask for stages that walk the matrix. Single-threaded (O(n log n) on n units).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/status.hpp"
#include "metric.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace saliency {

struct split_rule {
  enum class kind { sigmas, top_fraction };
  kind rule = kind::top_fraction;
  double value = 0.01;

  /// Salient iff score > μ + t·σ.
  static constexpr split_rule sigmas(double t) noexcept { return {kind::sigmas, t}; }
  /// The round(p·n) highest-scoring units, p in [0, 1].
  static constexpr split_rule top(double p) noexcept { return {kind::top_fraction, p}; }
};

/// The salient units of one matrix.
struct salient_set {
  granularity unit = granularity::input_channel;
  index_t rows = 0, cols = 0;
  std::vector<index_t> indices;  ///< sorted ascending: r·cols + c, c or r, by `unit`
  double threshold = 0;          ///< units scoring above it are salient (top: the highest score left out)

  /// Number of salient weights (not units).
  [[nodiscard]] index_t weight_count() const noexcept {
    const auto n = static_cast<index_t>(indices.size());
    switch (unit) {
      case granularity::input_channel: return n * rows;
      case granularity::output_channel: return n * cols;
      case granularity::element: break;
    }
    return n;
  }

  [[nodiscard]] bool contains(index_t r, index_t c) const noexcept {
    const index_t key = unit == granularity::element ? r * cols + c : unit == granularity::input_channel ? c : r;
    return std::binary_search(indices.begin(), indices.end(), key);
  }

  /// rows·cols bytes, 1 where the weight is salient.
  [[nodiscard]] std::vector<std::uint8_t> dense_mask() const {
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(rows * cols), 0);
    for (const index_t i : indices) {
      switch (unit) {
        case granularity::element: mask[static_cast<std::size_t>(i)] = 1; break;
        case granularity::input_channel:
          for (index_t r = 0; r < rows; ++r) mask[static_cast<std::size_t>(r * cols + i)] = 1;
          break;
        case granularity::output_channel:
          std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(i * cols), cols, std::uint8_t{1});
          break;
      }
    }
    return mask;
  }
};

/// Split the units of one matrix by `rule`.
/// @return the salient set, or invalid_shape (no scores) / invalid_argument (p outside [0, 1], t not finite).
inline result<salient_set> split(const unit_scores& scores, const split_rule& rule) {
  const auto& s = scores.values;
  if (s.empty()) return fail(status::invalid_shape, "no saliency scores to split");
  salient_set out{scores.unit, scores.rows, scores.cols, {}, 0.0};
  const auto n = static_cast<index_t>(s.size());

  if (rule.rule == split_rule::kind::sigmas) {
    if (!std::isfinite(rule.value))
      return fail(status::invalid_argument, "sigma threshold must be finite, got " + std::to_string(rule.value));
    double mean = 0, sq = 0;
    for (const float v : s) mean += v;
    mean /= static_cast<double>(n);
    for (const float v : s) sq += (v - mean) * (v - mean);
    out.threshold = mean + rule.value * std::sqrt(sq / static_cast<double>(n));
    for (index_t i = 0; i < n; ++i)
      if (s[static_cast<std::size_t>(i)] > out.threshold) out.indices.push_back(i);
    return out;
  }

  if (!(rule.value >= 0.0 && rule.value <= 1.0))
    return fail(status::invalid_argument, "salient fraction must be in [0, 1], got " + std::to_string(rule.value));
  const auto keep = static_cast<index_t>(std::llround(rule.value * static_cast<double>(n)));
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t{0});
  const auto higher = [&](index_t a, index_t b) {
    const float sa = s[static_cast<std::size_t>(a)], sb = s[static_cast<std::size_t>(b)];
    return sa > sb || (sa == sb && a < b);
  };
  if (keep < n) {
    std::nth_element(order.begin(), order.begin() + keep, order.end(), higher);
    out.threshold = s[static_cast<std::size_t>(order[static_cast<std::size_t>(keep)])];
  } else {
    out.threshold = -std::numeric_limits<double>::infinity();
  }
  out.indices.assign(order.begin(), order.begin() + keep);
  std::sort(out.indices.begin(), out.indices.end());
  return out;
}

/// score() then split(): the salient units of `weights` under metric `m`.
template <metric M, host_matrix_like Weights, class UDiag = no_input, class Reference = no_input,
          executor Exec = inline_executor>
result<salient_set> find_salient(const M& m, const Weights& weights, granularity unit, const split_rule& rule,
                                 const UDiag& u_diag = {}, const Reference& reference = {}, const Exec& exec = {}) {
  auto scores = score(m, weights, unit, u_diag, reference, exec);
  if (!scores.ok()) return scores.as_outcome();
  return split(*scores, rule);
}

}  // namespace saliency
SAGEPTQ_NAMESPACE_END
