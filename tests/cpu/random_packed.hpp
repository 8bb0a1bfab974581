#pragma once
// Random packed matrices (sage default format, q1_0, rtn) and a float64 reference GEMV, shared by the CPU tests,
// the CUDA test and the benchmarks. Plain C++ (no doctest), seeded, deterministic.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "sageptq/core/numeric.hpp"
#include "sageptq/cpu/int8_activations.hpp"
#include "sageptq/core/random.hpp"
#include "sageptq/format/q1_0.hpp"
#include "sageptq/format/rtn.hpp"
#include "sageptq/format/sage.hpp"
#include "sageptq/quant/uniform_grid.hpp"

namespace sageptq_test {

namespace sp = sageptq;
using sp::index_t;

inline float random_scale(sp::random_generator& rng) {
  return sp::round_to_fp16(static_cast<float>(0.01 + rng.uniform()));
}

struct sage_case {
  index_t rows = 37, cols = 172, salient = 3;
  int groups = 3, salient_bits = 4;
  bool symmetric = false;
  std::uint64_t seed = 1;
  bool word_rows = false;  ///< 4-byte sign rows
};

/// The sage default format (1 plane, factorized scales, column groups) with every field random.
inline sp::format::sage_matrix random_sage(const sage_case& cs) {
  sp::random_generator rng(cs.seed);
  sp::format::sage_spec spec;
  spec.rows = cs.rows;
  spec.cols = cs.cols;
  for (auto c : sp::sample_without_replacement(rng, static_cast<std::uint64_t>(cs.cols),
                                               static_cast<std::uint64_t>(cs.salient)))
    spec.salient_columns.push_back(static_cast<index_t>(c));
  spec.salient_bits = cs.salient_bits;
  spec.salient_symmetric = cs.symmetric;
  spec.groups = cs.groups;
  spec.word_rows = cs.word_rows;
  for (index_t c = 0; c < cs.cols; ++c)
    spec.column_group.push_back(static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(cs.groups))));
  auto created = sp::format::sage_builder::create(spec);
  auto& b = created.value();
  b.set_signs(0, [&](index_t, index_t) { return rng.below(2) == 1; });
  for (index_t r = 0; r < cs.rows; ++r) b.set_row_scale(0, r, random_scale(rng));
  for (int g = 0; g < cs.groups; ++g) b.set_group_scale(0, g, random_scale(rng));
  if (cs.salient > 0) {
    const std::uint32_t max_code = (1u << cs.salient_bits) - 1u;
    for (index_t r = 0; r < cs.rows; ++r) {
      sp::quant::uniform_grid grid;
      grid.max_code = max_code;
      grid.scale = random_scale(rng);
      grid.zero = cs.symmetric ? 0.5f * static_cast<float>(max_code) : static_cast<float>(rng.below(max_code + 1));
      b.set_salient_grid(r, grid);
      for (index_t c : spec.salient_columns) b.set_salient_code(r, c, static_cast<std::uint32_t>(rng.below(max_code + 1)));
    }
  }
  return std::move(b).finish().value();
}

/// Random sign words (the padding bits past cols stay zero) and fp16 scales of either sign.
inline sp::format::q1_0_matrix random_q1_0(index_t rows, index_t cols, std::uint64_t seed) {
  sp::random_generator rng(seed);
  sp::format::q1_0_matrix m;
  m.rows = rows;
  m.cols = cols;
  const index_t words = sp::format::q1_0::words_per_row(cols), groups = sp::format::q1_0::groups_per_row(cols);
  m.signs.assign(static_cast<std::size_t>(rows * words), 0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      if (rng.below(2)) m.signs[static_cast<std::size_t>(r * words + c / 32)] |= 1u << (c % 32);
  for (index_t i = 0; i < rows * groups; ++i)
    m.scales.push_back(sp::fp16(random_scale(rng) * (rng.below(4) == 0 ? -1.0f : 1.0f)));
  return m;
}

inline sp::format::rtn_matrix random_rtn(index_t rows, index_t cols, sp::format::rtn_layout layout,
                                         std::uint64_t seed) {
  sp::random_generator rng(seed);
  sp::format::rtn_matrix m;
  m.rows = rows;
  m.cols = cols;
  m.layout = layout;
  const index_t words = layout.words_per_row(cols), groups = layout.groups_per_row(cols);
  m.codes.assign(static_cast<std::size_t>(rows * words), 0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      sp::format::write_code(m.codes.data() + r * words, c, layout.bits,
                             static_cast<std::uint32_t>(rng.below(layout.max_code() + 1)));
  for (index_t i = 0; i < rows * groups; ++i) {
    m.scales.push_back(sp::fp16(random_scale(rng)));
    if (!layout.symmetric) m.zeros.push_back(static_cast<std::uint8_t>(rng.below(layout.max_code() + 1)));
  }
  return m;
}

/// batch x cols activations, uniform in [-1, 1].
inline std::vector<float> random_x(index_t batch, index_t cols, std::uint64_t seed) {
  sp::random_generator rng(seed);
  std::vector<float> x(static_cast<std::size_t>(batch * cols));
  for (auto& v : x) v = static_cast<float>(2.0 * rng.uniform() - 1.0);
  return x;
}

/// y = W x in float64 from the decoded matrix, with bound[b * rows + r] = sum_j |w_rj x_bj| for tolerances.
struct reference {
  std::vector<double> y, bound;
};

template <class View>
reference dense_reference(const View& packed, index_t rows, index_t cols, const std::vector<float>& x, index_t batch) {
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  sp::format::decode(packed, sp::make_matrix_view(w.data(), rows, cols));
  reference ref{std::vector<double>(static_cast<std::size_t>(batch * rows)),
                std::vector<double>(static_cast<std::size_t>(batch * rows))};
  for (index_t b = 0; b < batch; ++b)
    for (index_t r = 0; r < rows; ++r) {
      double y = 0, bound = 0;
      for (index_t c = 0; c < cols; ++c) {
        const double term = static_cast<double>(w[static_cast<std::size_t>(r * cols + c)]) *
                            static_cast<double>(x[static_cast<std::size_t>(b * cols + c)]);
        y += term;
        bound += std::fabs(term);
      }
      ref.y[static_cast<std::size_t>(b * rows + r)] = y;
      ref.bound[static_cast<std::size_t>(b * rows + r)] = bound;
    }
  return ref;
}

/// fp32 accumulation of K terms, each term also rounded a few times (scale folding): the worst-case bound
/// (K + 8) u sum|w x| with u = 2^-24. The tests check that one flipped sign bit or scale exceeds it.
inline double fp32_tolerance(index_t k, double bound) { return static_cast<double>(k + 8) * 0x1p-24 * bound; }

/// Largest |y - ref| / tol over all outputs (> 1 fails); NaN (an unwritten, poisoned output) counts as failing.
inline double worst_ratio(const float* y, const reference& ref, index_t k, double (*tolerance)(index_t, double)) {
  double worst = 0;
  for (std::size_t i = 0; i < ref.y.size(); ++i) {
    const double err = std::fabs(static_cast<double>(y[i]) - ref.y[i]);
    if (!(err == err)) return INFINITY;
    worst = std::max(worst, err / std::max(tolerance(k, ref.bound[i]), 1e-30));
  }
  return worst;
}

// --- the int8 activations of the VNNI path (cpu/int8_activations.hpp) ----------------------------------------------

/// What the VNNI path quantizes for sage: x' = beta * x in stored order, zero-padded to whole sign rows
/// ([batch][32 * sign_row_words]), exactly as cpu::gemv builds it.
inline std::vector<float> sage_folded_x(const sp::format::sage_view<sp::host_space>& w, const std::vector<float>& x,
                                        index_t batch) {
  const index_t padded = 32 * w.shape.sign_row_words(), cols = w.shape.cols;
  std::vector<float> folded(static_cast<std::size_t>(batch * padded), 0.0f);
  for (index_t b = 0; b < batch; ++b)
    for (index_t j = 0; j < w.shape.binarized_cols(); ++j)
      folded[static_cast<std::size_t>(b * padded + j)] =
          w.group_scales[w.group(0, j)].to_float() * x[static_cast<std::size_t>(b * cols + w.source_column(j))];
  return folded;
}

/// sage's int8 activations on the VNNI path: x' in blocks of int8_wide_block columns (one scale per row).
inline sp::cpu::int8_activations sage_int8(const sp::format::sage_view<sp::host_space>& w, const std::vector<float>& x,
                                           index_t batch) {
  const index_t padded = 32 * w.shape.sign_row_words();
  return sp::cpu::quantize_int8(sage_folded_x(w, x, batch).data(), batch, padded, padded, sp::cpu::quantize_block,
                                sp::cpu::int8_wide_block);
}

/// The activations the VNNI path effectively multiplies, in source order: x^ = d q / beta for the binarized
/// columns, x for the salient ones (and x unchanged for 4-byte sign rows, which run the fp32 path). The VNNI path
/// must match dense_reference(w, x^) within fp32_tolerance, like the fp32 paths match dense_reference(w, x).
inline std::vector<float> int8_effective_x(const sp::format::sage_view<sp::host_space>& w, const std::vector<float>& x,
                                           index_t batch) {
  if (w.shape.sign_row_words() % 4 != 0) return x;
  const index_t cols = w.shape.cols;
  const auto q = sage_int8(w, x, batch);
  std::vector<float> effective = x;
  for (index_t b = 0; b < batch; ++b)
    for (index_t j = 0; j < w.shape.binarized_cols(); ++j)
      effective[static_cast<std::size_t>(b * cols + w.source_column(j))] = static_cast<float>(
          static_cast<double>(q.scale(b, j / q.block)) * q.row(b)[j] /
          static_cast<double>(w.group_scales[w.group(0, j)].to_float()));
  return effective;
}

inline std::vector<float> int8_effective_x(const sp::format::q1_0_view<sp::host_space>& w, const std::vector<float>& x,
                                           index_t batch) {
  const index_t padded = 32 * w.words_per_row();
  std::vector<float> padded_x(static_cast<std::size_t>(batch * padded), 0.0f), effective = x;
  for (index_t b = 0; b < batch; ++b)
    std::copy_n(x.begin() + b * w.cols, w.cols, padded_x.begin() + b * padded);
  const auto q = sp::cpu::quantize_int8(padded_x.data(), batch, padded, padded);
  for (index_t b = 0; b < batch; ++b)
    for (index_t c = 0; c < w.cols; ++c)
      effective[static_cast<std::size_t>(b * w.cols + c)] = q.scale(b, c / sp::cpu::int8_block) * q.row(b)[c];
  return effective;
}

/// The documented a-priori bound on what int8 activations add to the error against dense_reference(w, x):
/// sum_j |w_rj| |x_j - x^_j| <= sum_j |w_rj| d_block(j) (1/2 + 2^-12) / |beta_g(j)|, per [batch][rows].
inline std::vector<double> int8_bound(const sp::format::sage_view<sp::host_space>& w, const std::vector<float>& x,
                                      index_t batch) {
  std::vector<double> bound(static_cast<std::size_t>(batch * w.shape.rows), 0.0);
  if (w.shape.sign_row_words() % 4 != 0) return bound;
  const auto q = sage_int8(w, x, batch);
  for (index_t b = 0; b < batch; ++b) {
    double d_sum = 0;  // |w_rj| / |beta| = |alpha_r|: the row scale factors out
    for (index_t j = 0; j < w.shape.binarized_cols(); ++j) d_sum += q.scale(b, j / q.block);
    for (index_t r = 0; r < w.shape.rows; ++r)
      bound[static_cast<std::size_t>(b * w.shape.rows + r)] =
          std::fabs(w.row_scales[r].to_float()) * d_sum * sp::cpu::int8_rounding;
  }
  return bound;
}

inline std::vector<double> int8_bound(const sp::format::q1_0_view<sp::host_space>& w, const std::vector<float>& x,
                                      index_t batch) {
  const index_t padded = 32 * w.words_per_row(), groups = w.groups_per_row();
  std::vector<float> padded_x(static_cast<std::size_t>(batch * padded), 0.0f);
  for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + b * w.cols, w.cols, padded_x.begin() + b * padded);
  const auto q = sp::cpu::quantize_int8(padded_x.data(), batch, padded, padded);
  std::vector<double> bound(static_cast<std::size_t>(batch * w.rows), 0.0);
  for (index_t b = 0; b < batch; ++b)
    for (index_t r = 0; r < w.rows; ++r)
      for (index_t g = 0; g < groups; ++g) {
        const index_t n = std::min<index_t>(sp::format::q1_0::group_size, w.cols - g * sp::format::q1_0::group_size);
        bound[static_cast<std::size_t>(b * w.rows + r)] += std::fabs(w.scales[r * groups + g].to_float()) *
                                                           static_cast<double>(n) * q.scale(b, g) *
                                                           sp::cpu::int8_rounding;
      }
  return bound;
}

}  // namespace sageptq_test
