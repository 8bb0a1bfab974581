#pragma once
/// @file gptq.hpp
/// The `gptq` method: GPTQ's compensation loop (compensate/gptq.hpp) with a b-bit uniform grid per row or per group
/// of columns, packed as format::rtn_matrix, with its report (bits, calibrated errors, times).
///
/// Inputs: weights (rows = output channels) and the Hessian factor of the layer's inputs (calib::prepare). The
/// column order is the factor's: prepare it with prepare_options::act_order for GPTQ's --act-order, and say so in
/// gptq_config::act_order (checked, so that a config cannot silently run in another order than it names).
/// Act order with groups is status::unsupported: GPTQ's groups then follow the working order (g_idx), which the
/// contiguous groups of format::rtn_matrix cannot express; per-channel act order is supported.
///
/// `pack_uniform` converts quant::uniform_matrix (grids + codes, what gptq_uniform records) to format::rtn_matrix
/// exactly: decode(pack_uniform(m)) == m.dequantize() bit for bit.
///
/// Threading: the loop's row chunks, the grid fits and the error's row blocks run on the caller's executor; results
/// are bit-identical for every thread count. Packing is single-threaded.

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "../calib/hessian.hpp"
#include "../compensate/gptq.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../format/rtn.hpp"
#include "../quant/uniform.hpp"
#include "quantized.hpp"
#include "rtn.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

struct gptq_config {
  int bits = 4;                   ///< 1..8
  index_t group_size = 0;         ///< columns per grid, refitted at each group start (GPTQ groupsize); 0 = per row
  bool act_order = false;         ///< the factor must be prepared in act order exactly when this is set
  bool mse_range_search = true;   ///< GPTQ's mse=True range search (SEPTQ's quantizer, used by the reference runs)
  bool symmetric = false;         ///< format/rtn.hpp's symmetric grid instead of an integer zero point per grid
  index_t block_size = 128;       ///< columns per lazy-update block

  [[nodiscard]] quant::uniform_config grid() const noexcept {
    return {bits, group_size, symmetric, mse_range_search, {}};
  }
};

/// Pack grids and codes into format::rtn_matrix. Checks what the format can express: contiguous groups of equal
/// size (else unsupported: GPTQ's act-order g_idx), fp16 scales, integer zero points in [0, 2^b − 1] (asymmetric)
/// or the format's zero (2^b − 1)/2 (symmetric), codes within the grid (else invalid_argument).
inline result<format::rtn_matrix> pack_uniform(const quant::uniform_matrix& m) {
  if (m.rows <= 0 || m.cols <= 0 || m.bits < 1 || m.bits > 8 || m.groups_per_row <= 0 ||
      std::ssize(m.grids) != m.rows * m.groups_per_row || std::ssize(m.column_group) != m.cols ||
      std::ssize(m.codes) != m.rows * m.cols)
    return fail(status::invalid_shape, "uniform matrix sizes are inconsistent (" + std::to_string(m.rows) + " x " +
                                           std::to_string(m.cols) + ", " + std::to_string(m.bits) + " bits)");
  const index_t group = std::count(m.column_group.begin(), m.column_group.end(), index_t{0});
  if (group == 0) return fail(status::invalid_shape, "uniform matrix has no column in group 0");
  for (index_t c = 0; c < m.cols; ++c)
    if (m.column_group[static_cast<std::size_t>(c)] != c / group)
      return fail(status::unsupported, "column " + std::to_string(c) +
                                           " is not in a contiguous group (act-order g_idx): rtn format needs groups "
                                           "of consecutive columns");
  format::rtn_matrix out;
  out.rows = m.rows;
  out.cols = m.cols;
  out.layout = {m.bits, group, m.symmetric};
  if (out.layout.groups_per_row(m.cols) != m.groups_per_row)
    return fail(status::invalid_shape, std::to_string(m.groups_per_row) + " groups per row do not match groups of " +
                                           std::to_string(group) + " columns");
  const std::uint32_t max_code = out.layout.max_code();
  const float symmetric_zero = 0.5f * static_cast<float>(max_code);  // format/rtn.hpp's convention
  out.scales.reserve(m.grids.size());
  if (!m.symmetric) out.zeros.reserve(m.grids.size());
  for (std::size_t i = 0; i < m.grids.size(); ++i) {
    const quant::uniform_grid& g = m.grids[i];
    const auto where = [&] {
      return "grid " + std::to_string(i % static_cast<std::size_t>(m.groups_per_row)) + " of row " +
             std::to_string(i / static_cast<std::size_t>(m.groups_per_row));
    };
    if (!is_finite(g.scale) || round_to_fp16(g.scale) != g.scale)
      return fail(status::invalid_argument, where() + ": scale " + std::to_string(g.scale) + " is not an fp16 value");
    if (g.max_code != max_code)
      return fail(status::invalid_argument, where() + " has max code " + std::to_string(g.max_code) + ", expected " +
                                                std::to_string(max_code));
    const bool zero_ok = m.symmetric ? g.zero == symmetric_zero
                                     : g.zero >= 0 && g.zero <= static_cast<float>(max_code) &&
                                           g.zero == std::nearbyint(g.zero);
    if (!zero_ok)
      return fail(status::invalid_argument, where() + ": zero point " + std::to_string(g.zero) +
                                                (m.symmetric ? " is not the symmetric zero (2^b - 1) / 2"
                                                             : " is not an integer in [0, 2^b - 1]"));
    out.scales.push_back(fp16(g.scale));
    if (!m.symmetric) out.zeros.push_back(static_cast<std::uint8_t>(g.zero));
  }
  const index_t words = out.layout.words_per_row(m.cols);
  out.codes.assign(static_cast<std::size_t>(m.rows * words), 0u);
  for (index_t r = 0; r < m.rows; ++r)
    for (index_t c = 0; c < m.cols; ++c) {
      const std::uint32_t code = m.codes[static_cast<std::size_t>(r * m.cols + c)];
      if (code > max_code)
        return fail(status::invalid_argument, "code " + std::to_string(code) + " at (" + std::to_string(r) + ", " +
                                                  std::to_string(c) + ") exceeds " + std::to_string(max_code));
      format::write_code(out.codes.data() + r * words, c, m.bits, code);
    }
  return out;
}

namespace detail {
/// invalid_argument unless the factor's column order is the one `act_order` names: the identity, or descending
/// diagonal as calib::prepare sorts it (damping adds a constant, so the damped diagonal keeps that order).
inline outcome check_column_order(const calib::hessian_factor& factor, bool act_order) {
  const std::vector<index_t>& perm = factor.perm;
  bool matches = true;
  for (std::size_t k = 0; k < perm.size(); ++k)
    matches = matches && (act_order ? k == 0 || factor.h(perm[k - 1], perm[k - 1]) >= factor.h(perm[k], perm[k])
                                    : perm[k] == static_cast<index_t>(k));
  if (!matches)
    return fail(status::invalid_argument, act_order ? "act_order is set but the Hessian factor was not prepared in "
                                                      "act order (calib::prepare_options::act_order)"
                                                    : "the Hessian factor was prepared in act order but act_order is "
                                                      "not set");
  return {};
}
}  // namespace detail

/// `gptq`: b bits per row or group, GPTQ compensation, packed. See the file comment.
/// @return the packed matrix, decode(packed) and the report; or invalid_argument (bits, group, block, act order
///         mismatch), invalid_shape, non_finite_input, unsupported (act order with groups, a scale beyond fp16).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<quantized<format::rtn_matrix>> quantize_gptq(const Weights& weights, const calib::hessian_factor& factor,
                                                    const gptq_config& cfg, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  const quant::uniform_config grid = cfg.grid();
  if (auto ok = quant::check_uniform_config(grid); !ok) return ok;
  if (auto ok = detail::check_factor(factor, w.cols()); !ok) return ok;
  if (std::ssize(factor.perm) != factor.cols())
    return fail(status::invalid_shape, "the Hessian factor's permutation has the wrong length");
  if (auto ok = detail::check_column_order(factor, cfg.act_order); !ok) return ok;
  if (cfg.act_order && grid.group_columns(w.cols()) < w.cols())
    return fail(status::unsupported, "act order with groups needs GPTQ's g_idx, which format::rtn_matrix does not "
                                     "store: use per-channel grids (group_size 0) or act_order = false");

  const detail::stopwatch quantize_clock;
  compensate::gptq_options opt;
  opt.block_size = cfg.block_size;
  auto compensated = compensate::gptq_uniform(w, factor, grid, opt, exec);
  if (!compensated.has_value()) return compensated.as_outcome();
  const double quantize_seconds = quantize_clock.seconds();

  const detail::stopwatch pack_clock;
  auto packed = pack_uniform(compensated->codes);
  if (!packed.has_value()) return packed.as_outcome();
  auto out = detail::make_quantized("gptq", w.rows(), w.cols(), std::move(packed).value());
  out.report.times.quantize = quantize_seconds;
  out.report.times.pack = pack_clock.seconds();
  detail::fill_hessian_errors(out.report, w, out.dequantized, factor.h, exec);
  return out;
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
