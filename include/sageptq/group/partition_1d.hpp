#pragma once
/// @file partition_1d.hpp
/// Optimal 1-D k-means: split sorted weighted points into g contiguous groups minimising Σ w·(x − mean_group)².
/// In 1-D the optimal clusters are contiguous, and the best split point of the last group moves right as the prefix
/// grows, so the dynamic programme D[g][i] = min_j D[g−1][j] + cost(j, i) is solved by divide and conquer over that
/// monotone argmin in O(g · n log n) (Grønlund et al., "Fast exact k-means, k-medians and Bregman divergence
/// clustering in 1D", 2017). Ties go to the smallest split index, so the result is deterministic. Single-threaded.
///
/// Used for value groups (|w| intervals, after binning) and for structural groups (columns by their statistic).

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../config.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace group {

struct partition_1d {
  std::vector<index_t> ends;  ///< group t holds points [ends[t-1], ends[t]) (ends[-1] = 0); ends.back() = n
  double cost = 0;            ///< Σ w·(x − mean)² of the partition
};

namespace detail {
/// Prefix sums of w, w·x, w·x² (x centred on the weighted mean, which keeps the differences accurate).
class prefix_moments {
 public:
  prefix_moments(const std::vector<double>& x, const std::vector<double>& w) : s0_(x.size() + 1), s1_(s0_), s2_(s0_) {
    double total = 0, centre = 0;
    for (std::size_t i = 0; i < x.size(); ++i) total += w[i], centre += w[i] * x[i];
    centre = total > 0 ? centre / total : 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double y = x[i] - centre;
      s0_[i + 1] = s0_[i] + w[i];
      s1_[i + 1] = s1_[i] + w[i] * y;
      s2_[i + 1] = s2_[i] + w[i] * y * y;
    }
  }
  /// Within-group sum of squares of points [a, b).
  [[nodiscard]] double cost(std::size_t a, std::size_t b) const noexcept {
    const double n = s0_[b] - s0_[a];
    if (n <= 0) return 0.0;
    const double s = s1_[b] - s1_[a];
    return std::max(0.0, (s2_[b] - s2_[a]) - s * s / n);
  }

 private:
  std::vector<double> s0_, s1_, s2_;
};
}  // namespace detail

/// @param x sorted ascending; @param w weights >= 0 (same size); @param groups >= 1.
/// Returns min(groups, n) non-empty groups (n = x.size() > 0).
inline partition_1d optimal_partition_1d(const std::vector<double>& x, const std::vector<double>& w, int groups) {
  SAGEPTQ_ASSERT(!x.empty() && x.size() == w.size() && groups >= 1);
  SAGEPTQ_ASSERT(std::is_sorted(x.begin(), x.end()));
  const std::size_t n = x.size();
  const auto g_count = static_cast<std::size_t>(std::min<index_t>(groups, static_cast<index_t>(n)));
  const detail::prefix_moments moments(x, w);
  constexpr double inf = std::numeric_limits<double>::infinity();

  // prev[i] = best cost of the first i points in g−1 groups; split[g][i] = start of the last group.
  std::vector<double> prev(n + 1, inf), cur(n + 1, inf);
  std::vector<std::vector<std::uint32_t>> split(g_count, std::vector<std::uint32_t>(n + 1, 0));
  for (std::size_t i = 1; i <= n; ++i) prev[i] = moments.cost(0, i);
  for (std::size_t g = 1; g < g_count; ++g) {
    std::fill(cur.begin(), cur.end(), inf);
    // cur[i] for i in [lo, hi], knowing its best split lies in [opt_lo, opt_hi].
    auto solve = [&](auto&& self, std::size_t lo, std::size_t hi, std::size_t opt_lo, std::size_t opt_hi) -> void {
      if (lo > hi) return;
      const std::size_t mid = lo + (hi - lo) / 2;
      double best = inf;
      std::size_t arg = opt_lo;
      for (std::size_t j = opt_lo; j <= std::min(opt_hi, mid - 1); ++j) {
        const double c = prev[j] + moments.cost(j, mid);
        if (c < best) best = c, arg = j;
      }
      cur[mid] = best;
      split[g][mid] = static_cast<std::uint32_t>(arg);
      if (mid > lo) self(self, lo, mid - 1, opt_lo, arg);
      self(self, mid + 1, hi, arg, opt_hi);
    };
    solve(solve, g + 1, n, g, n - 1);  // g+1 groups need at least g+1 points; the last starts at >= g
    std::swap(prev, cur);
  }

  partition_1d out;
  out.cost = prev[n];
  out.ends.resize(g_count);
  std::size_t end = n;
  for (std::size_t g = g_count; g-- > 0;) {
    out.ends[g] = static_cast<index_t>(end);
    end = g > 0 ? split[g][end] : 0;
  }
  return out;
}

}  // namespace group
SAGEPTQ_NAMESPACE_END
