#pragma once
/// @file estimators.hpp
/// The number of groups G of a matrix's unsalient weights, estimated from their affinity graph (graph/builder.hpp).
///
/// Three estimators, each a policy type with its knobs:
///  - `cut_components`: robust single linkage: cut every edge whose mutual-reachability length max(d_ij, c_i, c_j)
///    (c = core distance, the k-th neighbour's) exceeds factor^(1/dims) × the median core distance, i.e. where the
///    density falls below ~1/factor of the typical one; count the components that hold at least min_fraction of
///    the nodes (tails fall apart into small pieces: ignored);
///  - `modularity`: Louvain (local moves in node order, then aggregation, until modularity stops rising), count the
///    communities holding at least min_fraction of the nodes;
///  - `eigengap`: the first max_groups + 1 eigenvalues λ of the normalised Laplacian I − D^{-1/2} A D^{-1/2} of the
///    graph's large components. On the kNN graph of one smooth density the λ grow like g^(2/dims) (Weyl), so
///    absolute gaps point at max_groups and ratios λ_{g+1}/λ_g stay <= 4; G groups separated by low-density valleys
///    leave λ_1..λ_G small. So G = the largest g >= 2 with λ_{g+1}/λ_g > `min_ratio`, else 1 (the largest, not
///    the steepest: a weakly linked pair of groups gives a smaller λ than a missing link, and both count).
///    Dense Eigen below `dense_limit` nodes, Spectra's Lanczos above it (dense for all when Spectra is absent).
/// Each returns G in [1, max_groups]; the first two also label every node. A custom estimator is any type with
///     result<group_count> count(const graph::csr_graph&, int max_groups) const;
/// All are single-threaded and deterministic (fixed visiting order; Lanczos starts from a seeded vector).

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <Eigen/Dense>
#include <Eigen/SparseCore>

// Spectra is optional (the build links it when found): without it every component goes to the dense solver.
#if __has_include(<Spectra/SymEigsSolver.h>)
#include <Spectra/MatOp/SparseSymMatProd.h>
#include <Spectra/SymEigsSolver.h>
#define SAGEPTQ_DETAIL_HAS_SPECTRA 1
#else
#define SAGEPTQ_DETAIL_HAS_SPECTRA 0
#endif

#include "../config.hpp"
#include "../core/random.hpp"
#include "../core/status.hpp"
#include "../graph/csr_graph.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace group {

/// An estimate of G.
struct group_count {
  int groups = 1;
  std::vector<index_t> labels;  ///< per node: its cluster (component, community; empty for eigengap)
  std::vector<double> spectrum; ///< eigengap only: the Laplacian eigenvalues used, ascending
};

template <class E>
concept estimator = requires(const E& e, const graph::csr_graph& g, int max_groups) {
  { e.count(g, max_groups) } -> std::same_as<result<group_count>>;
};

namespace detail {
inline outcome check_graph(const graph::csr_graph& g, int max_groups) {
  if (g.node_count() < 2) return fail(status::invalid_shape, "the graph needs at least 2 nodes");
  if (max_groups < 1) return fail(status::invalid_argument, "max_groups must be >= 1");
  for (const double w : g.weights)
    if (!(w > 0.0) || !std::isfinite(w)) return fail(status::invalid_argument, "edge weights must be finite and > 0");
  return {};
}

/// Clusters holding at least `min_fraction` of the nodes, in [1, max_groups].
inline int count_large(const std::vector<index_t>& labels, index_t clusters, double min_fraction, int max_groups) {
  std::vector<index_t> size(static_cast<std::size_t>(clusters), 0);
  for (const index_t l : labels) ++size[static_cast<std::size_t>(l)];
  const double floor = min_fraction * static_cast<double>(labels.size());
  const auto large = std::count_if(size.begin(), size.end(), [&](index_t s) { return static_cast<double>(s) >= floor; });
  return static_cast<int>(std::clamp<std::ptrdiff_t>(large, 1, max_groups));
}
}  // namespace detail

/// Connected components after cutting edges through low-density regions (robust single linkage, as in HDBSCAN).
struct cut_components {
  int core_k = 10;             ///< core distance c_i = the core_k-th shortest edge of i (the builder's k)
  double factor = 16.0;        ///< cut edges whose max(d_ij, c_i, c_j) exceeds factor^(1/dims) × median c
  int dims = 1;                ///< feature-space dimension: a density ratio of 1/factor is a length ratio factor^(1/dims)
  double min_fraction = 0.02;  ///< smaller components are tails, not groups

  [[nodiscard]] result<group_count> count(const graph::csr_graph& g, int max_groups) const {
    if (auto ok = detail::check_graph(g, max_groups); !ok) return ok;
    if (core_k < 1 || !(factor > 0) || dims < 1)
      return fail(status::invalid_argument, "cut_components needs core_k >= 1, factor > 0 and dims >= 1");
    // Core distances: large where the density is low (valleys between groups, tails).
    const index_t n = g.node_count();
    std::vector<double> core(static_cast<std::size_t>(n), 0.0), lengths;
    for (index_t i = 0; i < n; ++i) {
      lengths.assign(g.lengths.begin() + g.offsets[static_cast<std::size_t>(i)],
                     g.lengths.begin() + g.offsets[static_cast<std::size_t>(i) + 1]);
      if (lengths.empty()) continue;
      const auto t = static_cast<std::ptrdiff_t>(std::min<std::size_t>(static_cast<std::size_t>(core_k), lengths.size()) - 1);
      std::nth_element(lengths.begin(), lengths.begin() + t, lengths.end());
      core[static_cast<std::size_t>(i)] = lengths[static_cast<std::size_t>(t)];
    }
    std::vector<double> sorted = core;
    std::nth_element(sorted.begin(), sorted.begin() + n / 2, sorted.end());
    const double cut = std::pow(factor, 1.0 / dims) * sorted[static_cast<std::size_t>(n / 2)];
    index_t components = 0;
    group_count out;
    out.labels = graph::connected_components(
        g,
        [&](index_t e) {
          const auto se = static_cast<std::size_t>(e);
          const auto i = static_cast<std::size_t>(std::upper_bound(g.offsets.begin(), g.offsets.end(), e) - g.offsets.begin() - 1);
          const auto j = static_cast<std::size_t>(g.targets[se]);
          return std::max({g.lengths[se], core[i], core[j]}) <= cut;
        },
        &components);
    out.groups = detail::count_large(out.labels, components, min_fraction, max_groups);
    return out;
  }
};

/// Louvain modularity communities.
struct modularity {
  double resolution = 0.03;    ///< γ: larger finds more, smaller communities (1 = Newman-Girvan; kNN graphs of a
                               ///< smooth density split into ~sqrt(γ·edges) pieces, so keep it small)
  double min_fraction = 0.02;
  int max_sweeps = 50;         ///< local-move sweeps per level

  [[nodiscard]] result<group_count> count(const graph::csr_graph& g, int max_groups) const {
    if (auto ok = detail::check_graph(g, max_groups); !ok) return ok;
    if (!(resolution > 0)) return fail(status::invalid_argument, "modularity resolution must be > 0");
    // Working graph (self-loops allowed after aggregation) and the community of every original node.
    std::vector<index_t> offsets = g.offsets, targets = g.targets;
    std::vector<double> weights = g.weights;
    std::vector<index_t> label(static_cast<std::size_t>(g.node_count()));
    std::iota(label.begin(), label.end(), index_t{0});
    for (;;) {
      const auto n = static_cast<index_t>(offsets.size()) - 1;
      std::vector<double> degree(static_cast<std::size_t>(n), 0.0);
      double two_m = 0;
      for (index_t i = 0; i < n; ++i)
        for (index_t e = offsets[static_cast<std::size_t>(i)]; e < offsets[static_cast<std::size_t>(i) + 1]; ++e)
          degree[static_cast<std::size_t>(i)] += weights[static_cast<std::size_t>(e)];
      for (const double d : degree) two_m += d;
      if (two_m <= 0) break;  // no edges: every node is its own community
      std::vector<index_t> community(static_cast<std::size_t>(n));
      std::iota(community.begin(), community.end(), index_t{0});
      std::vector<double> total = degree;  // Σ degree per community
      std::vector<double> link(static_cast<std::size_t>(n), 0.0);  // weight from the moving node to each community
      std::vector<index_t> touched;
      bool moved_any = false;
      for (int sweep = 0; sweep < max_sweeps; ++sweep) {
        bool moved = false;
        for (index_t i = 0; i < n; ++i) {
          const auto si = static_cast<std::size_t>(i);
          const index_t own = community[si];
          for (index_t e = offsets[si]; e < offsets[si + 1]; ++e) {
            const index_t j = targets[static_cast<std::size_t>(e)];
            if (j == i) continue;
            const auto c = static_cast<std::size_t>(community[static_cast<std::size_t>(j)]);
            if (link[c] == 0.0) touched.push_back(static_cast<index_t>(c));
            link[c] += weights[static_cast<std::size_t>(e)];
          }
          total[static_cast<std::size_t>(own)] -= degree[si];
          // Gain of joining c, up to terms that do not depend on c: link(c) − γ·total(c)·k_i / 2m.
          const double scale = resolution * degree[si] / two_m;
          index_t best = own;
          double best_gain = link[static_cast<std::size_t>(own)] - scale * total[static_cast<std::size_t>(own)];
          std::sort(touched.begin(), touched.end());  // visit candidate communities in a fixed order
          for (const index_t c : touched) {
            const double gain = link[static_cast<std::size_t>(c)] - scale * total[static_cast<std::size_t>(c)];
            if (gain > best_gain + 1e-12 * std::fabs(best_gain)) best = c, best_gain = gain;
          }
          total[static_cast<std::size_t>(best)] += degree[si];
          for (const index_t c : touched) link[static_cast<std::size_t>(c)] = 0.0;
          touched.clear();
          if (best != own) community[si] = best, moved = true;
        }
        if (!moved) break;
        moved_any = true;
      }
      if (!moved_any) break;
      // Renumber communities by first appearance, relabel the original nodes, and aggregate.
      std::vector<index_t> renumber(static_cast<std::size_t>(n), -1);
      index_t next = 0;
      for (auto& c : community) {
        auto& r = renumber[static_cast<std::size_t>(c)];
        if (r < 0) r = next++;
        c = r;
      }
      for (auto& l : label) l = community[static_cast<std::size_t>(l)];
      std::vector<std::vector<std::pair<index_t, double>>> adjacency(static_cast<std::size_t>(next));
      for (index_t i = 0; i < n; ++i)
        for (index_t e = offsets[static_cast<std::size_t>(i)]; e < offsets[static_cast<std::size_t>(i) + 1]; ++e)
          adjacency[static_cast<std::size_t>(community[static_cast<std::size_t>(i)])].emplace_back(
              community[static_cast<std::size_t>(targets[static_cast<std::size_t>(e)])],
              weights[static_cast<std::size_t>(e)]);
      offsets.assign(1, 0);
      targets.clear();
      weights.clear();
      for (auto& row : adjacency) {
        std::sort(row.begin(), row.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        for (std::size_t t = 0; t < row.size(); ++t) {
          if (t > 0 && row[t].first == row[t - 1].first) weights.back() += row[t].second;
          else targets.push_back(row[t].first), weights.push_back(row[t].second);
        }
        offsets.push_back(static_cast<index_t>(targets.size()));
      }
      if (next == n) break;
    }
    group_count out;
    const index_t clusters = label.empty() ? 0 : *std::max_element(label.begin(), label.end()) + 1;
    out.groups = detail::count_large(label, clusters, min_fraction, max_groups);
    out.labels = std::move(label);
    return out;
  }
};

/// Eigenvalue ratios among the first max_groups + 1 eigenvalues of the normalised Laplacian.
struct eigengap {
  double min_fraction = 0.02;  ///< nodes of smaller connected components (outlying tails) are left out first
  double min_ratio = 5.0;      ///< G > 1 needs λ_{G+1} / λ_G above this (smooth spectra grow by 4x at most: 1-D)
  double min_weight = 1e-10;   ///< weaker edges are dropped (they would only make a repeated 0 look simple)
  index_t dense_limit = 400;   ///< components up to this many nodes: dense self-adjoint solver; above: Lanczos
  double tolerance = 1e-8;     ///< Lanczos convergence
  int max_iterations = 3000;

  [[nodiscard]] result<group_count> count(const graph::csr_graph& g, int max_groups) const {
    if (auto ok = detail::check_graph(g, max_groups); !ok) return ok;
    // The spectrum of a graph is the union of its components' spectra. Solving per component matters: Lanczos
    // finds one copy of a repeated eigenvalue, and k disconnected groups give the eigenvalue 0 k times. Tiny
    // components (outlying tails) are left out: each would add a 0 of its own.
    index_t components = 0;
    const auto strong = [&](index_t e) { return g.weights[static_cast<std::size_t>(e)] >= min_weight; };
    const auto component = graph::connected_components(g, strong, &components);
    std::vector<std::vector<index_t>> members(static_cast<std::size_t>(components));
    for (index_t i = 0; i < g.node_count(); ++i) members[static_cast<std::size_t>(component[static_cast<std::size_t>(i)])].push_back(i);

    group_count out;
    status numerical = status::success;
    std::string message;
    for (const auto& nodes : members) {
      if (static_cast<double>(nodes.size()) < min_fraction * static_cast<double>(g.node_count())) continue;
      if (!smallest_eigenvalues(g, nodes, max_groups + 1, out.spectrum)) {
        numerical = status::no_convergence;
        message = "Lanczos did not converge in " + std::to_string(max_iterations) +
                  " restarts on a component of " + std::to_string(nodes.size()) + " nodes; G from its Ritz values";
      }
    }
    std::sort(out.spectrum.begin(), out.spectrum.end());
    if (out.spectrum.size() > static_cast<std::size_t>(max_groups) + 1) out.spectrum.resize(static_cast<std::size_t>(max_groups) + 1);
    // Eigenvalues below the solver's accuracy are zeros (nearly disconnected groups); the floor keeps their ratios
    // from being noise.
    const double floor = 100 * tolerance;
    for (std::size_t t = 1; t + 1 < out.spectrum.size(); ++t)
      if ((out.spectrum[t + 1] + floor) / (out.spectrum[t] + floor) > min_ratio) out.groups = static_cast<int>(t) + 1;
    out.groups = std::clamp(out.groups, 1, max_groups);
    if (numerical != status::success) return {std::move(out), numerical, std::move(message)};
    return out;
  }

 private:
  /// Appends the `wanted` smallest eigenvalues of the normalised Laplacian of the connected subgraph `nodes`
  /// (all of them if it is smaller); false if Lanczos did not converge (the Ritz values are appended anyway).
  bool smallest_eigenvalues(const graph::csr_graph& g, const std::vector<index_t>& nodes, int wanted,
                            std::vector<double>& spectrum) const {
    const auto n = static_cast<index_t>(nodes.size());
    if (n == 1) return spectrum.push_back(0.0), true;
    std::vector<index_t> local(static_cast<std::size_t>(g.node_count()), -1);
    for (index_t t = 0; t < n; ++t) local[static_cast<std::size_t>(nodes[static_cast<std::size_t>(t)])] = t;
    // M = D^{-1/2} A D^{-1/2}: its largest eigenvalues μ are 1 − λ for the smallest λ of the Laplacian.
    std::vector<double> inv_sqrt_degree(static_cast<std::size_t>(n));
    for (index_t t = 0; t < n; ++t) {
      const auto i = static_cast<std::size_t>(nodes[static_cast<std::size_t>(t)]);
      double d = 0;
      for (index_t e = g.offsets[i]; e < g.offsets[i + 1]; ++e)
        if (g.weights[static_cast<std::size_t>(e)] >= min_weight) d += g.weights[static_cast<std::size_t>(e)];
      inv_sqrt_degree[static_cast<std::size_t>(t)] = 1.0 / std::sqrt(d);
    }
    std::vector<Eigen::Triplet<double>> entries;
    for (index_t t = 0; t < n; ++t) {
      const auto i = static_cast<std::size_t>(nodes[static_cast<std::size_t>(t)]);
      for (index_t e = g.offsets[i]; e < g.offsets[i + 1]; ++e) {
        if (g.weights[static_cast<std::size_t>(e)] < min_weight) continue;
        const index_t u = local[static_cast<std::size_t>(g.targets[static_cast<std::size_t>(e)])];
        entries.emplace_back(static_cast<int>(t), static_cast<int>(u),
                             g.weights[static_cast<std::size_t>(e)] * inv_sqrt_degree[static_cast<std::size_t>(t)] *
                                 inv_sqrt_degree[static_cast<std::size_t>(u)]);
      }
    }
    Eigen::SparseMatrix<double> m(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(n));
    m.setFromTriplets(entries.begin(), entries.end());

    const auto count = static_cast<Eigen::Index>(std::min<index_t>(wanted, n));
    Eigen::VectorXd mu;
    bool converged = true;
    if (!SAGEPTQ_DETAIL_HAS_SPECTRA || n <= dense_limit || 2 * count + 1 >= n) {
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(Eigen::MatrixXd(m), Eigen::EigenvaluesOnly);
      mu = solver.eigenvalues().reverse().head(count);  // ascending -> the largest first
    } else {
#if SAGEPTQ_DETAIL_HAS_SPECTRA
      Spectra::SparseSymMatProd<double> op(m);
      const auto ncv = std::min<Eigen::Index>(static_cast<Eigen::Index>(n), std::max<Eigen::Index>(4 * count, 40));
      Spectra::SymEigsSolver<Spectra::SparseSymMatProd<double>> solver(op, count, ncv);
      random_generator rng(0x6569676e);  // a fixed, seeded start vector: the same spectrum on every run
      Eigen::VectorXd start(static_cast<Eigen::Index>(n));
      for (auto& v : start) v = rng.uniform() - 0.5;
      solver.init(start.data());
      solver.compute(Spectra::SortRule::LargestAlge, max_iterations, tolerance, Spectra::SortRule::LargestAlge);
      mu = solver.eigenvalues();
      converged = solver.info() == Spectra::CompInfo::Successful;
#endif
    }
    for (Eigen::Index t = 0; t < mu.size(); ++t) spectrum.push_back(std::max(0.0, 1.0 - mu[t]));
    return converged;
  }
};

/// G of `g` by estimator `e` (any of the above, or a custom one).
template <estimator E>
result<group_count> estimate_groups(const graph::csr_graph& g, const E& e, int max_groups) {
  return e.count(g, max_groups);
}

}  // namespace group
SAGEPTQ_NAMESPACE_END
