#pragma once
/// @file knn.hpp
/// Exact k-nearest neighbours of every point of a small-dimensional point set, with a total order on ties:
/// neighbours are ranked by (squared Euclidean distance, index), the point itself excluded. bf16 weights hold many
/// exactly equal values, so "the" k nearest are defined only with such a rule; with it the result is a pure function
/// of the coordinates, equal to a brute-force search that sorts by the same key.
///
/// A nanoflann k-d tree finds the candidates; our own result set applies the order (nanoflann's KNNResultSet keeps
/// whichever tie it meets first, which depends on the tree). Queries run on the caller's executor, one result row
/// per point, so the output does not depend on the thread count. nanoflann is included here and nowhere else
/// outside graph/; the one call whose signature changed in nanoflann 1.5 is isolated in `detail::find_neighbors`.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nanoflann.hpp>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace graph {

/// For each point, its k neighbours in increasing (squared distance, index) order.
struct knn_result {
  index_t points = 0;
  int k = 0;
  std::vector<std::uint32_t> index;  ///< points x k, row-major
  std::vector<double> distance2;     ///< points x k, squared Euclidean distance
};

namespace detail {

/// nanoflann DatasetAdaptor over a row-major array of `count` points of `dims` coordinates.
struct point_cloud {
  const double* coords;
  std::size_t count;
  std::size_t dims;
  [[nodiscard]] std::size_t kdtree_get_point_count() const noexcept { return count; }
  [[nodiscard]] double kdtree_get_pt(std::size_t i, std::size_t d) const noexcept { return coords[i * dims + d]; }
  template <class BoundingBox>
  bool kdtree_get_bbox(BoundingBox&) const noexcept {
    return false;
  }
};

/// nanoflann result set keeping the k smallest (distance, index) pairs in order, skipping the query point.
class nearest_by_distance_then_index {
 public:
  using DistanceType = double;
  using IndexType = std::uint32_t;

  nearest_by_distance_then_index(std::uint32_t self, std::size_t k, double* distance2, std::uint32_t* index) noexcept
      : self_(self), k_(k), distance2_(distance2), index_(index) {}

  bool addPoint(double d, std::uint32_t i) noexcept {
    if (i == self_) return true;
    if (count_ == k_ && !before(d, i, k_ - 1)) return true;
    std::size_t pos = count_ < k_ ? count_++ : k_ - 1;
    for (; pos > 0 && before(d, i, pos - 1); --pos) {
      distance2_[pos] = distance2_[pos - 1];
      index_[pos] = index_[pos - 1];
    }
    distance2_[pos] = d;
    index_[pos] = i;
    return true;
  }

  /// nanoflann offers a point only if its distance is < worstDist(), and prunes a cell when its incrementally
  /// rounded lower bound exceeds it. Answering a hair above the current k-th distance lets ties (and rounding
  /// near-ties) through to addPoint, which decides exactly; the extra candidates cost nothing measurable.
  [[nodiscard]] double worstDist() const noexcept {
    if (count_ < k_) return std::numeric_limits<double>::infinity();
    const double worst = distance2_[k_ - 1];
    return std::nextafter(worst + worst * 1e-12, std::numeric_limits<double>::infinity());
  }
  [[nodiscard]] bool full() const noexcept { return count_ == k_; }
  [[nodiscard]] std::size_t size() const noexcept { return count_; }
  [[nodiscard]] bool empty() const noexcept { return count_ == 0; }
  void sort() noexcept {}  // always sorted (nanoflann >= 1.5 calls this)

 private:
  [[nodiscard]] bool before(double d, std::uint32_t i, std::size_t pos) const noexcept {
    return d < distance2_[pos] || (d == distance2_[pos] && i < index_[pos]);
  }
  std::uint32_t self_;
  std::size_t k_, count_ = 0;
  double* distance2_;
  std::uint32_t* index_;
};

/// The one call whose parameter type nanoflann renamed in 1.5 (SearchParams -> SearchParameters, eps first).
template <class Tree, class ResultSet>
void find_neighbors(const Tree& tree, ResultSet& results, const double* query) {
#if NANOFLANN_VERSION >= 0x150
  tree.findNeighbors(results, query, nanoflann::SearchParameters{});
#else
  tree.findNeighbors(results, query, nanoflann::SearchParams{});
#endif
}

}  // namespace detail

/// k nearest neighbours of each of the `coords.size() / dims` points.
/// @return the neighbour table, or invalid_shape (fewer than 2 points, coords not a multiple of dims, more than
///         2^32 - 1 points), invalid_argument (k < 1 or k >= points, dims < 1), non_finite_input.
template <executor Exec = inline_executor>
result<knn_result> knn(const std::vector<double>& coords, int dims, int k, const Exec& exec = {}) {
  if (dims < 1) return fail(status::invalid_argument, "dims must be >= 1, got " + std::to_string(dims));
  const auto udims = static_cast<std::size_t>(dims);
  if (coords.size() % udims != 0)
    return fail(status::invalid_shape, std::to_string(coords.size()) + " coordinates are not a multiple of dims " +
                                           std::to_string(dims));
  const std::size_t n = coords.size() / udims;
  if (n < 2) return fail(status::invalid_shape, "kNN needs at least 2 points, got " + std::to_string(n));
  if (n > std::numeric_limits<std::uint32_t>::max() - 1)
    return fail(status::invalid_shape, "kNN takes at most 2^32 - 2 points, got " + std::to_string(n));
  if (k < 1 || static_cast<std::size_t>(k) >= n)
    return fail(status::invalid_argument,
                "k must be in [1, points - 1] = [1, " + std::to_string(n - 1) + "], got " + std::to_string(k));
  for (std::size_t i = 0; i < coords.size(); ++i)
    if (!is_finite(coords[i]))
      return fail(status::non_finite_input, "point " + std::to_string(i / udims) + " has a non-finite coordinate");

  using cloud = detail::point_cloud;
  using tree_type =
      nanoflann::KDTreeSingleIndexAdaptor<nanoflann::L2_Simple_Adaptor<double, cloud, double, std::uint32_t>, cloud,
                                          -1, std::uint32_t>;
  const cloud points{coords.data(), n, udims};
  const tree_type tree(dims, points, nanoflann::KDTreeSingleIndexAdaptorParams(16));

  knn_result out{static_cast<index_t>(n), k, std::vector<std::uint32_t>(n * static_cast<std::size_t>(k)),
                 std::vector<double>(n * static_cast<std::size_t>(k))};
  constexpr index_t block = 256;  // queries per task
  exec.parallel_for((static_cast<index_t>(n) + block - 1) / block, [&](index_t b) {
    const auto end = std::min(n, static_cast<std::size_t>((b + 1) * block));
    for (auto i = static_cast<std::size_t>(b * block); i < end; ++i) {
      const std::size_t row = i * static_cast<std::size_t>(k);
      detail::nearest_by_distance_then_index results(static_cast<std::uint32_t>(i), static_cast<std::size_t>(k),
                                                     out.distance2.data() + row, out.index.data() + row);
      detail::find_neighbors(tree, results, coords.data() + i * udims);
    }
  });
  return out;
}

}  // namespace graph
SAGEPTQ_NAMESPACE_END
