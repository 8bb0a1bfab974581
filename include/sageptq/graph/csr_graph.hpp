#pragma once
/// @file csr_graph.hpp
/// The sparse symmetric weighted graph the group estimators read (group/ includes only this header of graph/, so
/// nanoflann stays inside the builder). Standard library only.

#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace graph {

/// Undirected graph in CSR form: each edge {i, j} appears as i→j and j→i with the same weight and length, and each
/// node's neighbours are sorted by index. No self-loops.
struct csr_graph {
  std::vector<index_t> offsets{0};  ///< node i's edges are [offsets[i], offsets[i+1])
  std::vector<index_t> targets;
  std::vector<double> weights;  ///< affinity, > 0
  std::vector<double> lengths;  ///< distance in feature space, >= 0

  [[nodiscard]] index_t node_count() const noexcept { return static_cast<index_t>(offsets.size()) - 1; }
  /// Undirected edges.
  [[nodiscard]] index_t edge_count() const noexcept { return static_cast<index_t>(targets.size()) / 2; }
  [[nodiscard]] index_t degree(index_t i) const noexcept {
    return offsets[static_cast<std::size_t>(i) + 1] - offsets[static_cast<std::size_t>(i)];
  }
};

/// Connected components, labelled 0.. in order of their smallest node; edges failing `keep(e)` are ignored
/// (e indexes targets/weights/lengths). Returns one label per node.
template <class KeepEdge>
std::vector<index_t> connected_components(const csr_graph& g, KeepEdge keep, index_t* count = nullptr) {
  const index_t n = g.node_count();
  std::vector<index_t> label(static_cast<std::size_t>(n), -1), stack;
  index_t next = 0;
  for (index_t s = 0; s < n; ++s) {
    if (label[static_cast<std::size_t>(s)] >= 0) continue;
    label[static_cast<std::size_t>(s)] = next;
    stack.push_back(s);
    while (!stack.empty()) {
      const index_t i = stack.back();
      stack.pop_back();
      for (index_t e = g.offsets[static_cast<std::size_t>(i)]; e < g.offsets[static_cast<std::size_t>(i) + 1]; ++e) {
        const index_t j = g.targets[static_cast<std::size_t>(e)];
        if (label[static_cast<std::size_t>(j)] < 0 && keep(e)) {
          label[static_cast<std::size_t>(j)] = next;
          stack.push_back(j);
        }
      }
    }
    ++next;
  }
  if (count) *count = next;
  return label;
}

}  // namespace graph
SAGEPTQ_NAMESPACE_END
