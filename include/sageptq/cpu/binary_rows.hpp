#pragma once
/// @file binary_rows.hpp
/// The inner product every binary CPU kernel shares: rows of +-1 weights (sign bits) with one scale per run of
/// `group_words` words, against activations already gathered into the stored column order,
///     out[b][r] = sum_g scale(r, g) * sum_{j in g} s_rj * x'[b][j],   s = +1 for bit 1, -1 for bit 0.
/// sage (one group per row, scale = alpha_r, x' = beta-folded and permuted x) and q1_0 (a group per 128 columns,
/// scale = d) are both this. The SIMD paths use sum_j s_j x'_j = 2 * sum_{bit=1} x'_j - sum_j x'_j: a masked add per
/// weight instead of a sign flip plus an add, with the group sums of x' computed once per GEMV (group_sums()).
/// Threading: none here; callers split rows across their executor.

#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/numeric.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

struct binary_rows {
  const std::uint32_t* signs = nullptr;  ///< row r starts at signs + r * row_words
  index_t row_words = 0;                 ///< a multiple of 4 (16-byte rows)
  index_t group_words = 0;               ///< divides row_words
  const fp16* scales = nullptr;          ///< scale(r, g) = scales[r * groups() + g]
  const float* x = nullptr;              ///< batch rows of 32 * row_words floats, x_stride apart, zero past the end
  index_t x_stride = 0;
  const float* group_sums = nullptr;     ///< [batch][groups()][lanes] from group_sums() (SIMD paths only)
  index_t batch = 0;

  [[nodiscard]] index_t groups() const noexcept { return row_words / group_words; }
  [[nodiscard]] float scale(index_t r, index_t g) const noexcept { return scales[r * groups() + g].to_float(); }
  [[nodiscard]] bool positive(index_t r, index_t j) const noexcept {
    return (signs[r * row_words + j / 32] >> (j % 32)) & 1u;
  }
};

/// Lane-wise sums of x' over each group, in the lane layout of a `lanes`-wide SIMD path: [batch][group][lane].
inline std::vector<float> group_sums(const binary_rows& a, int lanes) {
  const index_t groups = a.groups(), group_cols = 32 * a.group_words;
  std::vector<float> sums(static_cast<std::size_t>(a.batch * groups * lanes), 0.0f);
  for (index_t b = 0; b < a.batch; ++b)
    for (index_t g = 0; g < groups; ++g) {
      float* lane = sums.data() + (b * groups + g) * lanes;
      const float* x = a.x + b * a.x_stride + g * group_cols;
      for (index_t j = 0; j < group_cols; ++j) lane[j % lanes] += x[j];
    }
  return sums;
}

/// The scalar reference: rows [r0, r1), out[b * out_stride + r], sign flips and float sums in column order.
inline void rows_scalar(const binary_rows& a, index_t r0, index_t r1, float* out, index_t out_stride) {
  const index_t group_cols = 32 * a.group_words;
  for (index_t r = r0; r < r1; ++r)
    for (index_t b = 0; b < a.batch; ++b) {
      const float* x = a.x + b * a.x_stride;
      float total = 0.0f;
      for (index_t g = 0; g < a.groups(); ++g) {
        float sum = 0.0f;
        for (index_t j = g * group_cols; j < (g + 1) * group_cols; ++j) sum += a.positive(r, j) ? x[j] : -x[j];
        total += a.scale(r, g) * sum;
      }
      out[b * out_stride + r] = total;
    }
}

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
