#pragma once
/// @file rtn.hpp
/// Round-to-nearest: b bits, one fp16 scale per group of g weights along each row, symmetric or asymmetric
/// (format/rtn.hpp has the exact semantics). Rows are independent and run on the caller's executor; the output
/// does not depend on the thread count.

#include <algorithm>
#include <string>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../format/rtn.hpp"
#include "uniform_grid.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace quant {

struct rtn_config {
  int bits = 4;              ///< 1..8
  index_t group_size = 128;  ///< columns per scale; 0 means one scale per row (per channel)
  bool symmetric = false;
};

/// Quantize a host matrix (rows = output channels, cols = input channels).
/// @return the packed matrix, or invalid_argument / invalid_shape / non_finite_input / unsupported (a scale that
///         does not fit fp16).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<format::rtn_matrix> quantize_rtn(const Weights& weights, const rtn_config& cfg, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (cfg.bits < 1 || cfg.bits > 8)
    return fail(status::invalid_argument, "rtn bits must be in [1, 8], got " + std::to_string(cfg.bits));
  if (cfg.group_size < 0)
    return fail(status::invalid_argument, "rtn group_size must be >= 0, got " + std::to_string(cfg.group_size));
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;

  format::rtn_matrix out;
  out.rows = w.rows();
  out.cols = w.cols();
  out.layout = {cfg.bits, cfg.group_size == 0 ? w.cols() : std::min(cfg.group_size, w.cols()), cfg.symmetric};
  const index_t groups = out.layout.groups_per_row(out.cols);
  const index_t words = out.layout.words_per_row(out.cols);
  out.codes.assign(static_cast<std::size_t>(out.rows * words), 0u);
  out.scales.assign(static_cast<std::size_t>(out.rows * groups), fp16{});
  if (!cfg.symmetric) out.zeros.assign(static_cast<std::size_t>(out.rows * groups), 0);

  exec.parallel_for(out.rows, [&](index_t r) {
    std::uint32_t* row_codes = out.codes.data() + r * words;
    for (index_t g = 0; g < groups; ++g) {
      const index_t c0 = g * out.layout.group_size;
      const index_t c1 = std::min(c0 + out.layout.group_size, out.cols);
      float lo = to_float(w(r, c0)), hi = lo;
      for (index_t c = c0 + 1; c < c1; ++c) {
        lo = std::min(lo, to_float(w(r, c)));
        hi = std::max(hi, to_float(w(r, c)));
      }
      const uniform_grid grid = fit_minmax_grid(lo, hi, cfg.bits, cfg.symmetric);
      out.scales[static_cast<std::size_t>(r * groups + g)] = fp16(grid.scale);
      if (!cfg.symmetric) out.zeros[static_cast<std::size_t>(r * groups + g)] = static_cast<std::uint8_t>(grid.zero);
      for (index_t c = c0; c < c1; ++c) format::write_code(row_codes, c, cfg.bits, grid.code(to_float(w(r, c))));
    }
  });
  const auto scale_at = [&](std::size_t i) { return out.scales[i].to_float(); };
  if (auto ok = check_fp16_scales(out.scales.size(), groups, scale_at, "a group scale"); !ok) return ok;
  return out;
}

}  // namespace quant
SAGEPTQ_NAMESPACE_END
