#pragma once
/// @file billm.hpp
/// The `billm` method: BiLLM (Huang et al., ICML 2024) as its public code computes it (bigptq.py, binary.py,
/// utils/structure.py, utils/autosearch.py, utils/mask.py; docs/algorithms.md §4.2), packed as format::billm_matrix.
///
/// Per block of 128 columns of the lazily updated weights W (GPTQ's loop, compensate/gptq.hpp):
///  1. saliency S = W² / diag(U)² (`hessian`; U = upper Cholesky factor of H⁻¹) or S = W (`magnitude`);
///  2. salient columns: the top k columns by Σ_rows |S|, k in [1, up_lim) minimizing the squared error of BiLLM's
///     order-2 residual binarization of S's salient part plus that of its non-salient part (on S, not on W);
///  3. break point p: the quantiles 0.10, 0.11, ..., 0.90 of |S| with the salient entries zeroed (BiLLM's
///     search_matrix: the zeros count) are tried; group 2 = non-salient |S| >= p, group 1 = the other non-salient
///     entries; p minimizes the squared error on S of order-1 binarizations of both groups plus the salient part;
///  4. the whole block of W is quantized up front, per row: salient columns by an order-2 residual binarization,
///     each group by one binary term (mu = mean, alpha = mean |x - mu|, q = alpha sign(x - mu) + mu);
///  5. errors reach later blocks only (propagate_within_block = false); `compensate = false` is BiLLM's
///     disable_gptq (every block quantized from the original weights).
/// Where this differs from BiLLM's code:
///  - stored values: (mu, alpha) are rounded to fp16 as they are fitted, alpha against the stored mu
///    (quant::fit_binary), so the quantizer's output is what format::billm decodes, bit for bit;
///  - a sign bit cannot hold torch.sign(0) = 0: x == mu exactly decodes to mu + alpha here, to mu in BiLLM. That
///    needs a weight equal to its part's stored mean: rare for float weights, occasional for bf16 ones (whose values
///    fp16 holds exactly); each time it costs alpha on that one weight, negligible against the part's error;
///  - sums run in double (BiLLM: float32 CUDA reductions); ties of the column ranking go to the lower column
///    (torch.topk leaves them unspecified); a block narrower than up_lim (where torch.topk raises) tries k in
///    [1, width - 1] (k = 1 for a single column).
/// The searches (2, 3) store nothing, so they keep BiLLM's semantics: float means and scales, sign(0) = 0, numpy's
/// float32 "linear" quantiles of torch's float32 linspace; their squared errors are computed in closed form from
/// sorted values (equal to BiLLM's up to rounding), which makes them cheap: O(log 128) per row and candidate.
///
/// Threading: rows run in fixed chunks on the caller's executor; the searches' errors are reduced in chunk order,
/// so the output is bit-identical for every thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
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
#include "../core/validate.hpp"
#include "../format/billm.hpp"
#include "../quant/residual.hpp"
#include "quantized.hpp"
#include "rtn.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

enum class billm_metric { hessian, magnitude };

struct billm_config {
  index_t block_size = 128;                             ///< columns per block (a positive multiple of 32)
  billm_metric salient_metric = billm_metric::hessian;  ///< BiLLM's README command (its code's default: magnitude)
  int max_salient_columns = 50;                         ///< BiLLM's up_lim: k = 1 .. up_lim - 1 are tried
  float split_quantile_min = 0.10f;                     ///< break points: split_quantiles quantiles of |S|,
  float split_quantile_max = 0.90f;                     ///< evenly spaced from min to max (torch.linspace)
  int split_quantiles = 81;
  bool compensate = true;  ///< false: BiLLM's disable_gptq
};

inline outcome check_billm_config(const billm_config& cfg) {
  if (cfg.block_size <= 0 || cfg.block_size % 32 != 0)
    return fail(status::invalid_argument,
                "billm block_size must be a positive multiple of 32, got " + std::to_string(cfg.block_size));
  if (cfg.max_salient_columns < 2)
    return fail(status::invalid_argument, "billm max_salient_columns (up_lim) must be >= 2, got " +
                                              std::to_string(cfg.max_salient_columns));
  if (!(cfg.split_quantile_min >= 0.0f && cfg.split_quantile_min <= cfg.split_quantile_max &&
        cfg.split_quantile_max <= 1.0f) ||
      cfg.split_quantiles < 1)
    return fail(status::invalid_argument,
                "billm split quantiles need 0 <= min <= max <= 1 and at least one candidate");
  return {};
}

/// What the searches chose for one block.
struct billm_block_choice {
  std::vector<std::uint8_t> salient;  ///< per column of the block, 1 = salient
  float split = 0;                    ///< non-salient |S| >= split: group 2
  index_t salient_columns = 0;        ///< k
};

namespace detail {

/// A multiset of one row's values, sorted ascending, with prefix sums of x and x² (double). BiLLM's binarization
/// errors of the set, or of ranges of it, follow in closed form from a few binary searches: for one term with
/// mu = mean and alpha = mean |x - mu|, Σ (x - q)² = Σ (x - mu)² - 2 alpha Σ |x - mu| + alpha² #(x != mu)
/// (x == mu gives q = mu: torch.sign(0) = 0); the residual of that term is x - (mu - alpha) below mu, 0 at mu and
/// x - (mu + alpha) above, so the second term is the same sums over two shifted ranges. mu and alpha are rounded to
/// float as torch's are; the sums are exact up to double rounding.
class sorted_values {
 public:
  struct range {
    std::size_t begin, end;
  };

  /// Take `values` (left empty or with old contents).
  void assign(std::vector<float>& values) {
    std::sort(values.begin(), values.end());
    x_.swap(values);
    refresh(0);
  }
  void insert(float v) {
    const auto at = std::upper_bound(x_.begin(), x_.end(), v) - x_.begin();
    x_.insert(x_.begin() + at, v);
    refresh(static_cast<std::size_t>(at));
  }
  void erase(float v) {
    const auto at = std::lower_bound(x_.begin(), x_.end(), v) - x_.begin();
    SAGEPTQ_ASSERT(at < std::ssize(x_) && x_[static_cast<std::size_t>(at)] == v);
    x_.erase(x_.begin() + at);
    refresh(static_cast<std::size_t>(at));
  }
  [[nodiscard]] std::size_t size() const noexcept { return x_.size(); }
  /// First index with x >= v (strict = false) or x > v (strict = true).
  [[nodiscard]] std::size_t bound(float v, bool strict) const {
    const auto it = strict ? std::upper_bound(x_.begin(), x_.end(), v) : std::lower_bound(x_.begin(), x_.end(), v);
    return static_cast<std::size_t>(it - x_.begin());
  }

  /// Σ (x - q)² of one binary term fitted to the union of `ranges`.
  [[nodiscard]] double order1_error(std::span<const range> ranges) const {
    std::size_t n = 0;
    double sum = 0;
    for (const range& r : ranges) n += r.end - r.begin, sum += s1_[r.end] - s1_[r.begin];
    if (n == 0) return 0;
    const double mu = static_cast<float>(sum / static_cast<double>(n));
    moments m;
    for (const range& r : ranges) m += about(r, mu);
    return m.error(n);
  }

  /// Σ (x - q)² of the order-2 residual binarization of the whole set.
  [[nodiscard]] double order2_error() const {
    const std::size_t n = x_.size();
    if (n == 0) return 0;
    const double mu1 = static_cast<float>(s1_[n] / static_cast<double>(n));
    const std::size_t lo = bound(static_cast<float>(mu1), false), hi = bound(static_cast<float>(mu1), true);
    const double alpha1 = static_cast<float>(about({0, n}, mu1).abs_dev / static_cast<double>(n));
    const double below = mu1 - alpha1, above = mu1 + alpha1;  // what the first term subtracts on each side
    const double residual_sum = (s1_[lo] - static_cast<double>(lo) * below) +
                                ((s1_[n] - s1_[hi]) - static_cast<double>(n - hi) * above);
    const double mu2 = static_cast<float>(residual_sum / static_cast<double>(n));
    moments m = about({0, lo}, below + mu2);
    m += about({hi, n}, above + mu2);
    const auto at_mu1 = static_cast<double>(hi - lo);  // residual 0
    m.abs_dev += at_mu1 * std::fabs(mu2);
    m.sq_dev += at_mu1 * mu2 * mu2;
    if (mu2 == 0) m.equal += hi - lo;
    return m.error(n);
  }

 private:
  /// Σ |x - c|, Σ (x - c)² and #(x == c) over some values.
  struct moments {
    double abs_dev = 0, sq_dev = 0;
    std::size_t equal = 0;
    moments& operator+=(const moments& o) noexcept {
      abs_dev += o.abs_dev, sq_dev += o.sq_dev, equal += o.equal;
      return *this;
    }
    /// The error of q = c + alpha sign(x - c) with alpha = float(mean |x - c|) over n values.
    [[nodiscard]] double error(std::size_t n) const noexcept {
      const double alpha = static_cast<float>(abs_dev / static_cast<double>(n));
      return sq_dev - 2.0 * alpha * abs_dev + alpha * alpha * static_cast<double>(n - equal);
    }
  };

  [[nodiscard]] moments about(range r, double c) const {
    const auto first = x_.begin() + static_cast<std::ptrdiff_t>(r.begin);
    const auto last = x_.begin() + static_cast<std::ptrdiff_t>(r.end);
    const auto lo = static_cast<std::size_t>(std::lower_bound(first, last, c) - x_.begin());
    const auto hi = static_cast<std::size_t>(std::upper_bound(first, last, c) - x_.begin());
    const double sum = s1_[r.end] - s1_[r.begin];
    return {c * static_cast<double>(lo - r.begin) - (s1_[lo] - s1_[r.begin]) + (s1_[r.end] - s1_[hi]) -
                c * static_cast<double>(r.end - hi),
            (s2_[r.end] - s2_[r.begin]) - 2.0 * c * sum + static_cast<double>(r.end - r.begin) * c * c, hi - lo};
  }

  /// Prefix sums from index `from` on.
  void refresh(std::size_t from) {
    s1_.resize(x_.size() + 1);
    s2_.resize(x_.size() + 1);
    s1_[0] = s2_[0] = 0;
    for (std::size_t i = from; i < x_.size(); ++i) {
      s1_[i + 1] = s1_[i] + x_[i];
      s2_[i + 1] = s2_[i] + double{x_[i]} * x_[i];
    }
  }

  std::vector<float> x_;
  std::vector<double> s1_, s2_;
};

/// Candidate i of torch.linspace(lo, hi, steps) in float32, as torch computes it (from both ends).
inline float linspace_value(float lo, float hi, int steps, int i) noexcept {
  if (steps == 1) return lo;
  const float step = (hi - lo) / static_cast<float>(steps - 1);
  return i < steps / 2 ? lo + step * static_cast<float>(i) : hi - step * static_cast<float>(steps - 1 - i);
}

/// Reorder v[lo, hi) so that v[p] is the p-th smallest of it for each p in `positions` (ascending, in [lo, hi)).
inline void select_order_statistics(std::vector<float>& v, std::span<const index_t> positions, index_t lo,
                                    index_t hi) {
  if (positions.empty()) return;
  const std::size_t mid = positions.size() / 2;
  const index_t p = positions[mid];
  std::nth_element(v.begin() + lo, v.begin() + p, v.begin() + hi);
  select_order_statistics(v, positions.first(mid), lo, p);
  select_order_statistics(v, positions.subspan(mid + 1), p + 1, hi);
}

/// Rows per task of the searches. Fixed, so that results do not depend on the thread count.
inline constexpr index_t billm_chunk_rows = 16;

/// The first of `candidates` candidates with the least error summed over the rows: chunk_errors(r0, r1, errors)
/// adds the errors of rows [r0, r1) to errors[0, candidates). Chunks run on the executor and their sums are added
/// in chunk order, so the choice is the same for every thread count.
template <class Exec, class ChunkErrors>
index_t billm_argmin(index_t rows, index_t candidates, const Exec& exec, ChunkErrors&& chunk_errors) {
  const index_t chunks = (rows + billm_chunk_rows - 1) / billm_chunk_rows;
  std::vector<double> partial(static_cast<std::size_t>(chunks * candidates), 0.0);
  exec.parallel_for(chunks, [&](index_t ci) {
    chunk_errors(ci * billm_chunk_rows, std::min(rows, (ci + 1) * billm_chunk_rows),
                 std::span(partial).subspan(static_cast<std::size_t>(ci * candidates),
                                            static_cast<std::size_t>(candidates)));
  });
  index_t best = 0;
  double least = 0;
  for (index_t i = 0; i < candidates; ++i) {
    double e = 0;
    for (index_t ci = 0; ci < chunks; ++ci) e += partial[static_cast<std::size_t>(ci * candidates + i)];
    if (i == 0 || e < least) best = i, least = e;
  }
  return best;
}

/// Columns of s by Σ_rows |S|, descending, ties to the lower column (torch.topk's order, made deterministic).
template <class Exec>
std::vector<index_t> billm_rank_columns(matrix_view<const float> s, const Exec& exec) {
  const index_t rows = s.rows(), width = s.cols(), chunks = (rows + billm_chunk_rows - 1) / billm_chunk_rows;
  const auto w = static_cast<std::size_t>(width);
  std::vector<double> partial(static_cast<std::size_t>(chunks) * w, 0.0);
  exec.parallel_for(chunks, [&](index_t ci) {
    double* sums = partial.data() + static_cast<std::size_t>(ci) * w;
    for (index_t r = ci * billm_chunk_rows; r < std::min(rows, (ci + 1) * billm_chunk_rows); ++r)
      for (index_t c = 0; c < width; ++c) sums[c] += std::fabs(s(r, c));
  });
  std::vector<double> score(w, 0.0);
  for (std::size_t i = 0; i < partial.size(); ++i) score[i % w] += partial[i];
  std::vector<index_t> ranked(w);
  std::iota(ranked.begin(), ranked.end(), index_t{0});
  std::stable_sort(ranked.begin(), ranked.end(), [&](index_t a, index_t b) {
    return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)];
  });
  return ranked;
}

/// The distinct break-point candidates in order (a repeated value cannot beat its first occurrence): numpy's linear
/// quantiles, with its float32 index arithmetic, of the rows x width values |S| with the salient entries zeroed.
/// Those zeros sort first, so only the non-salient values are (partially) ordered.
inline std::vector<float> billm_split_candidates(matrix_view<const float> s, std::span<const std::uint8_t> salient,
                                                 index_t salient_columns, const billm_config& cfg) {
  const index_t rows = s.rows(), width = s.cols();
  std::vector<float> values;
  values.reserve(static_cast<std::size_t>(rows * (width - salient_columns)));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < width; ++c)
      if (!salient[static_cast<std::size_t>(c)]) values.push_back(std::fabs(s(r, c)));
  const index_t n = rows * width, zeros = rows * salient_columns;
  struct quantile_point {
    index_t lo, hi;
    double gamma;
  };
  std::vector<quantile_point> points;
  std::vector<index_t> positions;
  for (int i = 0; i < cfg.split_quantiles; ++i) {
    const float h = static_cast<float>(n - 1) *
                    linspace_value(cfg.split_quantile_min, cfg.split_quantile_max, cfg.split_quantiles, i);
    const auto lo = std::min(static_cast<index_t>(std::floor(h)), n - 1);
    points.push_back({lo, std::min(lo + 1, n - 1), static_cast<double>(h) - static_cast<double>(lo)});
    for (index_t p : {points.back().lo, points.back().hi})
      if (p >= zeros) positions.push_back(p - zeros);
  }
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  select_order_statistics(values, positions, 0, std::ssize(values));
  const auto sorted = [&](index_t p) { return p < zeros ? 0.0f : values[static_cast<std::size_t>(p - zeros)]; };
  std::vector<float> splits;
  for (const quantile_point& qp : points) {
    const float a = sorted(qp.lo), b = sorted(qp.hi);
    const double diff = b - a;  // numpy: a float32 difference, interpolated in float64
    const auto split = static_cast<float>(qp.gamma >= 0.5 ? b - diff * (1.0 - qp.gamma) : a + diff * qp.gamma);
    if (std::find(splits.begin(), splits.end(), split) == splits.end()) splits.push_back(split);
  }
  return splits;
}

}  // namespace detail

/// BiLLM's searches (steps 2 and 3 of the file comment) on the saliency S of one block (rows x width). Each row's
/// errors come from detail::sorted_values in O(log width) per candidate; the salient part's error, the same for
/// every break point, is left out of the break-point search.
template <executor Exec = inline_executor>
billm_block_choice billm_search(matrix_view<const float> s, const billm_config& cfg, const Exec& exec = {}) {
  const index_t rows = s.rows(), width = s.cols();
  const std::vector<index_t> ranked = detail::billm_rank_columns(s, exec);

  // k: the order-2 residual binarizations of the top k columns and of the rest; a row's top set gains one per k.
  const index_t k_max = std::max<index_t>(1, std::min<index_t>(cfg.max_salient_columns, width) - 1);
  const index_t k_index = detail::billm_argmin(rows, k_max, exec, [&](index_t r0, index_t r1, std::span<double> errors) {
    detail::sorted_values top, rest;
    std::vector<float> values;
    for (index_t r = r0; r < r1; ++r) {
      values.clear();
      for (index_t c = 0; c < width; ++c) values.push_back(s(r, c));
      rest.assign(values);
      values.clear();
      top.assign(values);
      for (index_t k = 1; k <= k_max; ++k) {
        const float moved = s(r, ranked[static_cast<std::size_t>(k - 1)]);
        rest.erase(moved);
        top.insert(moved);
        errors[static_cast<std::size_t>(k - 1)] += top.order2_error() + rest.order2_error();
      }
    }
  });
  billm_block_choice choice{std::vector<std::uint8_t>(static_cast<std::size_t>(width), 0), 0.0f, k_index + 1};
  for (index_t i = 0; i < choice.salient_columns; ++i) choice.salient[static_cast<std::size_t>(ranked[i])] = 1;

  // Break point: one binary term for each group (group 1: |S| < p, i.e. -p < S < p; group 2: the rest).
  const std::vector<float> splits = detail::billm_split_candidates(s, choice.salient, choice.salient_columns, cfg);
  const index_t split_index =
      detail::billm_argmin(rows, std::ssize(splits), exec, [&](index_t r0, index_t r1, std::span<double> errors) {
        using range = detail::sorted_values::range;
        detail::sorted_values v;
        std::vector<float> values;
        for (index_t r = r0; r < r1; ++r) {
          values.clear();
          for (index_t c = 0; c < width; ++c)
            if (!choice.salient[static_cast<std::size_t>(c)]) values.push_back(s(r, c));
          v.assign(values);
          for (std::size_t i = 0; i < splits.size(); ++i) {
            const float p = splits[i];
            const std::size_t lo = p > 0.0f ? v.bound(-p, true) : 0, hi = p > 0.0f ? v.bound(p, false) : 0;
            const range group1[] = {{lo, hi}}, group2[] = {{0, lo}, {hi, v.size()}};
            errors[i] += v.order1_error(group1) + v.order1_error(group2);
          }
        }
      });
  choice.split = splits[static_cast<std::size_t>(split_index)];
  return choice;
}

/// The column policy of compensate::gptq for BiLLM: searches and quantizes each whole block in begin_block, and
/// packs it into a format::billm_matrix.
class billm_columns {
 public:
  static constexpr bool propagate_within_block = false;

  billm_columns(index_t rows, index_t cols, const billm_config& cfg)
      : cfg_(cfg), packed_(format::billm_matrix::zeros(rows, cols, cfg.block_size)) {}

  template <executor Exec>
  outcome begin_block(const compensate::block_context& ctx, const Exec& exec) {
    const detail::stopwatch clock;
    const index_t rows = ctx.weights.rows(), width = ctx.end - ctx.begin;
    SAGEPTQ_ASSERT(ctx.begin % cfg_.block_size == 0 && width <= cfg_.block_size);
    begin_ = ctx.begin;
    width_ = width;
    const auto w = static_cast<std::size_t>(width);
    std::vector<float> s(static_cast<std::size_t>(rows) * w);
    exec.parallel_for(rows, [&](index_t r) {
      for (index_t c = 0; c < width; ++c) {
        const float x = ctx.weights(r, ctx.begin + c), d = ctx.u(ctx.begin + c, ctx.begin + c);
        s[static_cast<std::size_t>(r) * w + static_cast<std::size_t>(c)] =
            cfg_.salient_metric == billm_metric::hessian ? (x * x) / (d * d) : x;
      }
    });
    const billm_block_choice choice = billm_search(make_matrix_view(std::as_const(s).data(), rows, width), cfg_, exec);
    search_seconds_ += clock.seconds();
    salient_per_block_.push_back(choice.salient_columns);

    for (index_t c = 0; c < width; ++c)
      if (choice.salient[static_cast<std::size_t>(c)]) packed_.salient[static_cast<std::size_t>((begin_ + c) / 32)] |=
          1u << ((begin_ + c) % 32);
    q_.resize(s.size());
    std::vector<char> overflow(static_cast<std::size_t>(rows), 0);
    exec.parallel_for(rows, [&](index_t r) {
      overflow[static_cast<std::size_t>(r)] = !quantize_row(ctx.weights, r, choice, s);
    });
    for (index_t r = 0; r < rows; ++r)
      if (overflow[static_cast<std::size_t>(r)])
        return fail(status::unsupported, "a billm mean or scale of row " + std::to_string(r) + " in columns [" +
                                             std::to_string(ctx.begin) + ", " + std::to_string(ctx.end) +
                                             ") exceeds the fp16 range");
    return {};
  }

  void quantize_column(index_t col, index_t row_begin, std::span<const float>, std::span<float> q) const {
    for (std::size_t i = 0; i < q.size(); ++i)
      q[i] = q_[static_cast<std::size_t>((row_begin + static_cast<index_t>(i)) * width_ + col - begin_)];
  }

  [[nodiscard]] const std::vector<float>& block_values() const noexcept { return q_; }  ///< rows x width
  [[nodiscard]] const std::vector<index_t>& salient_per_block() const noexcept { return salient_per_block_; }
  [[nodiscard]] double search_seconds() const noexcept { return search_seconds_; }
  [[nodiscard]] format::billm_matrix take() && { return std::move(packed_); }

 private:
  /// Step 4 for row r of the block: fit, quantize, pack. False when a scalar exceeds the fp16 range.
  bool quantize_row(matrix_view<const float> weights, index_t r, const billm_block_choice& choice,
                    const std::vector<float>& s) {
    using format::billm;
    const auto w = static_cast<std::size_t>(width_);
    const auto part_of = [&](std::size_t c) {
      if (choice.salient[c]) return int{billm::salient1};
      return std::fabs(s[static_cast<std::size_t>(r) * w + c]) >= choice.split ? int{billm::group2}
                                                                               : int{billm::group1};
    };
    std::vector<float> values[3];  // group 1, group 2, salient: in column order
    for (std::size_t c = 0; c < w; ++c) values[part_of(c)].push_back(weights(r, begin_ + static_cast<index_t>(c)));
    quant::residual_fit fits[3];
    for (int p = 0; p < 3; ++p)
      fits[p] = quant::fit_residual(values[p], {}, {p == billm::salient1 ? 2 : 1, binarizer});

    const index_t words = packed_.view().words_per_row(), blocks = packed_.view().blocks();
    fp16* scales = packed_.scales.data() + (r * blocks + begin_ / cfg_.block_size) * billm::scales_per_block;
    bool finite = true;
    for (int p = 0; p < 3; ++p)
      for (std::size_t t = 0; t < fits[p].terms.size(); ++t) {
        const quant::binary_scalar& term = fits[p].terms[t];
        finite = finite && is_finite(term.mu) && is_finite(term.alpha);
        scales[2 * (p + static_cast<int>(t))] = fp16(term.mu);  // salient order 2 follows order 1
        scales[2 * (p + static_cast<int>(t)) + 1] = fp16(term.alpha);
      }
    std::uint32_t* signs = packed_.signs.data() + r * words;
    std::uint32_t* second = packed_.second.data() + r * words;
    for (std::size_t c = 0; c < w; ++c) {
      const int p = part_of(c);
      const quant::residual_point point =
          quant::residual_quantize(fits[p].terms, weights(r, begin_ + static_cast<index_t>(c)), true);
      q_[static_cast<std::size_t>(r) * w + c] = point.value;
      const index_t col = begin_ + static_cast<index_t>(c);
      const bool second_bit = p == billm::salient1 ? (point.positive & 2u) != 0 : p == billm::group2;
      signs[col / 32] |= static_cast<std::uint32_t>(point.positive & 1u) << (col % 32);
      second[col / 32] |= static_cast<std::uint32_t>(second_bit) << (col % 32);
    }
    return finite;
  }

  static constexpr quant::binarize_options binarizer{.with_mean = true, .max_iter = 0, .fp16_scalars = true};

  billm_config cfg_;
  format::billm_matrix packed_;
  std::vector<float> q_;
  index_t begin_ = 0, width_ = 0;
  std::vector<index_t> salient_per_block_;
  double search_seconds_ = 0;
};

static_assert(compensate::column_quantizer<billm_columns>);

/// `billm`: see the file comment.
/// @return the packed matrix, its decoded values (the quantizer's output, equal to decode(packed)) and the report;
///         or invalid_argument (config), invalid_shape (factor width), non_finite_input, unsupported (a factor in
///         act order; a mean or scale beyond fp16).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<quantized<format::billm_matrix>> quantize_billm(const Weights& weights, const calib::hessian_factor& factor,
                                                        const billm_config& cfg = {}, const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  if (auto ok = check_billm_config(cfg); !ok) return ok;
  if (auto ok = check_finite_matrix(w, "weight matrix"); !ok) return ok;
  if (auto ok = detail::check_factor(factor, w.cols()); !ok) return ok;
  for (index_t k = 0; k < std::ssize(factor.perm); ++k)
    if (factor.perm[static_cast<std::size_t>(k)] != k)
      return fail(status::unsupported, "billm quantizes blocks of consecutive columns: prepare the Hessian factor "
                                       "without act_order");

  const detail::stopwatch clock;
  const index_t rows = w.rows(), cols = w.cols();
  billm_columns policy(rows, cols, cfg);
  std::vector<float> q;
  double loss = 0;
  if (cfg.compensate) {
    compensate::gptq_options opt;
    opt.block_size = cfg.block_size;
    auto compensated = compensate::gptq(w, factor, policy, opt, exec);
    if (!compensated.has_value()) return compensated.as_outcome();
    q = std::move(compensated->q);
    loss = compensated->loss;
  } else {  // every block from the original weights (dead columns zeroed, as BiLLM does)
    std::vector<float> w0(static_cast<std::size_t>(rows * cols));
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) w0[static_cast<std::size_t>(r * cols + c)] = to_float(w(r, c));
    for (index_t c : factor.dead_columns)
      for (index_t r = 0; r < rows; ++r) w0[static_cast<std::size_t>(r * cols + c)] = 0.0f;
    using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const row_major u = factor.u.cast<float>();
    compensate::block_context ctx{make_matrix_view(std::as_const(w0).data(), rows, cols),
                                  make_matrix_view(u.data(), cols, cols), 0, 0, factor.perm, {}};
    q.resize(w0.size());
    for (ctx.begin = 0; ctx.begin < cols; ctx.begin += cfg.block_size) {
      ctx.end = std::min(cols, ctx.begin + cfg.block_size);
      if (auto ok = policy.begin_block(ctx, exec); !ok) return ok;
      const index_t width = ctx.end - ctx.begin;
      for (index_t r = 0; r < rows; ++r)
        std::copy_n(policy.block_values().begin() + r * width, width, q.begin() + r * cols + ctx.begin);
    }
  }
  const double seconds = clock.seconds();

  const std::vector<index_t> salient = policy.salient_per_block();
  const double search_seconds = policy.search_seconds();
  quantized<format::billm_matrix> out{std::move(policy).take(), std::move(q), {}};
  matrix_report& report = out.report;
  report.method = "billm";
  report.rows = rows;
  report.cols = cols;
  report.groups = 2;
  report.bits = out.packed.bits();
  report.salient_fraction = static_cast<double>(out.packed.salient_columns()) / static_cast<double>(cols);
  report.times.search = search_seconds;
  report.times.quantize = seconds - report.times.search;
  detail::fill_hessian_errors(report, w, out.dequantized, factor.h, exec);
  const auto [fewest, most] = std::minmax_element(salient.begin(), salient.end());
  report.notes = "salient columns per block " + std::to_string(*fewest) + ".." + std::to_string(*most) +
                 (cfg.compensate ? "; compensation loss sum (w - q)^2 / U_jj^2 = " + std::to_string(loss)
                                 : "; no compensation");
  return out;
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
