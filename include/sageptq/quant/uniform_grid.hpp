#pragma once
/// @file uniform_grid.hpp
/// The uniform b-bit grid shared by rtn, gptq and septq: fitting a grid to a range, and rounding to it. The scale
/// is rounded to fp16 *before* codes are computed, so the stored scale reproduces the quantizer's output exactly.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../config.hpp"
#include "../core/numeric.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace quant {

struct uniform_grid {
  float scale = 0;            ///< fp16-representable
  float zero = 0;             ///< integer for asymmetric grids, (2^b - 1) / 2 for symmetric ones
  std::uint32_t max_code = 1;

  /// Nearest code, ties to even (as torch.round), clamped to the grid.
  [[nodiscard]] std::uint32_t code(float w) const noexcept {
    if (scale == 0.0f) return static_cast<std::uint32_t>(std::clamp(zero, 0.0f, static_cast<float>(max_code)));
    const float q = std::nearbyint(w / scale + zero);  // default rounding mode: half to even, as torch.round
    return static_cast<std::uint32_t>(std::clamp(q, 0.0f, static_cast<float>(max_code)));
  }
  [[nodiscard]] float value(std::uint32_t q) const noexcept { return scale * (static_cast<float>(q) - zero); }
  [[nodiscard]] float quantize(float w) const noexcept { return value(code(w)); }
};

/// GPTQ's min-max grid over [lo, hi] (the range is widened to include 0, as GPTQ does).
///  asymmetric: scale = (hi - lo) / maxq, zero = round(-lo / scale)
///  symmetric : scale = max(|lo|, |hi|) / (maxq / 2), zero = maxq / 2 (levels at half-integers: no zero level)
inline uniform_grid fit_minmax_grid(float lo, float hi, int bits, bool symmetric) noexcept {
  uniform_grid g;
  g.max_code = (1u << bits) - 1u;
  const float maxq = static_cast<float>(g.max_code);
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  if (symmetric) {
    g.scale = round_to_fp16(std::max(-lo, hi) / (0.5f * maxq));
    g.zero = 0.5f * maxq;
  } else {
    g.scale = round_to_fp16((hi - lo) / maxq);
    g.zero = g.scale > 0.0f ? std::clamp(std::nearbyint(-lo / g.scale), 0.0f, maxq) : 0.0f;
  }
  return g;
}

}  // namespace quant
SAGEPTQ_NAMESPACE_END
