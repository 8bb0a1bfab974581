#pragma once
/// @file allocate.hpp
/// TOGA's sensitivity profile and the budgeted allocation computed from it.
///
/// The profile holds, per decoder layer, end-to-end losses (the KL divergence of the model's next-token
/// distribution from the full-precision one on calibration windows) of single changes to the full-precision model:
/// keeping g KV groups, keeping a level of MLP channels, and quantizing one input-channel block of one linear layer
/// at one precision (an engine may split a linear's measured loss among its blocks by their calibrated errors). An
/// engine measures it once (examples/llama/toga.hpp); every budget is then allocated from it, so k budgets cost one
/// profiling pass.
///
/// The loss of a configuration is predicted additively (the usual second-order argument: near the full-precision
/// optimum, small independent perturbations add):
///     sum_l attention_loss[g_l] + mlp_loss[level_l] + sum_{l,k,b} quant_loss[k][b, p_lkb] * kept_fraction(k)
/// where a pruned linear's quantization loss shrinks with the weights it keeps.
///
/// `allocate` minimizes that prediction under the full-bits budget: a Lagrangian relaxation (each unit — a layer's
/// attention or MLP — picks its prune level and precisions minimizing loss + lambda * bits, a linear's block
/// precisions by dynamic programming over its runs; lambda bisected to the
/// smallest value that fits), then a greedy fill spends what the relaxation leaves (the relaxation only reaches
/// points of the lower convex hull) with the single changes of best loss decrease per bit that still fit, and pairs
/// of changes trade bits between units while that lowers the loss.
/// Deterministic; no threads; standard library only.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../core/status.hpp"
#include "decision.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace toga {

struct layer_profile {
  std::vector<index_t> group_order;    ///< KV groups, most important first (kv_heads entries)
  std::vector<index_t> channel_order;  ///< intermediate channels, most important first (intermediate entries)
  std::vector<double> attention_loss;  ///< [g] for g kept groups, g in [0, kv_heads]; [kv_heads] = 0; [0] unused
  std::vector<double> mlp_loss;        ///< per channel level; [0] = 0
  /// [linear][block * precisions + precision] with the layer unpruned; +infinity where the precision cannot
  /// quantize that block.
  std::array<std::vector<double>, linears_per_layer> quant_loss;
};

struct profile {
  model_shape shape;
  std::vector<precision> precisions;
  std::vector<index_t> channel_levels;  ///< kept channel counts, strictly descending, [0] = intermediate
  int column_blocks = 1;                ///< input-channel blocks per linear, in [1, max_column_blocks]
  /// [linear][precision]: the fewest adjacent blocks a run at that precision needs (a precision's fixed costs, e.g.
  /// sage's per-row scales, may not fit a narrow run); an empty table means 1 everywhere.
  std::array<std::vector<int>, linears_per_layer> min_run_blocks;
  std::vector<layer_profile> layers;

  [[nodiscard]] int min_run(linear k, int pi) const {
    const auto& t = min_run_blocks[static_cast<std::size_t>(k)];
    return t.empty() ? 1 : t[static_cast<std::size_t>(pi)];
  }

  [[nodiscard]] int menu() const noexcept { return static_cast<int>(precisions.size()); }
  /// The unpruned loss of block b of linear k of layer l at precision pi.
  [[nodiscard]] double block_loss(index_t l, linear k, int b, int pi) const {
    return layers[static_cast<std::size_t>(l)].quant_loss[static_cast<std::size_t>(k)]
                 [static_cast<std::size_t>(b * menu() + pi)];
  }
};

/// invalid_argument unless the profile's tables have the sizes its shape and menu imply, losses are finite (quant
/// losses may be +infinity), orders are permutations and the channel levels descend from intermediate to >= 1.
inline outcome check_profile(const profile& p) {
  if (auto ok = check_model_shape(p.shape); !ok) return ok;
  const model_shape& s = p.shape;
  const auto bad = [](const std::string& what) { return fail(status::invalid_argument, "TOGA profile: " + what); };
  if (p.precisions.empty()) return bad("the precision menu is empty");
  if (p.column_blocks < 1 || p.column_blocks > max_column_blocks)
    return bad("column_blocks must be in [1, " + std::to_string(max_column_blocks) + "]");
  for (const auto& t : p.min_run_blocks)
    if (!t.empty() && (std::ssize(t) != p.menu() ||
                       std::any_of(t.begin(), t.end(), [&](int n) { return n < 1 || n > p.column_blocks; })))
      return bad("min_run_blocks needs one entry in [1, column_blocks] per precision");
  const auto& levels = p.channel_levels;
  if (levels.empty() || levels.front() != s.intermediate || levels.back() < 1 ||
      std::adjacent_find(levels.begin(), levels.end(), std::less_equal<>()) != levels.end())
    return bad("channel levels must descend strictly from intermediate_size to >= 1");
  if (std::ssize(p.layers) != s.layers) return bad("needs one entry per layer");
  const auto is_permutation = [](std::vector<index_t> v, index_t n) {
    std::sort(v.begin(), v.end());
    index_t i = 0;
    return std::ssize(v) == n && std::all_of(v.begin(), v.end(), [&](index_t x) { return x == i++; });
  };
  for (const layer_profile& l : p.layers) {
    if (!is_permutation(l.group_order, s.kv_heads) || !is_permutation(l.channel_order, s.intermediate))
      return bad("group and channel orders must be permutations");
    if (std::ssize(l.attention_loss) != s.kv_heads + 1 || l.mlp_loss.size() != p.channel_levels.size())
      return bad("attention / MLP loss tables have the wrong size");
    for (std::size_t g = 1; g < l.attention_loss.size(); ++g)
      if (!std::isfinite(l.attention_loss[g])) return bad("attention losses must be finite");
    for (double v : l.mlp_loss)
      if (!std::isfinite(v)) return bad("MLP losses must be finite");
    for (const auto& q : l.quant_loss) {
      if (std::ssize(q) != p.column_blocks * p.menu())
        return bad("quantization loss tables need one entry per input block and precision");
      for (int b = 0; b < p.column_blocks; ++b)
        if (std::none_of(q.begin() + b * p.menu(), q.begin() + (b + 1) * p.menu(),
                         [](double v) { return std::isfinite(v); }))
          return bad("every input block of every linear layer needs a precision that can quantize it");
      for (double v : q)
        if (std::isnan(v) || v == -std::numeric_limits<double>::infinity())
          return bad("quantization losses must be finite or +inf");
    }
  }
  return {};
}

/// Kept channels of level `level` of layer `l`, or kept KV groups: the first n of the importance order, ascending.
inline std::vector<index_t> kept_first(const std::vector<index_t>& order, index_t n) {
  std::vector<index_t> kept(order.begin(), order.begin() + n);
  std::sort(kept.begin(), kept.end());
  return kept;
}

namespace detail {

/// Fraction of linear k's weights that a decision keeps.
inline double kept_fraction(const profile& p, const layer_decision& d, linear k) {
  return is_attention(k) ? static_cast<double>(d.groups) / static_cast<double>(p.shape.kv_heads)
                         : static_cast<double>(p.channel_levels[static_cast<std::size_t>(d.channel_level)]) /
                               static_cast<double>(p.shape.intermediate);
}

inline double quant_loss(const profile& p, index_t l, const layer_decision& d, linear k) {
  const block_precisions& bp = d.precision[static_cast<std::size_t>(k)];
  double loss = 0;
  for (int b = 0; b < p.column_blocks; ++b) loss += p.block_loss(l, k, b, bp[b]);
  return loss * kept_fraction(p, d, k);
}

/// Full bits of a rows x cols run at precision pi, the boundary included unless it is the first run.
inline std::uint64_t run_bits(const profile& p, index_t rows, index_t cols, int pi, bool first) {
  return p.precisions[static_cast<std::size_t>(pi)].bits_bound(rows, cols) + (first ? 0 : run_boundary_bits);
}

/// Whether every run of d's blocks of linear k spans at least its precision's min_run blocks.
inline bool runs_allowed(const profile& p, const layer_decision& d, linear k) {
  const block_precisions& bp = d.precision[static_cast<std::size_t>(k)];
  for (int b = 0; b < p.column_blocks;) {
    int e = b + 1;
    while (e < p.column_blocks && bp[e] == bp[b]) ++e;
    if (e - b < p.min_run(k, bp[b])) return false;
    b = e;
  }
  return true;
}

inline std::uint64_t linear_bits(const profile& p, const layer_decision& d, linear k) {
  const auto [rows, cols] =
      p.shape.linear_shape(k, d.groups, p.channel_levels[static_cast<std::size_t>(d.channel_level)]);
  std::uint64_t bits = 0;
  bool first = true;
  for (const precision_run& r : precision_runs(d.precision[static_cast<std::size_t>(k)], p.column_blocks, cols)) {
    bits += run_bits(p, rows, r.end - r.begin, r.precision, first);
    first = false;
  }
  return bits;
}

}  // namespace detail

/// The predicted loss of one layer's decision (see the top).
inline double predicted_layer_loss(const profile& p, index_t l, const layer_decision& d) {
  const layer_profile& lp = p.layers[static_cast<std::size_t>(l)];
  double loss = lp.attention_loss[static_cast<std::size_t>(d.groups)] +
                lp.mlp_loss[static_cast<std::size_t>(d.channel_level)];
  for (linear k : all_linears) loss += detail::quant_loss(p, l, d, k);
  return loss;
}

inline double predicted_loss(const profile& p, const configuration& c) {
  double loss = 0;
  for (std::size_t l = 0; l < c.size(); ++l) loss += predicted_layer_loss(p, static_cast<index_t>(l), c[l]);
  return loss;
}

/// Full bits of one layer's decision: its packed matrices (exact or bounded, decision.hpp) and its masks.
inline std::uint64_t layer_bits(const profile& p, const layer_decision& d) {
  std::uint64_t bits = p.shape.mask_bits_per_layer();
  for (linear k : all_linears) bits += detail::linear_bits(p, d, k);
  return bits;
}

inline std::uint64_t configuration_bits(const profile& p, const configuration& c) {
  std::uint64_t bits = 0;
  for (const layer_decision& d : c) bits += layer_bits(p, d);
  return bits;
}

/// The largest bit count a budget of `target_bpw` full bits per source weight allows.
inline std::uint64_t budget_bits(const profile& p, double target_bpw) {
  return static_cast<std::uint64_t>(std::floor(target_bpw * static_cast<double>(p.shape.source_weights())));
}

/// Whether a decision is in the space: groups in [1, kv_heads], a valid level, available precisions.
inline bool valid_decision(const profile& p, index_t l, const layer_decision& d) {
  if (d.groups < 1 || d.groups > p.shape.kv_heads || d.channel_level < 0 ||
      d.channel_level >= std::ssize(p.channel_levels))
    return false;
  for (linear k : all_linears) {
    for (int b = 0; b < p.column_blocks; ++b) {
      const int pi = d.precision[static_cast<std::size_t>(k)][b];
      if (pi < 0 || pi >= p.menu()) return false;
    }
    if (!detail::runs_allowed(p, d, k) || !std::isfinite(detail::quant_loss(p, l, d, k))) return false;
  }
  return true;
}

/// Every decision that differs from `d` in one coordinate (one block's precision, one linear's precision on every
/// block, the kept groups, the channel level) and is valid, in a fixed order.
inline std::vector<layer_decision> neighbours(const profile& p, index_t l, const layer_decision& d) {
  std::vector<layer_decision> out;
  const auto push = [&](layer_decision n) {
    if (n != d && valid_decision(p, l, n)) out.push_back(n);
  };
  for (linear k : all_linears)
    for (int pi = 0; pi < p.menu(); ++pi) {
      layer_decision n = d;
      n.precision[static_cast<std::size_t>(k)] = pi;
      push(n);
      for (int b = 0; b < p.column_blocks && p.column_blocks > 1; ++b) {
        n = d;
        n.precision[static_cast<std::size_t>(k)].set(b, pi, p.column_blocks);
        push(n);
      }
    }
  for (index_t g = 1; g <= p.shape.kv_heads; ++g) {
    layer_decision n = d;
    n.groups = g;
    push(n);
  }
  for (int level = 0; level < std::ssize(p.channel_levels); ++level) {
    layer_decision n = d;
    n.channel_level = level;
    push(n);
  }
  return out;
}

namespace detail {

/// One layer's decision replaced by one of its neighbours; layer < 0 for none.
struct single_change {
  index_t layer = -1;
  layer_decision decision{};
};

/// The single change of greatest `rank(loss_delta, bits_before, bits_after)` (per layer, its predicted loss and
/// bits), layers marked in `frozen` left alone; rank returns std::nullopt for changes not allowed. The first of
/// equal ranks wins, so the choice is deterministic.
template <class Rank>
single_change best_single_change(const profile& p, const configuration& c, const std::vector<bool>* frozen,
                                 Rank&& rank) {
  std::remove_cvref_t<decltype(rank(0.0, std::uint64_t{}, std::uint64_t{}))> best;
  single_change out;
  for (index_t l = 0; l < std::ssize(c); ++l) {
    if (frozen && (*frozen)[static_cast<std::size_t>(l)]) continue;
    const layer_decision& d = c[static_cast<std::size_t>(l)];
    const double loss = predicted_layer_loss(p, l, d);
    const std::uint64_t bits = layer_bits(p, d);
    for (const layer_decision& n : neighbours(p, l, d)) {
      const auto r = rank(predicted_layer_loss(p, l, n) - loss, bits, layer_bits(p, n));
      if (r && (!best || *r > *best)) best = r, out = {l, n};
    }
  }
  return out;
}

/// Applies `change` to `c`, whose bits were `bits`; returns the new bit count.
inline std::uint64_t apply_change(const profile& p, configuration& c, const single_change& change, std::uint64_t bits) {
  layer_decision& slot = c[static_cast<std::size_t>(change.layer)];
  bits = bits - layer_bits(p, slot) + layer_bits(p, change.decision);
  slot = change.decision;
  return bits;
}

}  // namespace detail

/// Greedy moves under the predicted loss, leaving the layers marked in `frozen` (if given) alone. `repair`: while
/// over budget, apply the single change of least loss increase per saved bit; false when no change saves bits.
/// `fill`: while some single change lowers the loss and fits the budget, apply the one of largest loss decrease per
/// added bit (a change that also saves bits ranks first).
inline bool repair_to_budget(const profile& p, configuration& c, std::uint64_t budget,
                             const std::vector<bool>* frozen = nullptr) {
  for (std::uint64_t bits = configuration_bits(p, c); bits > budget;) {
    const auto change = detail::best_single_change(
        p, c, frozen, [](double loss_delta, std::uint64_t before, std::uint64_t after) -> std::optional<double> {
          if (after >= before) return std::nullopt;
          return -loss_delta / static_cast<double>(before - after);
        });
    if (change.layer < 0) return false;
    bits = detail::apply_change(p, c, change, bits);
  }
  return true;
}

inline void fill_budget(const profile& p, configuration& c, std::uint64_t budget,
                        const std::vector<bool>* frozen = nullptr) {
  for (std::uint64_t bits = configuration_bits(p, c);;) {
    // Ranked by (saves bits, then loss decrease; or loss decrease per added bit): saving both beats everything.
    const auto change = detail::best_single_change(
        p, c, frozen,
        [&](double loss_delta, std::uint64_t before, std::uint64_t after) -> std::optional<std::pair<bool, double>> {
          if (loss_delta >= 0 || bits - before + after > budget) return std::nullopt;  // strict decreases that fit
          if (after <= before) return std::pair{true, -loss_delta};
          return std::pair{false, -loss_delta / static_cast<double>(after - before)};
        });
    if (change.layer < 0) return;
    bits = detail::apply_change(p, c, change, bits);
  }
}

/// Pairs of changes: while two single changes together (in two layers, or two coordinates of one layer) lower the
/// loss and fit the budget, apply the pair of largest loss decrease, then fill again. This trades bits between
/// units, which single changes at a full budget cannot (one of the two alone would not fit or would raise the loss).
inline void exchange_within_budget(const profile& p, configuration& c, std::uint64_t budget) {
  struct change {
    index_t layer;
    layer_decision decision;
    double loss_delta;
    std::int64_t bits_delta;
  };
  for (;;) {
    fill_budget(p, c, budget);
    const auto bits = static_cast<std::int64_t>(configuration_bits(p, c));
    std::vector<change> singles;
    for (index_t l = 0; l < std::ssize(c); ++l) {
      const layer_decision& d = c[static_cast<std::size_t>(l)];
      const double loss = predicted_layer_loss(p, l, d);
      const auto b = static_cast<std::int64_t>(layer_bits(p, d));
      for (const layer_decision& n : neighbours(p, l, d))
        singles.push_back(
            {l, n, predicted_layer_loss(p, l, n) - loss, static_cast<std::int64_t>(layer_bits(p, n)) - b});
    }
    double best = -1e-12;  // strict decreases only
    configuration next;
    const auto consider = [&](double loss_delta, std::int64_t bits_delta, auto&& apply) {
      if (loss_delta < best && bits + bits_delta <= static_cast<std::int64_t>(budget)) {
        best = loss_delta;
        next = c;
        apply(next);
      }
    };
    for (std::size_t i = 0; i < singles.size(); ++i) {
      const change& a = singles[i];
      for (std::size_t j = i + 1; j < singles.size(); ++j) {
        const change& b = singles[j];
        if (b.layer == a.layer) continue;
        consider(a.loss_delta + b.loss_delta, a.bits_delta + b.bits_delta, [&](configuration& n) {
          n[static_cast<std::size_t>(a.layer)] = a.decision;
          n[static_cast<std::size_t>(b.layer)] = b.decision;
        });
      }
      // Two coordinates of one layer: a neighbour of the neighbour.
      const layer_decision& old = c[static_cast<std::size_t>(a.layer)];
      const double loss = predicted_layer_loss(p, a.layer, old);
      const auto b = static_cast<std::int64_t>(layer_bits(p, old));
      for (const layer_decision& n : neighbours(p, a.layer, a.decision))
        consider(predicted_layer_loss(p, a.layer, n) - loss, static_cast<std::int64_t>(layer_bits(p, n)) - b,
                 [&](configuration& next_c) { next_c[static_cast<std::size_t>(a.layer)] = n; });
    }
    if (next.empty()) return;
    c = std::move(next);
  }
}

namespace detail {

/// Sets d.precision[k] to the block precisions minimizing quant_loss + lambda * linear_bits (d's prune levels fixed)
/// and returns that minimum: dynamic programming over runs, best[j] = min over i < j and pi of best[i] + the cost
/// of blocks [i, j) as one run at pi. Exact: adjacent runs of one precision cost at least their merge, so allowing
/// them changes nothing (and a merged run meets min_run_blocks whenever its pieces do).
inline double lagrangian_linear(const profile& p, index_t l, layer_decision& d, linear k, double lambda) {
  const int blocks = p.column_blocks;
  const auto [rows, cols] =
      p.shape.linear_shape(k, d.groups, p.channel_levels[static_cast<std::size_t>(d.channel_level)]);
  const std::vector<index_t> bounds = column_block_bounds(cols, blocks);
  const double kept = kept_fraction(p, d, k);
  constexpr double inf = std::numeric_limits<double>::infinity();
  std::vector<double> best(static_cast<std::size_t>(blocks) + 1, inf);
  std::vector<std::pair<int, int>> from(static_cast<std::size_t>(blocks) + 1, {0, 0});  // (run start, precision)
  best[0] = 0;
  for (int j = 1; j <= blocks; ++j)
    for (int i = 0; i < j; ++i)
      for (int pi = 0; pi < p.menu(); ++pi) {
        if (j - i < p.min_run(k, pi)) continue;
        double loss = 0;
        for (int b = i; b < j; ++b) loss += p.block_loss(l, k, b, pi);
        const index_t run_cols = bounds[static_cast<std::size_t>(j)] - bounds[static_cast<std::size_t>(i)];
        const double c = best[static_cast<std::size_t>(i)] + loss * kept +
                         lambda * static_cast<double>(run_bits(p, rows, run_cols, pi, i == 0));
        if (c < best[static_cast<std::size_t>(j)])
          best[static_cast<std::size_t>(j)] = c, from[static_cast<std::size_t>(j)] = {i, pi};
      }
  block_precisions& out = d.precision[static_cast<std::size_t>(k)];
  for (int j = blocks; j > 0;) {
    const auto [i, pi] = from[static_cast<std::size_t>(j)];
    for (int b = j - 1; b >= i; --b) out.set(b, pi, blocks);
    j = i;
  }
  return best[static_cast<std::size_t>(blocks)];
}

/// The Lagrangian choice of one layer for multiplier lambda: per unit (attention: groups; MLP: channel level) the
/// prune level and precisions minimizing loss + lambda * bits. Units and linears separate, so this is exact.
inline layer_decision lagrangian_layer(const profile& p, index_t l, double lambda) {
  const layer_profile& lp = p.layers[static_cast<std::size_t>(l)];
  layer_decision best{};
  const auto unit = [&](std::initializer_list<linear> ks, int levels, auto&& set_level, auto&& prune_loss) {
    double best_cost = std::numeric_limits<double>::infinity();
    for (int level = 0; level < levels; ++level) {
      layer_decision d = best;
      set_level(d, level);
      double cost = prune_loss(level);
      for (linear k : ks) cost += lagrangian_linear(p, l, d, k, lambda);
      if (cost < best_cost) {
        best_cost = cost;
        set_level(best, level);
        for (linear k : ks) best.precision[static_cast<std::size_t>(k)] = d.precision[static_cast<std::size_t>(k)];
      }
    }
  };
  best.groups = p.shape.kv_heads;
  unit({linear::q, linear::k, linear::v, linear::o}, static_cast<int>(p.shape.kv_heads),
       [&](layer_decision& d, int level) { d.groups = p.shape.kv_heads - level; },
       [&](int level) { return lp.attention_loss[static_cast<std::size_t>(p.shape.kv_heads - level)]; });
  unit({linear::gate, linear::up, linear::down}, static_cast<int>(p.channel_levels.size()),
       [](layer_decision& d, int level) { d.channel_level = level; },
       [&](int level) { return lp.mlp_loss[static_cast<std::size_t>(level)]; });
  return best;
}

inline configuration lagrangian(const profile& p, double lambda) {
  configuration c;
  for (index_t l = 0; l < p.shape.layers; ++l) c.push_back(lagrangian_layer(p, l, lambda));
  return c;
}

}  // namespace detail

/// The configuration of least predicted loss within `target_bpw` full bits per source weight (see the top).
/// The statuses of check_profile; invalid_argument when even the cheapest configuration exceeds the budget (the
/// message says the smallest reachable bpw).
inline result<configuration> allocate(const profile& p, double target_bpw) {
  if (auto ok = check_profile(p); !ok) return ok;
  if (!(target_bpw > 0) || !std::isfinite(target_bpw))
    return fail(status::invalid_argument, "TOGA needs a positive finite target bpw");
  const std::uint64_t budget = budget_bits(p, target_bpw);
  // lambda so large that bits dominate: the cheapest configuration (up to loss ties).
  constexpr double lambda_max = 1e12;
  configuration cheapest = detail::lagrangian(p, lambda_max);
  if (configuration_bits(p, cheapest) > budget) {
    const double reachable =
        static_cast<double>(configuration_bits(p, cheapest)) / static_cast<double>(p.shape.source_weights());
    return fail(status::invalid_argument, "TOGA: budget " + std::to_string(target_bpw) +
                                              " full bpw is below the smallest reachable " + std::to_string(reachable));
  }
  configuration c = detail::lagrangian(p, 0);
  if (configuration_bits(p, c) > budget) {
    // Bisect log(lambda) for the smallest multiplier whose choice fits.
    double lo = 1e-30, hi = lambda_max;
    for (int i = 0; i < 100; ++i) {
      const double mid = std::sqrt(lo * hi);
      (configuration_bits(p, detail::lagrangian(p, mid)) > budget ? lo : hi) = mid;
    }
    c = detail::lagrangian(p, hi);
  }
  exchange_within_budget(p, c, budget);
  return c;
}

}  // namespace toga
SAGEPTQ_NAMESPACE_END
