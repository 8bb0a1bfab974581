#pragma once
/// @file metric.hpp
/// Saliency metrics as policy types, and their scores reduced to the unit a splitter ranks (element, input channel,
/// output channel).
///
/// Inputs: the weight matrix W (rows = output channels, cols = input channels), and, when the metric asks for them,
/// `u_diag` = the diagonal of U, the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU) as GPTQ, BiLLM and SEPTQ use it, one
/// value per column; and `reference` = a reference quantization Q0 of W (SEPTQ's RTN). We take U's diagonal rather
/// than diag(H⁻¹) because U_jj² is the OBS error denominator of the column-by-column update that follows (BiLLM's
/// `hessian` metric and SEPTQ both divide by U_jj²). A caller holding only diag(H⁻¹) passes its element-wise square
/// root and gets the classic OBS saliency w²/[H⁻¹]_jj.
/// Output: one float score per unit, larger = more salient. Rows run on the caller's executor; each unit's sum is
/// accumulated in double in index order, so scores do not depend on the thread count.
///
/// A custom metric is any type `M` with
///     double score(const saliency::element& e) const;      // e.w, e.reference, e.u_diag, e.row, e.col
/// and optionally `static constexpr bool needs_u_diag = true;` / `needs_reference = true;` to require those inputs
/// (a metric that needs an input it is not given is a compile error, not a silent default).

#include <algorithm>
#include <cmath>
#include <concepts>
#include <string>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace saliency {

/// What a metric sees of one weight.
struct element {
  float w = 0;          ///< the weight
  float reference = 0;  ///< Q0 at the same position (0 when no reference is given)
  float u_diag = 1;     ///< U_jj of its column (1 when not given)
  index_t row = 0, col = 0;
};

template <class M>
concept metric = requires(const M& m, const element& e) {
  { m.score(e) } -> std::convertible_to<double>;
};

template <class M>
inline constexpr bool needs_u_diag_v = requires { requires M::needs_u_diag; };
template <class M>
inline constexpr bool needs_reference_v = requires { requires M::needs_reference; };

/// |w|: SAGE-PTQ's "weight-distribution statistics" read literally.
struct magnitude {
  [[nodiscard]] double score(const element& e) const noexcept { return std::fabs(static_cast<double>(e.w)); }
};

/// OBS / BiLLM `hessian`: w² / U_jj², the loss of removing w alone in the sequential update.
struct hessian {
  static constexpr bool needs_u_diag = true;
  [[nodiscard]] double score(const element& e) const noexcept {
    const double w = e.w, u = e.u_diag;
    return w * w / (u * u);
  }
};

/// SEPTQ: (w − Q0)² / U_jj², the OBS loss of rounding w to the reference grid.
struct rtn_error {
  static constexpr bool needs_u_diag = true;
  static constexpr bool needs_reference = true;
  [[nodiscard]] double score(const element& e) const noexcept {
    const double d = static_cast<double>(e.w) - e.reference, u = e.u_diag;
    return d * d / (u * u);
  }
};

/// The unit a salient decision is made for. Input channels are what the packed format and the GEMV kernel want
/// (a dense tail of columns, kernels.md §3); elements are what BiLLM/SEPTQ/PB-LLM use.
enum class granularity { element, input_channel, output_channel };

/// An argument that was not given (side inputs a metric does not need).
struct no_input {};

/// Scores per unit: `values[u]`, with u = r·cols + c (element), c (input channel) or r (output channel).
struct unit_scores {
  granularity unit = granularity::element;
  index_t rows = 0, cols = 0;
  std::vector<float> values;
};

namespace detail {
template <class V>
outcome check_u_diag(const V& u, index_t cols) {
  if (u.size() != cols)
    return fail(status::invalid_shape, "u_diag has " + std::to_string(u.size()) + " values, the matrix has " +
                                           std::to_string(cols) + " columns");
  for (index_t c = 0; c < cols; ++c) {
    const float v = to_float(u(c));
    if (!is_finite(v)) return fail(status::non_finite_input, "u_diag has a non-finite value at " + std::to_string(c));
    if (!(v > 0.0f))
      return fail(status::invalid_argument, "u_diag must be > 0 (a Cholesky diagonal), got " + std::to_string(v) +
                                                " at " + std::to_string(c));
  }
  return {};
}
}  // namespace detail

/// Score every unit of `weights` with metric `m`.
/// @tparam Weights, Reference *(concept: host_matrix_like)*; @tparam UDiag *(concept: host_vector_like)*; either side
///         input may be `no_input{}` when `M` does not need it.
/// @return the scores, or invalid_shape (empty or mismatched inputs), non_finite_input, invalid_argument (U_jj <= 0).
template <metric M, host_matrix_like Weights, class UDiag = no_input, class Reference = no_input,
          executor Exec = inline_executor>
result<unit_scores> score(const M& m, const Weights& weights, granularity unit, const UDiag& u_diag = {},
                          const Reference& reference = {}, const Exec& exec = {}) {
  constexpr bool has_u = !std::is_same_v<UDiag, no_input>;
  constexpr bool has_ref = !std::is_same_v<Reference, no_input>;
  static_assert(!needs_u_diag_v<M> || has_u, "sageptq: this saliency metric needs U's diagonal (u_diag)");
  static_assert(!needs_reference_v<M> || has_ref, "sageptq: this saliency metric needs a reference matrix Q0");

  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  const index_t rows = w.rows(), cols = w.cols();

  // Side inputs are read through these two lambdas; absent ones read as the neutral value.
  auto u_at = [&](index_t c) -> float {
    if constexpr (has_u) return to_float(sageptq::view(u_diag)(c));
    else return 1.0f;
  };
  auto ref_at = [&](index_t r, index_t c) -> float {
    if constexpr (has_ref) return to_float(sageptq::view(reference)(r, c));
    else return 0.0f;
  };
  if constexpr (has_u) {
    static_assert(host_vector_like<UDiag>, "sageptq: u_diag must be a host vector");
    if (auto ok = detail::check_u_diag(sageptq::view(u_diag), cols); !ok) return ok;
  }
  if constexpr (has_ref) {
    static_assert(host_matrix_like<Reference>, "sageptq: reference must be a host matrix");
    const auto q = sageptq::view(reference);
    if (q.rows() != rows || q.cols() != cols)
      return fail(status::invalid_shape, "reference is " + std::to_string(q.rows()) + " x " +
                                             std::to_string(q.cols()) + ", weights are " + std::to_string(rows) +
                                             " x " + std::to_string(cols));
    if (auto ok = check_finite_matrix(q, "reference matrix"); !ok) return ok;
  }

  unit_scores out{unit, rows, cols, {}};
  const auto element_score = [&](index_t r, index_t c) {
    return m.score(element{to_float(w(r, c)), ref_at(r, c), u_at(c), r, c});
  };
  switch (unit) {
    case granularity::element:
      out.values.resize(static_cast<std::size_t>(rows * cols));
      exec.parallel_for(rows, [&](index_t r) {
        for (index_t c = 0; c < cols; ++c)
          out.values[static_cast<std::size_t>(r * cols + c)] = static_cast<float>(element_score(r, c));
      });
      break;
    case granularity::output_channel:
      out.values.resize(static_cast<std::size_t>(rows));
      exec.parallel_for(rows, [&](index_t r) {
        double s = 0;
        for (index_t c = 0; c < cols; ++c) s += element_score(r, c);
        out.values[static_cast<std::size_t>(r)] = static_cast<float>(s);
      });
      break;
    case granularity::input_channel: {
      // Column sums, parallel over column blocks so each sum still runs over rows in order.
      constexpr index_t block = 64;
      out.values.resize(static_cast<std::size_t>(cols));
      exec.parallel_for((cols + block - 1) / block, [&](index_t b) {
        const index_t c0 = b * block, c1 = std::min(cols, c0 + block);
        std::vector<double> s(static_cast<std::size_t>(c1 - c0), 0.0);
        for (index_t r = 0; r < rows; ++r)
          for (index_t c = c0; c < c1; ++c) s[static_cast<std::size_t>(c - c0)] += element_score(r, c);
        for (index_t c = c0; c < c1; ++c)
          out.values[static_cast<std::size_t>(c)] = static_cast<float>(s[static_cast<std::size_t>(c - c0)]);
      });
      break;
    }
  }
  for (std::size_t i = 0; i < out.values.size(); ++i)
    if (!is_finite(out.values[i]))
      return fail(status::non_finite_input, "saliency score " + std::to_string(i) + " is not finite (overflow)");
  return out;
}

}  // namespace saliency
SAGEPTQ_NAMESPACE_END
