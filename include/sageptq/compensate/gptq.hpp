#pragma once
/// @file gptq.hpp
/// GPTQ/OBC error compensation: quantize the columns of W one after the other and spread each column's error over
/// the columns not yet quantized, weighted by U (the upper Cholesky factor of H⁻¹, calib/hessian.hpp), with GPTQ's
/// lazy batch updates: blocks of 128 columns; inside a block
///     err = (w_i − q_i) / U_ii,   W[:, i+1:block_end] −= err · U[i, i+1:block_end]
/// and after the block W[:, block_end:] −= Err · U[block, block_end:]. Columns run in the factor's working order
/// (act order when prepared so); dead columns are zeroed first.
///
/// What a column becomes is a policy (concept `column_quantizer`), so GPTQ, SEPTQ, binarization of groups and BiLLM
/// share this loop:
///
///     struct my_quantizer {
///       // Once per column block, before its columns, on the calling thread (parallelize with `exec` if useful).
///       // ctx.weights holds the lazily updated weights: every column >= ctx.begin has received the updates of all
///       // earlier blocks (exactly what GPTQ's W holds there). Fit grids of groups starting in the block here (GPTQ
///       // with groupsize), fit per-row grids at ctx.begin == 0 (per channel), or quantize the whole block at once
///       // (BiLLM). A failed outcome stops the loop and is returned.
///       template <sageptq::executor Exec> sageptq::outcome begin_block(const block_context& ctx, const Exec& exec);
///       // Quantize working column `col` for rows [row_begin, row_begin + w.size()): w holds the updated weights,
///       // write q (same size). Called concurrently for disjoint row ranges of a column: touch only those rows.
///       void quantize_column(index_t col, index_t row_begin, std::span<const float> w, std::span<float> q);
///       // Optional, default true. false: no updates inside a block (BiLLM quantizes the block up front and
///       // propagates errors only after it); err_i is then computed from the block-start weights.
///       static constexpr bool propagate_within_block = true;
///     };
///
/// Masks: entries of `gptq_options::keep` are kept at higher precision (q = the updated w, zero error, as SEPTQ
/// does; optionally rounded to fp16/bf16, whose rounding error is then compensated like any other).
///
/// Loss: Σ err² = Σ (w − q)² / U_jj² over all entries (GPTQ prints half of it). For column-wise policies it equals
/// tr((W₀ − Q) H (W₀ − Q)ᵀ) with the damped H and W₀ = W with dead columns zeroed, up to float rounding.
///
/// Threading: W is processed in fixed chunks of rows on the caller's executor (GPTQ never mixes rows); the work of a
/// chunk does not depend on which thread runs it, so the output is bit-identical for every thread count.
/// Precision: weights, U and updates in float (as GPTQ), the loss in double.

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <iterator>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../calib/hessian.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../quant/uniform.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace compensate {

/// What a column quantizer sees at the start of each block (all views are in working column order).
struct block_context {
  matrix_view<const float> weights;      ///< rows x cols, lazily updated; columns < begin are stale
  matrix_view<const float> u;            ///< cols x cols, U in float
  index_t begin = 0, end = 0;            ///< the block's working columns [begin, end)
  std::span<const index_t> perm;         ///< working column k is original column perm[k]
  matrix_view<const std::uint8_t> keep;  ///< rows x cols, nonzero = kept at higher precision; data null without mask
};

template <class P>
concept column_quantizer = requires(P& p, const block_context& ctx, index_t i, std::span<const float> w,
                                    std::span<float> q) {
  { p.begin_block(ctx, inline_executor{}) } -> std::same_as<outcome>;
  p.quantize_column(i, i, w, q);
};

/// How kept (masked) weights are stored.
enum class kept_precision { exact, fp16, bf16 };

struct gptq_options {
  index_t block_size = 128;
  matrix_view<const std::uint8_t> keep{};  ///< rows x cols in original column order, nonzero = keep; optional
  kept_precision keep_as = kept_precision::exact;
};

struct gptq_result {
  index_t rows = 0, cols = 0;
  std::vector<float> q;       ///< rows x cols row-major, original column order: the quantized matrix
  double loss = 0;            ///< Σ (w − q)² / U_jj² (see the file comment)
  std::vector<index_t> perm;  ///< the column order used (the factor's)
};

namespace detail {
template <class P>
constexpr bool propagates_within_block() {
  if constexpr (requires { P::propagate_within_block; })
    return P::propagate_within_block;
  else
    return true;
}

inline float kept_value(float w, kept_precision p) noexcept {
  switch (p) {
    case kept_precision::fp16:
      return round_to_fp16(w);
    case kept_precision::bf16:
      return round_to_bf16(w);
    case kept_precision::exact:
      break;
  }
  return w;
}

/// Rows per task. Fixed, so that results do not depend on the thread count.
inline constexpr index_t chunk_rows = 128;
}  // namespace detail

/// Run the compensation loop with `policy` (see the file comment).
/// @return the quantized matrix and loss, or invalid_shape / invalid_argument / non_finite_input, or the first
///         failed outcome of policy.begin_block.
template <host_matrix_like Weights, column_quantizer Policy, executor Exec = inline_executor>
result<gptq_result> gptq(const Weights& weights, const calib::hessian_factor& factor, Policy& policy,
                         const gptq_options& opt = {}, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  const index_t rows = w.rows(), n = w.cols();
  if (factor.cols() != n || factor.u.rows() != n || factor.u.cols() != n || std::ssize(factor.perm) != n)
    return fail(status::invalid_shape, "the Hessian factor is for " + std::to_string(factor.cols()) +
                                           " columns, the weight matrix has " + std::to_string(n));
  if (opt.block_size <= 0)
    return fail(status::invalid_argument, "block_size must be > 0, got " + std::to_string(opt.block_size));
  const bool masked = opt.keep.data != nullptr;
  if (masked && (opt.keep.rows() != rows || opt.keep.cols() != n))
    return fail(status::invalid_shape, "keep mask is " + std::to_string(opt.keep.rows()) + " x " +
                                           std::to_string(opt.keep.cols()) + ", weights are " + std::to_string(rows) +
                                           " x " + std::to_string(n));

  const std::vector<index_t>& perm = factor.perm;
  std::vector<char> dead(static_cast<std::size_t>(n), 0);
  for (index_t j : factor.dead_columns) dead[static_cast<std::size_t>(j)] = 1;
  const index_t chunks = (rows + detail::chunk_rows - 1) / detail::chunk_rows;
  const auto idx = [n](index_t r, index_t c) { return static_cast<std::size_t>(r * n + c); };

  // Working copies in working column order.
  std::vector<float> wk(static_cast<std::size_t>(rows * n));
  std::vector<std::uint8_t> keep(masked ? wk.size() : 0);
  exec.parallel_for(chunks, [&](index_t ci) {
    for (index_t r = ci * detail::chunk_rows; r < std::min(rows, (ci + 1) * detail::chunk_rows); ++r)
      for (index_t k = 0; k < n; ++k) {
        const index_t c = perm[static_cast<std::size_t>(k)];
        wk[idx(r, k)] = dead[static_cast<std::size_t>(c)] ? 0.0f : to_float(w(r, c));
        if (masked) keep[idx(r, k)] = opt.keep(r, c) != 0;
      }
  });
  using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const row_major u = factor.u.cast<float>();
  std::vector<float> qk(wk.size());
  std::vector<double> chunk_loss(static_cast<std::size_t>(chunks), 0.0);

  block_context ctx{make_matrix_view(static_cast<const float*>(wk.data()), rows, n),
                    make_matrix_view(u.data(), n, n),
                    0,
                    0,
                    perm,
                    masked ? make_matrix_view(static_cast<const std::uint8_t*>(keep.data()), rows, n)
                           : matrix_view<const std::uint8_t>{}};
  for (index_t b0 = 0; b0 < n; b0 += opt.block_size) {
    const index_t b1 = std::min(n, b0 + opt.block_size), bc = b1 - b0;
    ctx.begin = b0;
    ctx.end = b1;
    if (auto ok = policy.begin_block(ctx, exec); !ok) return ok;
    exec.parallel_for(chunks, [&](index_t ci) {
      const index_t r0 = ci * detail::chunk_rows, m = std::min(detail::chunk_rows, rows - r0);
      Eigen::MatrixXf w1(m, bc), err(m, bc);  // column-major: a column of the block is contiguous
      for (index_t i = 0; i < bc; ++i)
        for (index_t r = 0; r < m; ++r) w1(r, i) = wk[idx(r0 + r, b0 + i)];
      Eigen::VectorXf q(m);
      double loss = 0;
      for (index_t i = 0; i < bc; ++i) {
        const index_t col = b0 + i;
        policy.quantize_column(col, r0, std::span<const float>(w1.col(i).data(), static_cast<std::size_t>(m)),
                               std::span<float>(q.data(), static_cast<std::size_t>(m)));
        if (masked)
          for (index_t r = 0; r < m; ++r)
            if (keep[idx(r0 + r, col)]) q(r) = detail::kept_value(w1(r, i), opt.keep_as);
        err.col(i) = (w1.col(i) - q) / u(col, col);
        for (index_t r = 0; r < m; ++r) {
          qk[idx(r0 + r, col)] = q(r);
          loss += static_cast<double>(err(r, i)) * static_cast<double>(err(r, i));
        }
        if (detail::propagates_within_block<Policy>() && i + 1 < bc)
          w1.rightCols(bc - i - 1).noalias() -= err.col(i) * u.row(col).segment(col + 1, bc - i - 1);
      }
      if (b1 < n) {
        Eigen::Map<row_major, Eigen::Unaligned, Eigen::OuterStride<>> rest(wk.data() + idx(r0, b1), m, n - b1,
                                                                           Eigen::OuterStride<>(n));
        rest.noalias() -= err * u.block(b0, b1, bc, n - b1);
      }
      chunk_loss[static_cast<std::size_t>(ci)] += loss;
    });
  }

  gptq_result out;
  out.rows = rows;
  out.cols = n;
  out.perm = perm;
  for (double l : chunk_loss) out.loss += l;
  bool identity = true;
  for (index_t k = 0; k < n; ++k) identity = identity && perm[static_cast<std::size_t>(k)] == k;
  if (identity) {
    out.q = std::move(qk);
    return out;
  }
  wk.clear();  // release the working copy before allocating the unpermuted one
  wk.shrink_to_fit();
  out.q.resize(qk.size());
  exec.parallel_for(chunks, [&](index_t ci) {
    for (index_t r = ci * detail::chunk_rows; r < std::min(rows, (ci + 1) * detail::chunk_rows); ++r)
      for (index_t k = 0; k < n; ++k) out.q[idx(r, perm[static_cast<std::size_t>(k)])] = qk[idx(r, k)];
  });
  return out;
}

/// Column policy of GPTQ and SEPTQ: a uniform grid per row, or per group of `group_size` working columns refitted
/// at each group start on the updated weights (GPTQ's groupsize; per row, the grids are fitted once on W₀).
/// Records the codes, so that the result can be packed.
class uniform_columns {
 public:
  uniform_columns(index_t rows, index_t cols, const quant::uniform_config& cfg)
      : cfg_(cfg), group_(cfg.group_columns(cols)), m_(quant::make_uniform_matrix(rows, cols, cfg)) {}

  template <executor Exec>
  outcome begin_block(const block_context& ctx, const Exec& exec) {
    for (index_t c0 = (ctx.begin + group_ - 1) / group_ * group_; c0 < ctx.end; c0 += group_) {
      const index_t n = std::min(group_, m_.cols - c0), k = c0 / group_;
      exec.parallel_for(m_.rows, [&](index_t r) {
        grid(r, k) = quant::fit_uniform_grid(ctx.weights.block(r, c0, 1, n).row(0), cfg_);
      });
      for (index_t r = 0; r < m_.rows; ++r)
        if (!is_finite(grid(r, k).scale))
          return fail(status::unsupported, "a uniform scale of row " + std::to_string(r) + " exceeds the fp16 range");
    }
    return {};
  }

  void quantize_column(index_t col, index_t row_begin, std::span<const float> w, std::span<float> q) {
    const index_t k = col / group_;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const index_t r = row_begin + static_cast<index_t>(i);
      const quant::uniform_grid& g = grid(r, k);
      const std::uint32_t code = g.code(w[i]);
      m_.codes[static_cast<std::size_t>(r * m_.cols + col)] = static_cast<std::uint8_t>(code);
      q[i] = g.value(code);
    }
  }

  /// Grids and codes in original column order (`column_group` is GPTQ's g_idx when `perm` is not the identity).
  [[nodiscard]] quant::uniform_matrix take(std::span<const index_t> perm) && {
    quant::uniform_matrix out = std::move(m_);
    std::vector<std::uint8_t> codes(out.codes.size());
    for (index_t r = 0; r < out.rows; ++r)
      for (index_t k = 0; k < out.cols; ++k)
        codes[static_cast<std::size_t>(r * out.cols + perm[static_cast<std::size_t>(k)])] =
            out.codes[static_cast<std::size_t>(r * out.cols + k)];
    out.codes = std::move(codes);
    for (index_t k = 0; k < out.cols; ++k)
      out.column_group[static_cast<std::size_t>(perm[static_cast<std::size_t>(k)])] = k / group_;
    return out;
  }

 private:
  quant::uniform_grid& grid(index_t r, index_t k) noexcept {
    return m_.grids[static_cast<std::size_t>(r * m_.groups_per_row + k)];
  }

  quant::uniform_config cfg_;
  index_t group_;
  quant::uniform_matrix m_;
};

static_assert(column_quantizer<uniform_columns>);

struct gptq_uniform_result {
  gptq_result compensated;      ///< the quantized matrix (kept entries included) and the loss
  quant::uniform_matrix codes;  ///< grids and codes, original column order
};

/// GPTQ with a uniform quantizer (b bits, per row or per group; `cfg.mse` for SEPTQ's range search).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<gptq_uniform_result> gptq_uniform(const Weights& weights, const calib::hessian_factor& factor,
                                         const quant::uniform_config& cfg, const gptq_options& opt = {},
                                         const Exec& exec = {}) {
  if (auto ok = quant::check_uniform_config(cfg); !ok) return ok;
  const auto w = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  uniform_columns policy(w.rows(), w.cols(), cfg);
  auto compensated = gptq(w, factor, policy, opt, exec);
  if (!compensated.has_value()) return compensated.as_outcome();
  return gptq_uniform_result{std::move(compensated).value(), std::move(policy).take(factor.perm)};
}

}  // namespace compensate
SAGEPTQ_NAMESPACE_END
