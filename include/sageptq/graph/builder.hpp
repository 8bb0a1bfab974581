#pragma once
/// @file builder.hpp
/// The affinity graph of a matrix's unsalient weights: a seeded subsample (features.hpp), its exact kNN under the
/// (distance, index) order (knn.hpp), made symmetric by taking the union of the directed kNN edges (plus, for 1-D
/// features, the 1-D minimum spanning tree, which keeps the graph connected), weighted, in CSR.
///
/// Edge weights (policy `edge_weighting`), with σ_i = distance from i to its k-th neighbour and σ̄ their median:
///  - gaussian: exp(−d² / σ̄²), one bandwidth for the matrix, so edges through a low-density valley between groups
///    are weak (what the spectral and modularity estimators need to see the valley);
///  - self_tuning_gaussian: exp(−d² / (σ_i σ_j)) (Zelnik-Manor & Perona): adapts to the local density, so sparse
///    regions are as strongly connected as dense ones;
///  - inverse_distance: 1 / (1 + d / σ̄) (a scale-free 1/(1+d)).
/// σ_i and σ̄ are floored at 1e-3 × the mean σ_i so exact duplicates (σ = 0) stay finite. The result is a pure function of
/// (weights, salient set, features, config): the same seed gives the same graph for any thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/random.hpp"
#include "../core/status.hpp"
#include "csr_graph.hpp"
#include "features.hpp"
#include "knn.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace graph {

enum class edge_weighting { gaussian, self_tuning_gaussian, inverse_distance };

struct build_config {
  index_t max_points = 16384;  ///< subsample size (all unsalient weights if fewer)
  int k = 10;                  ///< neighbours per node before symmetrisation (degree >= k after)
  edge_weighting weighting = edge_weighting::self_tuning_gaussian;
  std::uint64_t seed = 0;      ///< the subsample is drawn from random_generator::for_stream(seed, 0x67726170)
};

/// The nodes (sampled weights and their features) and the graph over them.
struct weight_graph {
  point_set points;
  csr_graph graph;
};

/// An undirected edge (low index, high index, squared length).
using edge = std::tuple<std::uint32_t, std::uint32_t, double>;

/// The 1-D minimum spanning tree: each point joined to the next in (value, index) order. kNN graphs of scalar data
/// fall apart wherever a gap is wider than the k-neighbourhoods on both sides (often, even at the mode); with these
/// edges the graph stays connected and only the estimators decide where to cut.
inline std::vector<edge> chain_edges_1d(const std::vector<double>& values) {
  std::vector<std::uint32_t> order(values.size());
  std::iota(order.begin(), order.end(), std::uint32_t{0});
  std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return values[a] < values[b] || (values[a] == values[b] && a < b);
  });
  std::vector<edge> out;
  for (std::size_t t = 1; t < order.size(); ++t) {
    const double d = values[order[t]] - values[order[t - 1]];
    out.emplace_back(std::min(order[t], order[t - 1]), std::max(order[t], order[t - 1]), d * d);
  }
  return out;
}

/// Undirected union of the kNN edges {i, j} (j in knn(i) or i in knn(j)) and of `extra` edges.
inline csr_graph symmetric_graph(const knn_result& nn, edge_weighting weighting, std::vector<edge> extra = {}) {
  const auto n = static_cast<std::size_t>(nn.points);
  const auto k = static_cast<std::size_t>(nn.k);
  std::vector<double> sigma(n);
  double mean_sigma = 0;
  for (std::size_t i = 0; i < n; ++i) mean_sigma += sigma[i] = std::sqrt(nn.distance2[i * k + k - 1]);
  mean_sigma = mean_sigma > 0 ? mean_sigma / static_cast<double>(n) : 1.0;
  for (auto& s : sigma) s = std::max(s, 1e-3 * mean_sigma);
  std::vector<double> sorted_sigma = sigma;
  std::nth_element(sorted_sigma.begin(), sorted_sigma.begin() + static_cast<std::ptrdiff_t>(n / 2), sorted_sigma.end());
  const double median_sigma = sorted_sigma[n / 2];

  std::vector<edge> edges = std::move(extra);
  edges.reserve(edges.size() + n * k);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t t = 0; t < k; ++t) {
      const auto j = nn.index[i * k + t], self = static_cast<std::uint32_t>(i);
      edges.emplace_back(std::min(self, j), std::max(self, j), nn.distance2[i * k + t]);
    }
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end(),
                          [](const auto& a, const auto& b) {
                            return std::get<0>(a) == std::get<0>(b) && std::get<1>(a) == std::get<1>(b);
                          }),
              edges.end());

  csr_graph g;
  g.offsets.assign(n + 1, 0);
  for (const auto& [a, b, d2] : edges) ++g.offsets[a + 1], ++g.offsets[b + 1];
  for (std::size_t i = 0; i < n; ++i) g.offsets[i + 1] += g.offsets[i];
  g.targets.resize(2 * edges.size());
  g.weights.resize(2 * edges.size());
  g.lengths.resize(2 * edges.size());
  // Pairs are sorted by (low, high), so filling in that order leaves every node's neighbours sorted by index.
  std::vector<index_t> fill(g.offsets.begin(), g.offsets.end() - 1);
  for (const auto& [a, b, d2] : edges) {
    const double d = std::sqrt(d2);
    double w = 0;
    switch (weighting) {
      case edge_weighting::gaussian: w = std::exp(-d2 / (median_sigma * median_sigma)); break;
      case edge_weighting::self_tuning_gaussian: w = std::exp(-d2 / (sigma[a] * sigma[b])); break;
      case edge_weighting::inverse_distance: w = 1.0 / (1.0 + d / median_sigma); break;
    }
    for (const auto& [from, to] : {std::pair{a, b}, std::pair{b, a}}) {
      const auto e = static_cast<std::size_t>(fill[from]++);
      g.targets[e] = to;
      g.weights[e] = std::max(w, std::numeric_limits<double>::min());  // far edges underflow: keep them > 0
      g.lengths[e] = d;
    }
  }
  return g;
}

/// Build the affinity graph of the unsalient weights of `weights` (`salient` may be null).
/// @return the graph, or the errors of sample_points() and knn() (k >= sampled points is invalid_argument).
template <feature_space F, host_matrix_like Weights, executor Exec = inline_executor>
result<weight_graph> build(const F& features, const Weights& weights, const saliency::salient_set* salient,
                           const build_config& cfg, const Exec& exec = {}) {
  random_generator rng = random_generator::for_stream(cfg.seed, 0x67726170);
  auto points = sample_points(features, weights, salient, cfg.max_points, rng);
  if (!points.ok()) return points.as_outcome();
  auto nn = knn(points->coords, points->dims, cfg.k, exec);
  if (!nn.ok()) return nn.as_outcome();
  auto extra = points->dims == 1 ? chain_edges_1d(points->coords) : std::vector<edge>{};
  csr_graph g = symmetric_graph(*nn, cfg.weighting, std::move(extra));
  return weight_graph{std::move(*points), std::move(g)};
}

}  // namespace graph
SAGEPTQ_NAMESPACE_END
