#pragma once
/// @file features.hpp
/// Which unsalient weights become graph nodes (a seeded subsample) and where they sit in feature space.
///
/// Features are policies. Every built-in one is divided by the matrix's mean |w|, so graph lengths are scale-free
/// (one edge-length threshold means the same on every matrix). A custom feature space is a type `F` with
///     static constexpr int dims;                                   // 1..3 keeps the k-d tree effective
///     void point(const weight_context& x, double* out) const;      // writes dims values
/// Single-threaded; O(rows·cols) for the statistics and the walk that maps sampled ranks to positions.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/random.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../saliency/split.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace graph {

/// What a feature policy sees of one weight.
struct weight_context {
  float w = 0;
  index_t row = 0, col = 0;
  double row_mean_abs = 0;     ///< mean |w| of the weight's row (all entries)
  double col_mean_abs = 0;     ///< mean |w| of the weight's column (all entries)
  double matrix_mean_abs = 1;  ///< mean |w| of the matrix, > 0
};

template <class F>
concept feature_space = requires(const F& f, const weight_context& x, double* out) {
  { F::dims } -> std::convertible_to<int>;
  f.point(x, out);
} && F::dims >= 1;

namespace features {
/// w: a signed scalar; groups split along the value axis.
struct value {
  static constexpr int dims = 1;
  void point(const weight_context& x, double* out) const noexcept { out[0] = x.w / x.matrix_mean_abs; }
};
/// |w|: what a sign-plus-scale binarizer cares about (the sign is stored anyway).
struct magnitude {
  static constexpr int dims = 1;
  void point(const weight_context& x, double* out) const noexcept { out[0] = std::fabs(x.w) / x.matrix_mean_abs; }
};
/// (w, row mean |w|): weights of rows with different scales separate even when their values overlap.
struct value_and_row_scale {
  static constexpr int dims = 2;
  void point(const weight_context& x, double* out) const noexcept {
    out[0] = x.w / x.matrix_mean_abs;
    out[1] = x.row_mean_abs / x.matrix_mean_abs;
  }
};
/// (w, column mean |w|): groups of input channels with different scales separate (what column groups need).
struct value_and_column_scale {
  static constexpr int dims = 2;
  void point(const weight_context& x, double* out) const noexcept {
    out[0] = x.w / x.matrix_mean_abs;
    out[1] = x.col_mean_abs / x.matrix_mean_abs;
  }
};
}  // namespace features

/// Sampled weights and their feature vectors.
struct point_set {
  int dims = 1;
  std::vector<index_t> positions;  ///< r·cols + c, increasing
  std::vector<double> coords;      ///< positions.size() x dims, row-major
  [[nodiscard]] index_t size() const noexcept { return static_cast<index_t>(positions.size()); }
};

/// Draw min(max_points, unsalient count) unsalient weights with `rng` and map them to features `f`.
/// `salient` may be null (every weight is a candidate).
/// @return the points, or invalid_shape (empty matrix, mask of another shape, nothing unsalient),
///         non_finite_input, invalid_argument (max_points < 1).
template <feature_space F, host_matrix_like Weights>
result<point_set> sample_points(const F& f, const Weights& weights, const saliency::salient_set* salient,
                                index_t max_points, random_generator& rng) {
  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  if (max_points < 1) return fail(status::invalid_argument, "max_points must be >= 1");
  const index_t rows = w.rows(), cols = w.cols();
  if (salient && (salient->rows != rows || salient->cols != cols))
    return fail(status::invalid_shape, "salient set is for a " + std::to_string(salient->rows) + " x " +
                                           std::to_string(salient->cols) + " matrix, weights are " +
                                           std::to_string(rows) + " x " + std::to_string(cols));
  const std::vector<std::uint8_t> mask = salient ? salient->dense_mask() : std::vector<std::uint8_t>{};
  const index_t candidates = rows * cols - (salient ? salient->weight_count() : 0);
  if (candidates <= 0) return fail(status::invalid_shape, "every weight is salient: nothing to group");

  std::vector<double> row_mean(static_cast<std::size_t>(rows)), col_mean(static_cast<std::size_t>(cols), 0.0);
  double total = 0;
  for (index_t r = 0; r < rows; ++r) {
    double s = 0;
    for (index_t c = 0; c < cols; ++c) {
      const double a = std::fabs(static_cast<double>(to_float(w(r, c))));
      s += a;
      col_mean[static_cast<std::size_t>(c)] += a;
    }
    row_mean[static_cast<std::size_t>(r)] = s / static_cast<double>(cols);
    total += s;
  }
  for (auto& m : col_mean) m /= static_cast<double>(rows);
  const double matrix_mean = total > 0 ? total / static_cast<double>(rows * cols) : 1.0;

  const auto ranks = sample_without_replacement(rng, static_cast<std::uint64_t>(candidates),
                                                static_cast<std::uint64_t>(std::min(max_points, candidates)));
  point_set out;
  out.dims = F::dims;
  out.positions.reserve(ranks.size());
  out.coords.resize(ranks.size() * static_cast<std::size_t>(F::dims));
  std::size_t next = 0;  // ranks are increasing: one walk over the unsalient weights finds them all
  std::uint64_t rank = 0;
  for (index_t p = 0; p < rows * cols && next < ranks.size(); ++p) {
    if (!mask.empty() && mask[static_cast<std::size_t>(p)]) continue;
    if (rank++ != ranks[next]) continue;
    const index_t r = p / cols, c = p % cols;
    f.point(weight_context{to_float(w(r, c)), r, c, row_mean[static_cast<std::size_t>(r)],
                           col_mean[static_cast<std::size_t>(c)], matrix_mean},
            out.coords.data() + next * static_cast<std::size_t>(F::dims));
    out.positions.push_back(p);
    ++next;
  }
  return out;
}

}  // namespace graph
SAGEPTQ_NAMESPACE_END
