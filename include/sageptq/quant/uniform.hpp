#pragma once
/// @file uniform.hpp
/// Uniform b-bit quantizer fitted per output channel (row) or per group of columns, on quant::uniform_grid:
/// GPTQ's min-max grid, optionally with GPTQ/SEPTQ's MSE range search (quant.py `find_params(mse=True)`): for
/// i < int(max_shrink · grid), p = 1 − i/grid, fit the grid to [p·min, p·max], err = Σ |quantize(x) − x|^norm, keep
/// the first grid of least error. With per-value importances (fit_uniform_grid's `importance`, e.g. H_jj of each
/// column), err = Σ importance_j · |quantize(x_j) − x_j|^norm: one grid spans channels whose errors cost very
/// differently, and the unweighted search clips the costly ones (sage's salient grids: pipeline/sage.hpp).
///
/// Differences from GPTQ's quant.py, both deliberate:
///  - scales are rounded to fp16 before zero points and codes are computed (uniform_grid.hpp), so a stored scale
///    reproduces the output; the effect on the error is negligible (tests/quant/uniform_test.cpp measures it);
///  - the symmetric grid is format/rtn.hpp's (levels at half-integers, no zero level), not GPTQ's zero (maxq+1)/2.
/// An all-zero row gets scale 0 (GPTQ widens it to [-1, 1]); both quantize it to zeros.
///
/// Input: host matrix (rows = output channels), any element type `to_float` accepts. Output: `uniform_matrix`
/// (grids + one code per byte), unpacked so that packers and the compensation loop can share it. Rows are independent
/// and run on the caller's executor: the result does not depend on the thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "uniform_grid.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace quant {

/// GPTQ's MSE range search parameters (quant.py defaults).
struct range_search {
  int grid = 100;
  double max_shrink = 0.8;
  double norm = 2.4;
};

struct uniform_config {
  int bits = 4;            ///< 1..8
  index_t group_size = 0;  ///< columns per grid; 0 (or >= cols) means one grid per row
  bool symmetric = false;
  bool mse = false;  ///< search the range (GPTQ mse=True, SEPTQ's importance quantizer)
  range_search search{};

  [[nodiscard]] index_t group_columns(index_t cols) const noexcept {
    return group_size == 0 ? cols : std::min(group_size, cols);
  }
};

/// invalid_argument for out-of-range parameters.
inline outcome check_uniform_config(const uniform_config& cfg) {
  if (cfg.bits < 1 || cfg.bits > 8)
    return fail(status::invalid_argument, "uniform bits must be in [1, 8], got " + std::to_string(cfg.bits));
  if (cfg.group_size < 0)
    return fail(status::invalid_argument, "uniform group_size must be >= 0, got " + std::to_string(cfg.group_size));
  // norm <= 16 keeps exp2's argument in range (detail::pow_nonneg); GPTQ uses 2.4.
  if (cfg.mse && (cfg.search.grid < 1 || !(cfg.search.max_shrink > 0 && cfg.search.max_shrink <= 1) ||
                  !(cfg.search.norm > 0 && cfg.search.norm <= 16)))
    return fail(status::invalid_argument, "range search needs grid >= 1, max_shrink in (0, 1] and norm in (0, 16]");
  return {};
}

namespace detail {

/// e^p for e >= 0 and 0 < p <= 16, as exp2(p · log2 e) with polynomials only, so that loops over it vectorize (a call to
/// std::pow keeps the range search scalar: it was most of GPTQ's time). Relative error below 1e-5 over the range the
/// search meets; 0 for e below 2^-100, and results below 2^-126 are 2^-126 (both far below any error that can decide
/// between two grids).
inline float pow_nonneg(float e, float p) noexcept {
  // Every select is on integers: GCC does not if-convert a conditional floating-point operation (it might trap),
  // and threads float clamps into branches, either of which keeps the loop scalar.
  const std::uint32_t bits = sageptq::detail::float_bits(e);
  const std::uint32_t mantissa = bits & 0x7fffffu;
  // Fold the mantissa to [1/sqrt 2, sqrt 2), so that t below stays small.
  const std::uint32_t upper = mantissa > 0x3504f3u ? 1u : 0u;  // mantissa bits of sqrt 2
  const int exponent = static_cast<int>(bits >> 23) - 127 + static_cast<int>(upper);
  const float m = sageptq::detail::bits_float(mantissa | (0x3f800000u - (upper << 23)));
  // log2 m = (2 / ln 2) · atanh t, t = (m - 1) / (m + 1), |t| <= 0.172: five odd terms reach float precision.
  const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  const float log2_m =
      t * (2.88539008f + t2 * (0.961796694f + t2 * (0.577078016f + t2 * (0.412198583f + t2 * 0.320598898f))));
  const float y = p * (static_cast<float>(exponent) + log2_m);
  const float k = round_half_even(y);
  const float f = y - k;  // [-0.5, 0.5]: the Taylor series of 2^f to degree 7 is within 1e-8
  const float two_f =
      1.0f + f * (0.693147181f + f * (0.240226507f + f * (0.0555041087f + f * (0.00961812911f +
                                                                              f * (0.00133335581f +
                                                                                   f * (1.54035304e-4f +
                                                                                        f * 1.52527338e-5f))))));
  const int k_clamped = std::min(std::max(static_cast<int>(k), -126), 127);  // 2^k stays a normal float
  const float power = two_f * sageptq::detail::bits_float(static_cast<std::uint32_t>(k_clamped + 127) << 23);
  const std::uint32_t keep = bits > 0x0d800000u ? 0xffffffffu : 0u;  // e > 2^-100; else 0
  return sageptq::detail::bits_float(sageptq::detail::float_bits(power) & keep);
}

/// Σ |g.quantize(x_j) − x_j|^norm, each term times importance_j when `importance` is not empty (same length as x);
/// once a partial sum reaches `bound` it returns that partial sum (every term is >= 0, so the grid already lost).
/// The codes are g.code's bit for bit; the loop vectorizes.
inline double range_error(std::span<const float> x, const uniform_grid& g, float norm, double bound,
                          std::span<const float> importance = {}) noexcept {
  constexpr std::size_t chunk = 256;
  float term[chunk];
  const float scale = g.scale, zero = g.zero;
  const auto max_code = static_cast<int>(g.max_code);
  double err = 0;
  for (std::size_t j0 = 0; j0 < x.size() && err < bound; j0 += chunk) {
    const std::size_t n = std::min(chunk, x.size() - j0);
    const float* v = x.data() + j0;
    if (scale == 0.0f) {  // g.quantize is 0 everywhere
      for (std::size_t i = 0; i < n; ++i) term[i] = pow_nonneg(std::fabs(v[i]), norm);
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        // The clamp is on integers (GCC turns float clamps into branches here). |v / scale| <= ~2 · max / 0.2 by
        // construction of the grid, far inside the range where round_half_even and the conversion are exact.
        const int code = std::min(std::max(static_cast<int>(round_half_even(v[i] / scale + zero)), 0), max_code);
        const auto c = static_cast<float>(code);
        term[i] = pow_nonneg(std::fabs(scale * (c - zero) - v[i]), norm);
      }
    }
    if (!importance.empty())
      for (std::size_t i = 0; i < n; ++i) term[i] *= importance[j0 + i];
    float lanes[8] = {};  // fixed lanes: the sum vectorizes without reassociation
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (std::size_t l = 0; l < 8; ++l) lanes[l] += term[i + l];
    for (; i < n; ++i) lanes[0] += term[i];
    for (float s : lanes) err += s;
  }
  return err;
}

}  // namespace detail

/// Fit one grid to the values of `x` (a row, or a group of it). `x` must be non-empty and finite; `importance`
/// (empty, or one finite weight >= 0 per value) weights the range search's error (cfg.mse only).
template <class T, class S>
uniform_grid fit_uniform_grid(const strided_view<T, 1, S>& x, const uniform_config& cfg,
                              std::span<const float> importance = {}) {
  SAGEPTQ_ASSERT(x.size() > 0);
  SAGEPTQ_ASSERT(importance.empty() || std::ssize(importance) == x.size());
  float lo = to_float(x(0)), hi = lo;
  for (index_t i = 1; i < x.size(); ++i) {
    lo = std::min(lo, to_float(x(i)));
    hi = std::max(hi, to_float(x(i)));
  }
  uniform_grid best = fit_minmax_grid(lo, hi, cfg.bits, cfg.symmetric);
  if (!cfg.mse) return best;
  std::vector<float> values(static_cast<std::size_t>(x.size()));  // contiguous floats for the vectorized error
  for (index_t i = 0; i < x.size(); ++i) values[static_cast<std::size_t>(i)] = to_float(x(i));
  const int steps = static_cast<int>(cfg.search.max_shrink * cfg.search.grid);
  const auto norm = static_cast<float>(cfg.search.norm);
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i < steps; ++i) {
    const auto p = static_cast<float>(1.0 - static_cast<double>(i) / cfg.search.grid);
    const uniform_grid g = fit_minmax_grid(p * lo, p * hi, cfg.bits, cfg.symmetric);
    const double err = detail::range_error(values, g, norm, best_err, importance);
    if (err < best_err) {  // strict: the first (widest) of equal grids wins, as in quant.py
      best_err = err;
      best = g;
    }
  }
  return best;
}

/// Uniform codes with their grids, one code per byte.
struct uniform_matrix {
  index_t rows = 0, cols = 0;
  int bits = 0;
  bool symmetric = false;
  index_t groups_per_row = 0;
  std::vector<uniform_grid> grids;    ///< rows x groups_per_row
  std::vector<index_t> column_group;  ///< group of each column: c / group size, or GPTQ's g_idx under act order
  std::vector<std::uint8_t> codes;    ///< rows x cols

  [[nodiscard]] const uniform_grid& grid(index_t r, index_t c) const noexcept {
    return grids[static_cast<std::size_t>(r * groups_per_row + column_group[static_cast<std::size_t>(c)])];
  }
  [[nodiscard]] float value(index_t r, index_t c) const noexcept {
    return grid(r, c).value(codes[static_cast<std::size_t>(r * cols + c)]);
  }
  /// The dequantized matrix, rows x cols row-major.
  [[nodiscard]] std::vector<float> dequantize() const {
    std::vector<float> out(static_cast<std::size_t>(rows * cols));
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) out[static_cast<std::size_t>(r * cols + c)] = value(r, c);
    return out;
  }
};

/// An empty uniform_matrix shaped for `rows x cols` with contiguous groups (grids and codes zeroed).
inline uniform_matrix make_uniform_matrix(index_t rows, index_t cols, const uniform_config& cfg) {
  uniform_matrix m;
  m.rows = rows;
  m.cols = cols;
  m.bits = cfg.bits;
  m.symmetric = cfg.symmetric;
  const index_t g = cfg.group_columns(cols);
  m.groups_per_row = (cols + g - 1) / g;
  m.grids.assign(static_cast<std::size_t>(rows * m.groups_per_row), uniform_grid{});
  m.column_group.resize(static_cast<std::size_t>(cols));
  for (index_t c = 0; c < cols; ++c) m.column_group[static_cast<std::size_t>(c)] = c / g;
  m.codes.assign(static_cast<std::size_t>(rows * cols), 0);
  return m;
}

/// unsupported when a fitted scale does not fit fp16 (|w| beyond ~65504 · (2^b − 1)).
inline outcome check_grid_scales(const uniform_matrix& m) {
  return check_fp16_scales(m.grids.size(), m.groups_per_row, [&](std::size_t i) { return m.grids[i].scale; },
                           "a uniform scale");
}

/// Round-to-nearest with grids fitted per row or group (RTN; with cfg.mse, SEPTQ's reference quantization Q0).
/// @return grids and codes, or invalid_argument / invalid_shape / non_finite_input / unsupported.
template <host_matrix_like Weights, executor Exec = inline_executor>
result<uniform_matrix> quantize_uniform(const Weights& weights, const uniform_config& cfg, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = check_uniform_config(cfg); !ok) return ok;
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  uniform_matrix m = make_uniform_matrix(w.rows(), w.cols(), cfg);
  const index_t g = cfg.group_columns(w.cols());
  exec.parallel_for(m.rows, [&](index_t r) {
    for (index_t k = 0; k < m.groups_per_row; ++k) {
      const index_t c0 = k * g, n = std::min(g, m.cols - c0);
      const uniform_grid grid = fit_uniform_grid(w.block(r, c0, 1, n).row(0), cfg);
      m.grids[static_cast<std::size_t>(r * m.groups_per_row + k)] = grid;
      for (index_t c = c0; c < c0 + n; ++c)
        m.codes[static_cast<std::size_t>(r * m.cols + c)] = static_cast<std::uint8_t>(grid.code(to_float(w(r, c))));
    }
  });
  if (auto ok = check_grid_scales(m); !ok) return ok;
  return m;
}

}  // namespace quant
SAGEPTQ_NAMESPACE_END
