#pragma once
/// @file sage.hpp
/// SAGE-PTQ for one matrix: salient input channels kept multi-bit, the rest binarized with one scalar per group,
/// the saliency threshold and the number of groups chosen per matrix to minimise the calibrated error
/// tr((W - Q) H (W - Q)^T) under a full-bits budget.
///
/// Steps (each a library stage, each choice a config field; docs/algorithms.md §1.2 has the reconstruction):
///  1. Saliency: a score per input channel (default Hessian-weighted, sum_i w_ij^2 / U_jj^2); candidate salient sets
///     are the channels above mu + t * sigma of the scores for every t of `sigma_grid`, the top fractions of
///     `fraction_grid`, and the empty set, each also grown and shrunk to fill whole sign rows (snap_to_sign_rows);
///     each non-empty set is tried with every width of `salient_bits_grid`.
///  2. Groups: the binarized channels are clustered into G column groups (group::column_groups), and the scale of
///     weight (r, c) is alpha_r * beta_g(c) (quant::fit_factorized, weighted by diag H): structural groups that the
///     decoder derives from G + 1 offsets, so G costs almost no bits (format/sage.hpp).
///  3. Quantizer: sign(w) * alpha_r * beta_g for binarized channels; a per-row uniform grid of the candidate's width with GPTQ's
///     MSE range search for salient channels, each channel's error weighted by H_jj (sage_grid_weight).
///  4. Compensation: GPTQ's column-by-column update (compensate::gptq) with that quantizer as its column policy;
///     by default the salient channels come last, so their finer grids absorb the binarization error pushed
///     forward, and their grids are fitted on the compensated weights (sage_order; gutenberg-llama-20m at 1.5 bpw:
///     val perplexity 57.8 with grids fitted on W0 in natural order, 51.0 salient last).
///  5. Refit: with the signs fixed, each alpha_r is re-solved in the H metric (closed form), which can only lower the
///     error (on the `refit_candidates` of least error after step 4).
///  6. Adaptive threshold: every (salient set, G) candidate within the budget is screened by a cheap proxy (no
///     compensation, diag-H error); the best `screened_candidates` run steps 4-5, and the lowest error wins.
/// Output: the packed format::sage_matrix, its decoded values (bit-identical to decode()), and the report.
/// Threading: rows and row blocks on the caller's executor; results do not depend on the thread count.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../calib/hessian.hpp"
#include "../compensate/gptq.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"
#include "../format/binary_term.hpp"
#include "../format/sage.hpp"
#include "../group/assign.hpp"
#include "../quant/binarize.hpp"
#include "../quant/uniform.hpp"
#include "../saliency/metric.hpp"
#include "../saliency/split.hpp"
#include "quantized.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

enum class sage_saliency { hessian, magnitude };

/// Where the salient channels sit in the compensation order, and what their grids are fitted on.
enum class sage_order {
  natural,       ///< the factor's order; salient grids fitted on W0 before compensation
  /// Binarized channels first, salient ones last: the finer salient grids absorb the binarization error the loop
  /// pushes forward, and each row's grid is fitted on the compensated weights when the loop reaches them.
  salient_last,
};

/// What the range search of a salient grid weighs each channel's error by. One grid per row spans every salient
/// channel; unweighted, the search clips the few channels of large activations (whose errors cost most) to fit the
/// many others, so adding salient channels could raise the error: on synthetic::make_layer, 3-bit salient columns
/// at top fractions 0.05 / 0.2 / 0.5 gave relative errors 0.149 / 0.166 / 0.175 unweighted, 0.137 / 0.117 / 0.094
/// weighted by H_jj, and sage at 2.0 bpw stopped spending at 1.44. gutenberg-llama-20m, val@40 perplexity (seed 0):
/// 1.5 bpw 46.30 -> 44.52, 2.0 bpw 33.23 -> 32.51 (stories260k, one seed: 1.5 205.7 -> 229.4 at 1.44 -> 1.50 bpw,
/// 2.0 156.9 -> 139.7, 2.5 106.9 -> 81.8).
enum class sage_grid_weight {
  none,          ///< GPTQ's search: sum_j |q_j - w_j|^2.4
  hessian_diag,  ///< sum_j H_jj |q_j - w_j|^2.4: each channel's error as the calibrated loss would weigh it alone
};

/// Padding of the sign rows: 16-byte rows suit vector loads (the CUDA kernels need them); 4-byte rows save up to
/// 96 bits per row, which matters only for narrow matrices. `automatic`: 4-byte rows below 512 columns.
enum class sage_row_padding { automatic, bytes16, bytes4 };

struct sage_config {
  double target_bpw = 1.1;  ///< budget on full bits per weight; <= 0 means no budget
  std::vector<int> salient_bits_grid = {2, 3, 4};  ///< candidate bit widths of the salient channels' codes (2..8)
  sage_grid_weight grid_weight = sage_grid_weight::hessian_diag;  ///< the salient grids' range search (see the enum)
  sage_saliency metric = sage_saliency::hessian;
  /// Candidate thresholds t (salient iff score > mu + t * sigma). The empty salient set is always a candidate.
  std::vector<double> sigma_grid = {6.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5};
  /// Further candidates: the top fraction of channels by score (reach budgets that mu + t sigma cannot). Up to 0.9,
  /// so that 2-2.5 bpw budgets are spent (gutenberg-llama-20m at 2.0: 1.83 full bpw and val ppl 39.3 with fractions
  /// up to 0.5, 1.93 and 34.7 with these).
  std::vector<double> fraction_grid = {0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
  std::vector<int> group_grid = {1, 2, 4, 8, 16, 32, 64};  ///< candidate G (column groups cost ~48 bits each)
  /// Also try each salient set grown and shrunk (by score) until the binarized channels fill whole 16-byte sign
  /// rows: a row's tail is padding the budget pays for (gutenberg-llama-20m at 1.5-2.5 bpw: 0.07-0.11 bpw of
  /// padding without this; val ppl at 1.5: 47.6 -> 46.3). Not with 4-byte rows (at most 31 bits of padding): there
  /// the extra candidates only displaced better ones from the screening (stories260k at 2.11: ppl 266 -> 389).
  bool snap_to_sign_rows = true;
  /// Also try, for each width of salient_bits_grid, the most top-scored channels that fit the budget with
  /// fill_groups groups: the fraction grid is coarse where salient channels are dear (synthetic::make_layer at 2.0:
  /// 0.3 of the channels at 4 bits costs 2.03 bpw, so the best fit was 0.2 at 1.81 bpw, relative error 0.0665;
  /// filled: 2.00 bpw, 0.0626). Off by default: with the H_jj-weighted grids, gutenberg-llama-20m at 2.0 bpw went
  /// from val@40 perplexity 32.51 to 33.81 (seed 0), although stories260k gained (2.0: 139.7 -> 133.9; 2.5: 81.8 ->
  /// 77.4): a lower calibrated error of each matrix is not a lower perplexity when a model's budget is a ledger.
  bool fill_budget = false;
  int fill_groups = 8;  ///< G with which fill_budget prices the filling sets
  /// Candidates that get the full quantization (>= 1). The proxy ranks poorly (gutenberg-llama-20m at 1.1 bpw, val
  /// ppl: 151 with 3, 136 with 8), while the compensation of a candidate costs little next to the calibration.
  int screened_candidates = 8;
  index_t screen_rows = 512;                   ///< rows (evenly spaced) on which candidates are screened
  bool compensate = true;                      ///< GPTQ error compensation
  sage_order order = sage_order::salient_last;  ///< compensation order of the salient channels (see the enum)
  /// Compensate the columns by descending H_jj (GPTQ's act order) within each part. Lowers the calibrated error
  /// of most matrices yet raised gutenberg-llama-20m's val perplexity (1.1 bpw: 143 vs 136; 1.5: 50.8 vs 49.5).
  bool act_order = false;
  bool refit_row_scales = true;                ///< closed-form alpha_r in the H metric after compensation
  /// The refit runs on this many candidates of least compensated error (0: all, an exact selection). It costs a
  /// rows x cols x cols product each, more than the compensation, and lowered every candidate's error by about
  /// the same 2.3% on a synthetic 2752 x 4096 layer (candidates 0.1-0.3% apart), so the third rarely overtakes.
  int refit_candidates = 2;
  index_t block_size = 128;                    ///< GPTQ block
  sage_row_padding row_padding = sage_row_padding::automatic;
};

/// Whether `cfg` stores 4-byte sign rows for a matrix of `cols` columns.
inline bool sage_word_rows(const sage_config& cfg, index_t cols) noexcept {
  return cfg.row_padding == sage_row_padding::bytes4 || (cfg.row_padding == sage_row_padding::automatic && cols < 512);
}

namespace detail {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Everything a candidate's quantizer needs, fitted before compensation.
struct sage_fit {
  std::vector<std::int32_t> column_group;  ///< group of every column, -1 for salient ones
  int groups = 1;
  quant::factorized_scales scales;
  int salient_bits = 0;
  std::vector<quant::uniform_grid> salient_grid;  ///< one per row (empty without salient columns)
};

/// One candidate of the adaptive search: which channels are salient and how many groups the rest has.
struct sage_candidate {
  std::vector<index_t> salient;  ///< sorted source columns
  int groups = 1;
  int salient_bits = 0;          ///< code width of the salient channels (0 without any)
  double proxy = 0;  ///< error without compensation on the screening rows, sum_ij (w - q)^2 H_jj
};

/// The shape a candidate would have, for its exact bit count (no allocation of the payload).
/// One group and no salient columns store no permutation; other candidates are counted with one (the builder drops
/// it if the stored order happens to be the identity, which only lowers the bits).
inline format::sage_shape candidate_shape(index_t rows, index_t cols, index_t salient, int groups, int salient_bits,
                                          bool word_rows) {
  format::sage_shape s;
  s.rows = static_cast<std::uint32_t>(rows);
  s.cols = static_cast<std::uint32_t>(cols);
  s.orig_rows = s.rows;
  s.orig_cols = s.cols;
  s.salient_cols = static_cast<std::uint32_t>(salient);
  s.groups = static_cast<std::uint32_t>(groups);
  s.salient_bits = salient > 0 ? static_cast<std::uint8_t>(salient_bits) : std::uint8_t{0};
  s.identity_perm = salient == 0 && groups == 1;
  s.word_rows = word_rows;
  return s;
}

/// GPTQ column policy of SAGE: sign * alpha_r * beta_g, or the row's salient grid. Records signs and codes.
/// With `salient_from` < cols (working order, salient channels last), the salient grids are refitted at the block
/// that reaches them, on the compensated weights (the block's own earlier columns have not updated them yet).
class sage_columns {
 public:
  /// `importance`: the range search's weight of each source column (empty: unweighted).
  sage_columns(sage_fit& fit, std::span<const index_t> perm, index_t rows, index_t cols, index_t salient_from,
               std::span<const float> importance)
      : fit_(fit), perm_(perm), importance_(importance), cols_(cols), salient_from_(salient_from),
        symbol_(static_cast<std::size_t>(rows * cols), 0) {}

  template <executor Exec>
  outcome begin_block(const compensate::block_context& ctx, const Exec& exec) {
    if (salient_from_ >= cols_ || ctx.end <= salient_from_) return {};
    const index_t n = cols_ - salient_from_;
    const quant::uniform_config grid_cfg{.bits = fit_.salient_bits, .group_size = 0, .symmetric = false, .mse = true};
    std::vector<float> importance;  // working order of the salient part
    if (!importance_.empty())
      for (index_t k = salient_from_; k < cols_; ++k)
        importance.push_back(importance_[static_cast<std::size_t>(perm_[static_cast<std::size_t>(k)])]);
    exec.parallel_for(ctx.weights.rows(), [&](index_t r) {
      fit_.salient_grid[static_cast<std::size_t>(r)] =
          quant::fit_uniform_grid(ctx.weights.block(r, salient_from_, 1, n).row(0), grid_cfg, importance);
    });
    salient_from_ = cols_;
    for (const auto& grid : fit_.salient_grid)
      if (!is_finite(grid.scale)) return fail(status::unsupported, "a salient scale exceeds the fp16 range");
    return {};
  }

  void quantize_column(index_t col, index_t row_begin, std::span<const float> w, std::span<float> q) {
    const index_t c = perm_[static_cast<std::size_t>(col)];
    const std::int32_t g = fit_.column_group[static_cast<std::size_t>(c)];
    for (std::size_t i = 0; i < w.size(); ++i) {
      const index_t r = row_begin + static_cast<index_t>(i);
      std::uint8_t& symbol = symbol_[static_cast<std::size_t>(r * cols_ + c)];
      if (g < 0) {
        const quant::uniform_grid& grid = fit_.salient_grid[static_cast<std::size_t>(r)];
        const std::uint32_t code = grid.code(w[i]);
        symbol = static_cast<std::uint8_t>(code);
        q[i] = grid.value(code);
      } else {
        const bool positive = w[i] >= 0.0f;
        symbol = positive ? 1 : 0;
        const float s = fit_.scales.scale(r, g);
        q[i] = positive ? s : -s;
      }
    }
  }

  /// Per weight: the sign bit (binarized columns) or the code (salient columns), source column order.
  [[nodiscard]] const std::vector<std::uint8_t>& symbols() const noexcept { return symbol_; }

 private:
  sage_fit& fit_;
  std::span<const index_t> perm_;
  std::span<const float> importance_;
  index_t cols_, salient_from_;
  std::vector<std::uint8_t> symbol_;
};

/// The factor of the same damped H for another working order: `f`'s order, sorted by descending H_jj with
/// `act_order`, then the `salient` columns moved to the end (each part keeping its order). U is recomputed; H,
/// damping and dead columns are kept.
template <executor Exec>
result<calib::hessian_factor> reordered_factor(const calib::hessian_factor& f, std::span<const index_t> salient,
                                               bool act_order, const Exec& exec) {
  const index_t n = f.cols();
  std::vector<char> is_salient(static_cast<std::size_t>(n), 0);
  for (index_t c : salient) is_salient[static_cast<std::size_t>(c)] = 1;
  std::vector<index_t> perm = f.perm;
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](index_t a, index_t b) { return f.h(a, a) > f.h(b, b); });
  std::stable_partition(perm.begin(), perm.end(), [&](index_t c) { return !is_salient[static_cast<std::size_t>(c)]; });
  Eigen::MatrixXd h(n, n);
  for (index_t c = 0; c < n; ++c)
    for (index_t r = 0; r < n; ++r) h(r, c) = f.h(perm[static_cast<std::size_t>(r)], perm[static_cast<std::size_t>(c)]);
  auto g = calib::prepare(h, {.percdamp = 0.0}, exec);  // f.h is damped already
  if (!g.has_value()) return g.as_outcome();
  calib::hessian_factor out = std::move(g).value();
  out.h = f.h;
  out.perm = std::move(perm);
  out.dead_columns = f.dead_columns;
  out.damping = f.damping;
  out.damping_fraction = f.damping_fraction;
  return out;
}

}  // namespace detail

/// The fewest full bits per weight any candidate of `cfg` stores for a rows x cols matrix: one group, nothing salient.
inline double sage_smallest_bpw(index_t rows, index_t cols, const sage_config& cfg) {
  return format::sage_bits(detail::candidate_shape(rows, cols, 0, 1, 0, sage_word_rows(cfg, cols))).full_bpw();
}

/// SAGE-PTQ of one matrix (see the file comment).
/// @param weights rows x cols (output x input channels), any host_matrix_like
/// @param factor  calibration statistics of the layer's inputs (calib::prepare)
/// @return the packed matrix, its decoded values and the report; invalid_argument for a bad config, invalid_shape
///         / non_finite_input for bad inputs, invalid_argument when no candidate fits the budget (the message says
///         the smallest full bpw reachable).
template <host_matrix_like Weights, executor Exec = inline_executor>
result<quantized<format::sage_matrix>> quantize_sage(const Weights& weights, const calib::hessian_factor& factor,
                                                     const sage_config& cfg = {}, const Exec& exec = {}) {
  using clock = std::chrono::steady_clock;
  const auto w_in = sageptq::view(weights);
  if (auto ok = check_finite_matrix(w_in, "weight matrix"); !ok) return ok;
  const index_t rows = w_in.rows(), cols = w_in.cols();
  if (factor.cols() != cols)
    return fail(status::invalid_shape, "the Hessian factor is for " + std::to_string(factor.cols()) +
                                           " columns, the weight matrix has " + std::to_string(cols));
  for (int b : cfg.salient_bits_grid)
    if (b < 2 || b > 8) return fail(status::invalid_argument, "sage salient bits must be in [2, 8], got " + std::to_string(b));
  if (cfg.salient_bits_grid.empty()) return fail(status::invalid_argument, "sage needs a non-empty salient_bits_grid");
  if (cfg.group_grid.empty() || cfg.screened_candidates < 1 || cfg.screen_rows < 1 || cfg.refit_candidates < 0 ||
      cfg.fill_groups < 1 || cfg.fill_groups > 256)
    return fail(status::invalid_argument, "sage needs a non-empty group_grid, screened_candidates >= 1, screen_rows >= 1, "
                                          "refit_candidates >= 0 and fill_groups in [1, 256]");
  for (int g : cfg.group_grid)
    if (g < 1 || g > 256) return fail(status::invalid_argument, "sage group counts must be in [1, 256]");

  quantized<format::sage_matrix> out;
  matrix_report& report = out.report;
  report.method = "sage";
  report.rows = rows;
  report.cols = cols;

  // W0: the weights with dead columns zeroed (their inputs are always 0), as GPTQ does.
  std::vector<float> w0(static_cast<std::size_t>(rows * cols));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) w0[static_cast<std::size_t>(r * cols + c)] = to_float(w_in(r, c));
  for (index_t c : factor.dead_columns)
    for (index_t r = 0; r < rows; ++r) w0[static_cast<std::size_t>(r * cols + c)] = 0.0f;
  const auto w0_view = make_matrix_view(static_cast<const float*>(w0.data()), rows, cols);
  std::vector<float> h_diag(static_cast<std::size_t>(cols));
  for (index_t c = 0; c < cols; ++c) h_diag[static_cast<std::size_t>(c)] = static_cast<float>(factor.h(c, c));
  const std::span<const float> grid_importance =
      cfg.grid_weight == sage_grid_weight::hessian_diag ? std::span<const float>(h_diag) : std::span<const float>{};

  // 1. Saliency scores per input channel and the candidate salient sets.
  auto t0 = clock::now();
  std::vector<float> u_diag(static_cast<std::size_t>(cols));
  for (index_t k = 0; k < cols; ++k)
    u_diag[static_cast<std::size_t>(factor.perm[static_cast<std::size_t>(k)])] = static_cast<float>(factor.u(k, k));
  const auto scored = cfg.metric == sage_saliency::hessian
                          ? saliency::score(saliency::hessian{}, w0_view, saliency::granularity::input_channel,
                                            make_vector_view(static_cast<const float*>(u_diag.data()), cols),
                                            saliency::no_input{}, exec)
                          : saliency::score(saliency::magnitude{}, w0_view, saliency::granularity::input_channel,
                                            saliency::no_input{}, saliency::no_input{}, exec);
  if (!scored.ok()) return scored.as_outcome();
  std::vector<saliency::split_rule> rules;
  for (double t : cfg.sigma_grid) rules.push_back(saliency::split_rule::sigmas(t));
  for (double p : cfg.fraction_grid) rules.push_back(saliency::split_rule::top(p));
  std::vector<std::vector<index_t>> salient_sets{{}};
  const bool word_rows = sage_word_rows(cfg, cols);
  const auto add_set = [&](saliency::split_rule rule) -> outcome {
    auto set = saliency::split(*scored, rule);
    if (!set.ok()) return set.as_outcome();
    if (std::ssize(set->indices) >= cols) return {};  // at least one binarized column
    if (std::find(salient_sets.begin(), salient_sets.end(), set->indices) == salient_sets.end())
      salient_sets.push_back(std::move(set->indices));
    return {};
  };
  for (const auto& rule : rules)
    if (auto ok = add_set(rule); !ok) return ok;
  if (cfg.fill_budget && cfg.target_bpw > 0)
    for (int bits : cfg.salient_bits_grid) {
      const auto fits = [&](index_t n) {
        const int g = static_cast<int>(std::min<index_t>(cfg.fill_groups, cols - n));
        return format::sage_bits(detail::candidate_shape(rows, cols, n, g, bits, word_rows)).full_bpw() <= cfg.target_bpw;
      };
      index_t lo = 0, hi = cols - 1;  // the largest n in [0, cols - 1] that fits (bits grow with n)
      if (!fits(1)) continue;
      while (lo < hi) {
        const index_t mid = lo + (hi - lo + 1) / 2;
        if (fits(mid)) lo = mid; else hi = mid - 1;
      }
      if (auto ok = add_set(saliency::split_rule::top(static_cast<double>(lo) / static_cast<double>(cols))); !ok)
        return ok;
    }
  if (cfg.snap_to_sign_rows && !word_rows) {  // 4-byte rows pad at most 31 bits: not worth more candidates
    const index_t row_bits = 128;
    const auto top = [&](index_t n) {
      return saliency::split_rule::top(static_cast<double>(n) / static_cast<double>(cols));
    };
    for (std::size_t i = 0, n = salient_sets.size(); i < n; ++i) {
      const index_t binarized = cols - std::ssize(salient_sets[i]);
      if (binarized % row_bits == 0) continue;
      const index_t fewer = cols - std::min(cols, (binarized + row_bits - 1) / row_bits * row_bits);
      const index_t more = cols - binarized / row_bits * row_bits;
      if (auto ok = add_set(top(fewer)); !ok) return ok;
      if (more < cols)
        if (auto ok = add_set(top(more)); !ok) return ok;
    }
  }
  report.times.saliency = detail::seconds_since(t0);

  // Candidates within the budget.
  t0 = clock::now();
  std::vector<detail::sage_candidate> candidates;
  double cheapest = std::numeric_limits<double>::infinity();
  for (const auto& set : salient_sets)
    for (int bits : set.empty() ? std::vector<int>{0} : cfg.salient_bits_grid)
      for (int g : cfg.group_grid) {
        if (g > cols - std::ssize(set)) continue;
        const double bpw =
            format::sage_bits(detail::candidate_shape(rows, cols, std::ssize(set), g, bits, word_rows)).full_bpw();
        cheapest = std::min(cheapest, bpw);
        if (cfg.target_bpw > 0 && bpw > cfg.target_bpw) continue;
        candidates.push_back({set, g, bits, 0.0});
      }
  if (candidates.empty())
    return fail(status::invalid_argument, "no sage configuration fits " + std::to_string(cfg.target_bpw) +
                                              " full bpw for a " + std::to_string(rows) + " x " + std::to_string(cols) +
                                              " matrix; the smallest reachable is " + std::to_string(cheapest));

  // Fit one candidate on a matrix `m` (W0 or its row sample): column groups, factorized scales, salient grids.
  const auto fit_candidate = [&](const detail::sage_candidate& cand,
                                 matrix_view<const float> m) -> result<detail::sage_fit> {
    const index_t m_rows = m.rows();
    detail::sage_fit fit;
    std::vector<std::uint8_t> salient_mask;
    if (!cand.salient.empty()) {
      salient_mask.assign(static_cast<std::size_t>(m_rows * cols), 0);
      for (index_t r = 0; r < m_rows; ++r)
        for (index_t c : cand.salient) salient_mask[static_cast<std::size_t>(r * cols + c)] = 1;
    }
    auto grouping = group::fit(group::column_groups{}, m, salient_mask, cand.groups);
    if (!grouping.ok()) return grouping.as_outcome();
    fit.groups = grouping->groups;
    fit.column_group.assign(grouping->column_group.begin(), grouping->column_group.end());
    for (index_t c : cand.salient) fit.column_group[static_cast<std::size_t>(c)] = -1;
    auto scales = quant::fit_factorized(m, fit.column_group, fit.groups, {}, h_diag, exec);
    if (!scales.has_value()) return scales.as_outcome();
    fit.scales = std::move(*scales);
    fit.salient_bits = cand.salient_bits;
    if (!cand.salient.empty()) {
      fit.salient_grid.resize(static_cast<std::size_t>(m_rows));
      const quant::uniform_config grid_cfg{.bits = cand.salient_bits, .group_size = 0, .symmetric = false, .mse = true};
      std::vector<float> importance;
      if (!grid_importance.empty())
        for (index_t c : cand.salient) importance.push_back(grid_importance[static_cast<std::size_t>(c)]);
      exec.parallel_for(m_rows, [&](index_t r) {
        std::vector<float> v;
        v.reserve(cand.salient.size());
        for (index_t c : cand.salient) v.push_back(m(r, c));
        fit.salient_grid[static_cast<std::size_t>(r)] = quant::fit_uniform_grid(
            make_vector_view(static_cast<const float*>(v.data()), std::ssize(v)), grid_cfg, importance);
      });
      for (const auto& grid : fit.salient_grid)
        if (!is_finite(grid.scale)) return fail(status::unsupported, "a salient scale exceeds the fp16 range");
    }
    return fit;
  };

  // Proxy of a fit without compensation: sum_ij (w - q)^2 H_jj over the rows of `m`.
  const auto proxy_error = [&](const detail::sage_fit& fit, matrix_view<const float> m) {
    std::vector<double> row_err(static_cast<std::size_t>(m.rows()));
    exec.parallel_for(m.rows(), [&](index_t r) {
      double e = 0;
      for (index_t c = 0; c < cols; ++c) {
        const float v = m(r, c);
        const std::int32_t g = fit.column_group[static_cast<std::size_t>(c)];
        float q;
        if (g < 0) {
          q = fit.salient_grid[static_cast<std::size_t>(r)].quantize(v);
        } else {
          const float s = fit.scales.scale(r, g);
          q = v >= 0.0f ? s : -s;
        }
        e += static_cast<double>(v - q) * static_cast<double>(v - q) * h_diag[static_cast<std::size_t>(c)];
      }
      row_err[static_cast<std::size_t>(r)] = e;
    });
    double total = 0;
    for (double e : row_err) total += e;
    return total;
  };

  // Screening runs on evenly spaced rows (at most screen_rows): a ranking needs far fewer rows than the fit.
  const index_t stride = (rows + cfg.screen_rows - 1) / cfg.screen_rows;
  std::vector<float> sample;
  for (index_t r = 0; r < rows; r += stride)
    sample.insert(sample.end(), w0.begin() + r * cols, w0.begin() + (r + 1) * cols);
  const auto sample_view = make_matrix_view(static_cast<const float*>(sample.data()), std::ssize(sample) / cols, cols);
  for (auto& cand : candidates) {
    auto fit = fit_candidate(cand, sample_view);
    if (!fit.ok()) return fit.as_outcome();
    cand.proxy = proxy_error(*fit, sample_view);
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const auto& a, const auto& b) { return a.proxy < b.proxy; });
  candidates.resize(std::min<std::size_t>(candidates.size(), static_cast<std::size_t>(cfg.screened_candidates)));
  report.times.search = detail::seconds_since(t0);

  // 4-5. Full quantization of the screened candidates; keep the lowest calibrated error.
  const std::vector<index_t> identity = [&] {
    std::vector<index_t> p(static_cast<std::size_t>(cols));
    for (index_t c = 0; c < cols; ++c) p[static_cast<std::size_t>(c)] = c;
    return p;
  }();
  // The calibrated error of a candidate: GPTQ's loss is tr((W0 - Q) H (W0 - Q)^T) for a column policy, and the
  // refit's change of it is known in closed form, so only the winner is packed and measured again.
  struct evaluated {
    std::size_t rank = 0;  // position in the screening order: the earlier of equal errors wins
    detail::sage_fit fit;
    std::vector<std::uint8_t> symbols;
    double error = 0;
  };
  const auto earlier = [](const evaluated& a, const evaluated& b) {
    return a.error < b.error || (a.error == b.error && a.rank < b.rank);
  };
  // The refit costs a (rows x cols) x (cols x cols) product per candidate, more than the compensation; it lowers
  // every candidate's error by about as much (2-3%), so it runs on the `refit_candidates` of least compensated
  // error only (0: all). Those wait here with their signs.
  const std::size_t kept_limit = !cfg.refit_row_scales       ? 1
                                 : cfg.refit_candidates > 0 ? static_cast<std::size_t>(cfg.refit_candidates)
                                                            : candidates.size();
  std::vector<evaluated> kept;

  // Candidates sharing a salient set share the reordered factor (a Cholesky of cols x cols): visit them together,
  // and hold only the factor of the set at hand.
  std::vector<std::size_t> visit(candidates.size()), first_of_set(candidates.size());
  for (std::size_t i = 0; i < visit.size(); ++i) {
    visit[i] = i;
    while (candidates[first_of_set[i]].salient != candidates[i].salient) ++first_of_set[i];
  }
  std::stable_sort(visit.begin(), visit.end(),
                   [&](std::size_t a, std::size_t b) { return first_of_set[a] < first_of_set[b]; });
  calib::hessian_factor reordered;
  const std::vector<index_t>* reordered_set = nullptr;
  for (const std::size_t rank : visit) {
    const detail::sage_candidate& cand = candidates[rank];
    t0 = clock::now();
    auto fitted = fit_candidate(cand, w0_view);
    if (!fitted.ok()) return fitted.as_outcome();
    evaluated e{rank, std::move(*fitted), {}, 0.0};
    if (cfg.compensate) {
      const bool last = cfg.order == sage_order::salient_last && !cand.salient.empty();
      if ((last || cfg.act_order) && (reordered_set == nullptr || *reordered_set != cand.salient)) {
        auto f = detail::reordered_factor(factor, last ? cand.salient : std::vector<index_t>{}, cfg.act_order, exec);
        if (!f.has_value()) return f.as_outcome();
        reordered = std::move(*f);
        reordered_set = &cand.salient;
      }
      const calib::hessian_factor& order = last || cfg.act_order ? reordered : factor;
      detail::sage_columns policy(e.fit, order.perm, rows, cols, last ? cols - std::ssize(cand.salient) : cols,
                                  grid_importance);
      auto run = compensate::gptq(w0_view, order, policy, {.block_size = cfg.block_size}, exec);
      if (!run.ok()) return run.as_outcome();
      e.symbols = policy.symbols();
      e.error = run->loss;
    } else {
      detail::sage_columns policy(e.fit, identity, rows, cols, cols, grid_importance);
      std::vector<float> q(w0.size());
      exec.parallel_for(rows, [&](index_t r) {
        for (index_t c = 0; c < cols; ++c) {
          const auto at = static_cast<std::size_t>(r * cols + c);
          policy.quantize_column(c, r, std::span<const float>(&w0[at], 1), std::span<float>(&q[at], 1));
        }
      });
      e.symbols = policy.symbols();
      e.error = calib::hessian_weighted_error(
          w0_view, make_matrix_view(static_cast<const float*>(q.data()), rows, cols), factor.h, exec);
    }
    const auto at = std::lower_bound(kept.begin(), kept.end(), e, earlier);
    if (static_cast<std::size_t>(at - kept.begin()) < kept_limit) {
      kept.insert(at, std::move(e));
      if (kept.size() > kept_limit) kept.pop_back();
    }
    report.times.quantize += detail::seconds_since(t0);
  }

  if (cfg.refit_row_scales) {
    // alpha_r minimising (d_r - alpha v_r) H (d_r - alpha v_r)^T, with v = sign * beta_g on binarized columns and
    // d = w0 - (salient part): alpha = d H v^T / v H v^T, rounded to fp16. The error changes by
    // (alpha^2 - alpha0^2) v H v^T - 2 (alpha - alpha0) d H v^T.
    t0 = clock::now();
    const index_t block_rows = calib::detail::product_block_rows(rows);
    const index_t blocks = (rows + block_rows - 1) / block_rows;
    const Eigen::MatrixXf h = factor.h.cast<float>();
    for (evaluated& e : kept) {
      detail::sage_fit& fit = e.fit;
      std::vector<double> change(static_cast<std::size_t>(blocks), 0.0);
      exec.parallel_for(blocks, [&](index_t b) {
        const index_t r0 = b * block_rows, nr = std::min(block_rows, rows - r0);
        Eigen::MatrixXf v = Eigen::MatrixXf::Zero(nr, cols), d(nr, cols);
        for (index_t i = 0; i < nr; ++i)
          for (index_t c = 0; c < cols; ++c) {
            const auto at = static_cast<std::size_t>((r0 + i) * cols + c);
            const std::int32_t g = fit.column_group[static_cast<std::size_t>(c)];
            if (g < 0) {
              d(i, c) = w0[at] - fit.salient_grid[static_cast<std::size_t>(r0 + i)].value(e.symbols[at]);
            } else {
              const float beta = fit.scales.group[static_cast<std::size_t>(g)];
              d(i, c) = w0[at];
              v(i, c) = e.symbols[at] ? beta : -beta;
            }
          }
        const Eigen::MatrixXf vh = v * h;
        for (index_t i = 0; i < nr; ++i) {
          const double a = vh.row(i).dot(v.row(i)), num = vh.row(i).dot(d.row(i));
          if (!(a > 0)) continue;
          float& alpha = fit.scales.row[static_cast<std::size_t>(r0 + i)];
          const double old_alpha = alpha;
          alpha = round_to_fp16(static_cast<float>(num / a));
          change[static_cast<std::size_t>(b)] += (alpha * static_cast<double>(alpha) - old_alpha * old_alpha) * a -
                                                 2 * (alpha - old_alpha) * num;
        }
      });
      for (double c : change) e.error += c;
    }
    report.times.quantize += detail::seconds_since(t0);
  }
  const evaluated& best = *std::min_element(kept.begin(), kept.end(), earlier);

  // Pack the winner, decode it, and measure the exact calibrated error of what is stored.
  t0 = clock::now();
  const detail::sage_fit& fit = best.fit;
  format::sage_spec spec;
  spec.rows = rows;
  spec.cols = cols;
  spec.salient_columns = candidates[best.rank].salient;
  spec.salient_bits = std::max(candidates[best.rank].salient_bits, 2);
  spec.groups = fit.groups;
  spec.column_group = fit.column_group;
  spec.word_rows = word_rows;
  for (auto& g : spec.column_group) g = std::max(g, std::int32_t{0});
  auto builder = format::sage_builder::create(spec);
  if (!builder.ok()) return builder.as_outcome();
  for (index_t r = 0; r < rows; ++r) builder->set_row_scale(0, r, fit.scales.row[static_cast<std::size_t>(r)]);
  for (int g = 0; g < fit.groups; ++g) builder->set_group_scale(0, g, fit.scales.group[static_cast<std::size_t>(g)]);
  for (index_t r = 0; r < rows; ++r) {
    if (!spec.salient_columns.empty()) builder->set_salient_grid(r, fit.salient_grid[static_cast<std::size_t>(r)]);
    for (index_t c = 0; c < cols; ++c) {
      const std::uint8_t symbol = best.symbols[static_cast<std::size_t>(r * cols + c)];
      if (fit.column_group[static_cast<std::size_t>(c)] < 0)
        builder->set_salient_code(r, c, symbol);
      else
        builder->set_sign(0, r, c, symbol != 0);
    }
  }
  auto packed = std::move(*builder).finish();
  if (!packed.ok()) return packed.as_outcome();
  out.packed = std::move(*packed);
  out.dequantized.resize(static_cast<std::size_t>(rows * cols));
  format::decode(out.packed.view(), make_matrix_view(out.dequantized.data(), rows, cols));
  report.groups = fit.groups;
  report.salient_fraction = static_cast<double>(spec.salient_columns.size()) / static_cast<double>(cols);
  report.bits = out.packed.bits();
  report.hessian_error = calib::hessian_weighted_error(w0_view, out.dequantized_view(), factor.h, exec);
  const float zero = 0.0f;
  const matrix_view<const float> zeros{&zero, {rows, cols}, {0, 0}};  // stride 0: W H W^T without a copy
  const double reference = calib::hessian_weighted_error(w0_view, zeros, factor.h, exec);
  report.relative_error = reference > 0 ? std::sqrt(report.hessian_error / reference) : 0.0;
  report.times.pack = detail::seconds_since(t0);
  return out;
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
