#pragma once
/// @file q1_0.hpp
/// Sign + scale per 128 weights along each row (ggml Q1_0). For a fixed sign pattern the L2-optimal scale is
/// d = mean |w| over the group, which is what we store (rounded to fp16). w >= 0 gets sign bit 1 (+d).

#include <algorithm>
#include <cmath>
#include <string>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../format/q1_0.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace quant {

/// @return the packed matrix, or invalid_shape / non_finite_input / unsupported (a scale beyond fp16).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<format::q1_0_matrix> quantize_q1_0(const Weights& weights, const Exec& exec = {}) {
  using format::q1_0;
  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;

  format::q1_0_matrix out;
  out.rows = w.rows();
  out.cols = w.cols();
  const index_t groups = q1_0::groups_per_row(out.cols);
  const index_t words = q1_0::words_per_row(out.cols);
  out.signs.assign(static_cast<std::size_t>(out.rows * words), 0u);
  out.scales.assign(static_cast<std::size_t>(out.rows * groups), fp16{});

  exec.parallel_for(out.rows, [&](index_t r) {
    for (index_t g = 0; g < groups; ++g) {
      const index_t c0 = g * q1_0::group_size;
      const index_t c1 = std::min(c0 + q1_0::group_size, out.cols);
      double sum_abs = 0;  // double: the group mean must not depend on summation order subtleties of float
      for (index_t c = c0; c < c1; ++c) {
        const float v = to_float(w(r, c));
        sum_abs += std::fabs(static_cast<double>(v));
        if (v >= 0.0f) out.signs[static_cast<std::size_t>(r * words + c / 32)] |= 1u << (c % 32);
      }
      const double mean_abs = sum_abs / static_cast<double>(c1 - c0);
      out.scales[static_cast<std::size_t>(r * groups + g)] = fp16(static_cast<float>(mean_abs));
    }
  });
  const auto scale_at = [&](std::size_t i) { return out.scales[i].to_float(); };
  if (auto ok = check_fp16_scales(out.scales.size(), groups, scale_at, "a group scale"); !ok) return ok;
  return out;
}

}  // namespace quant
SAGEPTQ_NAMESPACE_END
