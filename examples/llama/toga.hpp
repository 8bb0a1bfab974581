#pragma once
// TOGA for the reference engine: joint structured pruning and mixed precision chosen to minimize the error of the
// whole model under a full-bits budget (sageptq/toga/; docs/algorithms.md §2).
//
//  1. One full-precision pass over the calibration windows records each decoder layer's input on the scoring
//     windows (the first `score_windows`), the Hessian of every linear layer's input (q/k/v share one, gate/up
//     share one), and the model's next-token log-probabilities on the scoring windows.
//  2. Profiling: per layer, the KL divergence from those log-probabilities when only that layer changes — each KV
//     group removed alone (the importance order of groups), the least important 1..kv_heads-1 groups removed, MLP
//     channels cut to each level (channels ranked by E[h_j^2] * ||down[:, j]||^2, the energy they add to the
//     residual stream), and each linear quantized at each precision of the menu. A change to layer l reruns only
//     layers l.. from the recorded input. With column_blocks > 1 a linear's loss at a precision is split among its
//     input-channel blocks in proportion to their calibrated errors when its blocks are quantized as separate runs
//     (pipeline/column_runs.hpp: each block's term of the exact decomposition of tr(E H E^T)).
//  3. Per budget: toga::allocate (Lagrangian + greedy fill on the predicted loss), then toga::refine scoring
//     candidates end to end (every layer pruned and quantized, KL on the scoring windows).
//  4. The chosen configuration's packed matrices, pruned structures absent (q/k/v/o/gate/up/down of the kept
//     shapes; the engine infers kept heads and channels from those shapes), with exact bit counts.
//
// A linear whose blocks have several precisions is quantized run by run (adjacent blocks of one precision form a
// run), each run's error compensated on the runs after it, and stored as column parts (io::column_range).
//
// Quantization of a (layer, linear, block precisions, prune level) uses the full-precision model's input statistics (for
// o and down restricted to the kept columns) and is cached, so profiling, every score and every budget share it:
// the calibration pass runs once for all budgets. (True-sequential statistics would make each candidate's
// quantization depend on the layers before it, and then nothing could be cached across candidates. Quantizing the
// chosen configuration once more with the compressed model's own statistics was tried and not kept: on stories260k
// it lowered the KL on the scoring windows in some budgets but not the held-out perplexity, for a calibration pass
// per budget.)
//
// Memory: the calibration hidden states (windows x context x hidden floats), per layer the input of the scoring
// windows and the Hessians, the scoring windows' log-probabilities (score_windows x context x vocab floats), and the
// packed matrices of the cache. Threading: the caller's executor; results do not depend on the thread count.

#include <sageptq/calib/hessian.hpp>
#include <sageptq/io/quantized_model.hpp>
#include <sageptq/pipeline/calibrate.hpp>
#include <sageptq/pipeline/column_runs.hpp>
#include <sageptq/pipeline/quantize_matrix.hpp>
#include <sageptq/toga/search.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.hpp"
#include "packed_linear.hpp"
#include "quantize.hpp"

namespace llama {

namespace toga = sageptq::toga;

struct toga_options {
  std::vector<toga::precision> precisions = toga::default_precisions();
  /// MLP channel levels below all channels, as fractions of intermediate_size (descending).
  std::vector<double> channel_fractions = {0.875, 0.75, 0.625, 0.5, 0.375, 0.25};
  index_t channel_multiple = 8;  ///< kept channel counts are rounded to a multiple (SIMD-friendly shapes)
  int column_blocks = 1;         ///< input-channel blocks per linear, each with its own precision (toga/decision.hpp)
  index_t score_windows = 4;     ///< calibration windows (the first ones) on which the KL is measured
  toga::refine_options refine{};
  sageptq::calib::prepare_options prepare{};
  index_t chunk_sequences = 8;   ///< windows run through a decoder layer at once
  /// Called as work advances: (what, done, total).
  std::function<void(const std::string& stage, index_t done, index_t total)> progress;
};

/// The decision space's view of a model's dimensions.
inline toga::model_shape toga_shape(const sageptq::io::llama_config& c) {
  return {c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
          c.intermediate_size};
}

/// One budget's outcome.
struct toga_result {
  toga::configuration configuration;
  std::vector<sageptq::io::quantized_tensor> tensors;  ///< layer by layer, q k v o gate up down, pruned shapes
  sageptq::format::bit_breakdown packed_bits;          ///< exact, of `tensors`
  std::uint64_t mask_bits = 0;                         ///< kept-structure masks (toga/decision.hpp)
  std::uint64_t boundary_bits = 0;                     ///< first columns of the column parts after the first
  std::uint64_t source_weights = 0;                    ///< linear weights of the unpruned model
  double predicted_loss = 0;                           ///< the profile's prediction for `configuration`
  double allocated_score = 0, score = 0;               ///< KL on the scoring windows: allocation, final
  int evaluations = 0;                                 ///< end-to-end scores the refinement computed
  int slack_fills = 0;                                 ///< accepted rounds of spend_slack

  [[nodiscard]] double full_bpw() const noexcept {
    return static_cast<double>(packed_bits.full_bits() + mask_bits + boundary_bits) /
           static_cast<double>(source_weights);
  }
};

/// A linear layer that forwards to another (unchanged layers of a temporarily swapped decoder layer).
class borrowed_linear final : public linear_layer {
 public:
  explicit borrowed_linear(const linear_layer& target) : target_(target) {}
  [[nodiscard]] index_t in_features() const noexcept override { return target_.in_features(); }
  [[nodiscard]] index_t out_features() const noexcept override { return target_.out_features(); }
  void forward(matrix_view<const float> x, matrix_view<float> y, const thread_executor& exec) const override {
    target_.forward(x, y, exec);
  }

 private:
  const linear_layer& target_;
};

class toga_session {
 public:
  /// Runs steps 1 and 2 on the full-precision model `m` (every linear dense; it and `windows` are borrowed for
  /// the session's lifetime; `m` changes only inside calls and is restored before they return). invalid_argument
  /// for options out of range, no windows, windows longer than the context, or a model whose layers are not dense.
  static result<toga_session> create(model& m, const sageptq::pipeline::token_windows& windows, toga_options opt,
                                     const thread_executor& exec) {
    const auto& cfg = m.config();
    if (windows.count() < 1 || windows.context > cfg.max_position_embeddings || opt.score_windows < 1 ||
        opt.chunk_sequences < 1 || opt.channel_multiple < 1 || opt.precisions.empty() || opt.column_blocks < 1 ||
        opt.column_blocks > toga::max_column_blocks)
      return sageptq::fail(status::invalid_argument, "TOGA needs calibration windows of at most " +
                                                         std::to_string(cfg.max_position_embeddings) +
                                                         " tokens, score_windows, chunk_sequences and "
                                                         "channel_multiple >= 1, a precision menu and column_blocks "
                                                         "in [1, " + std::to_string(toga::max_column_blocks) + "]");
    for (index_t l = 0; l < m.layer_count(); ++l)
      for (int k = 0; k < linear_kinds; ++k)
        if (!m.layer(l).dense(static_cast<linear_kind>(k)))
          return sageptq::fail(status::invalid_argument, "TOGA starts from the full-precision model: " +
                                                             weight_name(l, static_cast<linear_kind>(k)) +
                                                             " is not dense");
    toga_session s(m, windows, std::move(opt), exec);
    if (auto ok = s.calibrate(); !ok) return ok;
    if (auto ok = s.measure_profile(); !ok) return ok;
    return s;
  }

  [[nodiscard]] const toga::profile& profile() const noexcept { return profile_; }
  [[nodiscard]] index_t score_window_count() const noexcept { return scored_; }

  /// KL of the configured model (every layer pruned and quantized as `c` says) from the full-precision model on
  /// the scoring windows. The quantizers' statuses; invalid_argument for an invalid configuration.
  result<double> score(const toga::configuration& c) {
    auto matrices = matrices_of(c);
    if (!matrices.ok()) return matrices.as_outcome();
    return kl_of(*matrices);
  }

  /// Steps 3 and 4 for one budget, then the bits left unspent spent (spend_slack). allocate's, refine's and the
  /// quantizers' statuses; numerical_issue (with the result) if exact bits exceed the budget, which the bounds of
  /// toga/decision.hpp exclude.
  result<toga_result> compress(double target_bpw) {
    auto start = toga::allocate(profile_, target_bpw);
    if (!start.ok()) return start.as_outcome();
    if (profile_.column_blocks > 1) {
      // Also allocate one precision per linear (the profile with its blocks merged) and start from whichever scores
      // better end to end: the blocks' losses are split by a proxy, so their allocation can predict worse.
      auto whole = toga::allocate(whole_profile(), target_bpw);
      if (whole.ok() && *whole != *start) {
        auto a = score(*start), b = score(*whole);
        if (!a.ok()) return a.as_outcome();
        if (!b.ok()) return b.as_outcome();
        if (*b < *a) start = std::move(whole);
      }
    }
    toga_result out;
    auto scored = [&](const toga::configuration& c) -> result<double> {
      if (opt_.progress) opt_.progress("toga search", ++refine_done_, opt_.refine.evaluations + 1);
      return score(c);
    };
    refine_done_ = 0;
    auto refined = toga::refine(profile_, std::move(start).value(), target_bpw, scored, opt_.refine);
    if (!refined.ok()) return refined.as_outcome();
    out.configuration = refined->best;
    out.allocated_score = refined->start_score;
    out.score = refined->best_score;
    auto fills = spend_slack(out.configuration, out.score, target_bpw);
    if (!fills.ok()) return fills.as_outcome();
    out.slack_fills = *fills;
    out.evaluations = refined->evaluations;
    out.predicted_loss = toga::predicted_loss(profile_, out.configuration);
    out.source_weights = profile_.shape.source_weights();
    out.mask_bits = profile_.shape.mask_bits();
    auto matrices = matrices_of(out.configuration);
    if (!matrices.ok()) return matrices.as_outcome();
    for (std::size_t i = 0; i < matrices->size(); ++i) {
      const cached_linear& q = *(*matrices)[i];
      const auto l = static_cast<index_t>(i / linear_kinds);
      const std::string name = weight_name(l, static_cast<linear_kind>(i % linear_kinds));
      const index_t cols = q.back().end;
      for (const cached_part& part : q) {
        sageptq::io::quantized_tensor t{name, part.packed, part.report, {}};
        if (q.size() > 1) t.columns = sageptq::io::column_range{part.begin, part.end, cols};
        out.tensors.push_back(std::move(t));
      }
    }
    std::tie(out.packed_bits, out.boundary_bits) = stored_bits(*matrices);
    if (out.packed_bits.full_bits() + out.mask_bits + out.boundary_bits > toga::budget_bits(profile_, target_bpw))
      return {std::move(out), status::numerical_issue, "TOGA: exact bits exceed the budget"};
    return out;
  }

  /// Exact full bits of configuration `c` (its linears quantized, cached): packed bits, masks and run boundaries.
  result<std::uint64_t> exact_bits(const toga::configuration& c) {
    auto matrices = matrices_of(c);
    if (!matrices.ok()) return matrices.as_outcome();
    const auto [packed, boundaries] = stored_bits(*matrices);
    return profile_.shape.mask_bits() + packed.full_bits() + boundaries;
  }

  /// The refined configuration can leave bits unspent: a sage run spends at most its budget (the bound that
  /// toga/decision.hpp counts) and often less (discrete salient sets, whole sign rows: sage@2 matrices of
  /// gutenberg-llama-20m land at 1.80-1.98 bpw), and the search keeps whichever candidate scores best, full or not.
  /// Up to max_slack_rounds times: fill the budget greedily under the prediction (single changes only: pair
  /// exchanges undo what the search chose) with the unspent exact bits added, and keep the result where its exact
  /// bits fit and it scores lower. Returns the rounds kept.
  static constexpr int max_slack_rounds = 2;
  result<int> spend_slack(toga::configuration& c, double& score_of_c, double target_bpw) {
    const std::uint64_t budget = toga::budget_bits(profile_, target_bpw);
    int round = 0;
    for (; round < max_slack_rounds; ++round) {
      auto exact = exact_bits(c);
      if (!exact.ok()) return exact.as_outcome();
      if (*exact >= budget) return round;
      toga::configuration filled = c;
      toga::fill_budget(profile_, filled, toga::configuration_bits(profile_, c) + (budget - *exact));
      if (filled == c) return round;
      auto filled_exact = exact_bits(filled);
      if (!filled_exact.ok()) return filled_exact.as_outcome();
      if (*filled_exact > budget) return round;
      auto filled_score = score(filled);
      if (!filled_score.ok()) return filled_score.as_outcome();
      if (!(*filled_score < score_of_c)) return round;
      c = std::move(filled);
      score_of_c = *filled_score;
    }
    return round;
  }

  /// The kept KV groups and MLP channels of every layer (source indices, ascending) as the quantized model file's
  /// method options record them, with the budget and the precision of every linear.
  [[nodiscard]] nlohmann::ordered_json describe(const toga_result& r, double target_bpw) const {
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    for (index_t l = 0; l < m_->layer_count(); ++l) {
      const toga::layer_decision& d = r.configuration[static_cast<std::size_t>(l)];
      nlohmann::ordered_json precisions = nlohmann::ordered_json::object();
      const auto name_of = [&](int pi) { return profile_.precisions[static_cast<std::size_t>(pi)].name(); };
      for (int k = 0; k < linear_kinds; ++k) {
        const toga::block_precisions& bp = d.precision[static_cast<std::size_t>(k)];
        auto& slot = precisions[plan_name(static_cast<linear_kind>(k))];
        if (bp.uniform(profile_.column_blocks)) {
          slot = name_of(bp[0]);
        } else {  // one name per input-channel block
          slot = nlohmann::ordered_json::array();
          for (int b = 0; b < profile_.column_blocks; ++b) slot.push_back(name_of(bp[b]));
        }
      }
      layers.push_back({{"kv_groups", kept_groups(l, d.groups)},
                        {"channels", kept_channels(l, d.channel_level)},
                        {"precision", std::move(precisions)}});
    }
    nlohmann::ordered_json menu = nlohmann::ordered_json::array();
    for (const toga::precision& p : profile_.precisions) menu.push_back(p.name());
    return {{"target_bpw", target_bpw},
            {"full_bpw", r.full_bpw()},
            {"mask_bits", r.mask_bits},
            {"boundary_bits", r.boundary_bits},
            {"column_blocks", profile_.column_blocks},
            {"precisions", std::move(menu)},
            {"score_kl", r.score},
            {"slack_fills", r.slack_fills},
            {"layers", std::move(layers)}};
  }

 private:
  struct cached_matrix {
    sageptq::io::packed_matrix packed;
    sageptq::pipeline::matrix_report report;
  };
  /// Columns [begin, end) of a linear, packed.
  struct cached_part : cached_matrix {
    index_t begin = 0, end = 0;
  };
  /// A quantized linear: its column parts in order (one part: the whole matrix).
  using cached_linear = std::vector<cached_part>;

  static std::unique_ptr<decoded_linear> make_linear(const cached_linear& q) {
    if (q.size() == 1) return std::make_unique<packed_linear>(q.front().packed);
    std::vector<column_part> parts;
    for (const cached_part& p : q) parts.push_back({p.begin, p.packed});
    auto layer = column_parts_linear::create(std::move(parts));
    SAGEPTQ_ASSERT(layer.ok());  // the parts tile the columns by construction
    return std::make_unique<column_parts_linear>(std::move(layer).value());
  }

  /// What quantized linears store: their packed bits, and the run boundaries of those stored as column parts.
  static std::pair<sageptq::format::bit_breakdown, std::uint64_t> stored_bits(
      std::span<const cached_linear* const> matrices) {
    sageptq::format::bit_breakdown packed;
    std::uint64_t boundaries = 0;
    for (const cached_linear* q : matrices) {
      for (const cached_part& part : *q) packed += sageptq::io::packed_bits(part.packed);
      boundaries += toga::run_boundary_bits * (q->size() - 1);
    }
    return {packed, boundaries};
  }

  toga_session(model& m, const sageptq::pipeline::token_windows& windows, toga_options opt, const thread_executor& exec)
      : m_(&m), windows_(&windows), opt_(std::move(opt)), exec_(exec) {}

  [[nodiscard]] const sageptq::io::llama_config& cfg() const { return m_->config(); }

  /// The profile with each linear's blocks merged: one precision per linear, losses summed over blocks (precisions
  /// no whole linear can take stay +infinity). Its configurations are valid in the blocked profile, at equal bits.
  [[nodiscard]] toga::profile whole_profile() const {
    toga::profile p = profile_;
    p.column_blocks = 1;
    p.min_run_blocks = {};
    const int menu = p.menu();
    for (toga::layer_profile& lp : p.layers)
      for (auto& q : lp.quant_loss) {
        std::vector<double> sum(static_cast<std::size_t>(menu), 0.0);
        for (int b = 0; b < profile_.column_blocks; ++b)
          for (int pi = 0; pi < menu; ++pi)
            sum[static_cast<std::size_t>(pi)] += q[static_cast<std::size_t>(b * menu + pi)];
        q = std::move(sum);
      }
    return p;
  }
  void report(const std::string& stage, index_t done, index_t total) const {
    if (opt_.progress) opt_.progress(stage, done, total);
  }

  // --- step 1 ---------------------------------------------------------------------------------------------------

  /// Input statistics per layer: q (shared by k, v), o, gate (shared by up), down.
  static constexpr std::array<linear_kind, 4> stat_kinds = {linear_kind::q, linear_kind::o, linear_kind::gate,
                                                            linear_kind::down};
  static int stat_index(linear_kind k) {
    switch (k) {
      case linear_kind::q: case linear_kind::k: case linear_kind::v: return 0;
      case linear_kind::o: return 1;
      case linear_kind::gate: case linear_kind::up: return 2;
      default: return 3;
    }
  }

  /// Runs decoder layer l over `sequences` windows of hidden states in place, in chunks.
  void run_layer(index_t l, std::vector<float>& hidden, index_t sequences, const linear_input_hook& hook = {}) {
    const index_t context = windows_->context, dim = cfg().hidden_size;
    const index_t chunk = std::min(opt_.chunk_sequences, sequences);
    if (blocks_.size() < static_cast<std::size_t>(chunk))
      blocks_.resize(static_cast<std::size_t>(chunk), make_kv_block(cfg(), context));
    std::vector<kv_block*> caches;
    for (auto& b : blocks_) caches.push_back(&b);
    for (index_t s0 = 0; s0 < sequences; s0 += chunk) {
      const index_t n = std::min(chunk, sequences - s0);
      m_->forward_layer(l, sageptq::make_matrix_view(hidden.data() + s0 * context * dim, n * context, dim),
                        std::span<kv_block* const>(caches.data(), static_cast<std::size_t>(n)), 0, exec_, hook);
    }
  }

  /// Log-probabilities (rows x vocab) of the final hidden states, in float; log-softmax in double.
  std::vector<float> log_probs(const std::vector<float>& hidden) const {
    const index_t rows = scored_ * windows_->context, vocab = cfg().vocab_size;
    std::vector<float> out(static_cast<std::size_t>(rows * vocab));
    m_->logits(sageptq::make_matrix_view(hidden.data(), rows, cfg().hidden_size),
               sageptq::make_matrix_view(out.data(), rows, vocab), exec_);
    exec_.parallel_for(rows, [&](index_t r) {
      float* row = out.data() + r * vocab;
      const float max_logit = *std::max_element(row, row + vocab);
      double sum = 0;
      for (index_t c = 0; c < vocab; ++c) sum += std::exp(static_cast<double>(row[c]) - max_logit);
      const double shift = max_logit + std::log(sum);
      for (index_t c = 0; c < vocab; ++c) row[c] = static_cast<float>(row[c] - shift);
    });
    return out;
  }

  /// The embeddings of every calibration window.
  std::vector<float> embedded_windows() const {
    const index_t context = windows_->context, dim = cfg().hidden_size;
    std::vector<float> hidden(static_cast<std::size_t>(windows_->count() * context * dim));
    for (index_t s = 0; s < windows_->count(); ++s)
      m_->embed(windows_->window(s), sageptq::make_matrix_view(hidden.data() + s * context * dim, context, dim));
    return hidden;
  }

  /// Runs layer l in place on the hidden states of every calibration window and returns the Hessians of the
  /// inputs of q (k, v), o, gate (up) and down.
  result<std::array<Eigen::MatrixXd, 4>> observe_layer(index_t l, std::vector<float>& hidden) {
    std::array<std::optional<sageptq::calib::hessian_accumulator>, 4> acc;
    sageptq::outcome observed;
    run_layer(l, hidden, windows_->count(), [&](const linear_input& in) {
      if (std::find(stat_kinds.begin(), stat_kinds.end(), in.kind) == stat_kinds.end() || !observed.ok()) return;
      auto& a = acc[static_cast<std::size_t>(stat_index(in.kind))];
      if (!a) a.emplace(in.x.cols());
      observed = a->add_batch(in.x, exec_);
    });
    if (!observed.ok()) return observed;
    std::array<Eigen::MatrixXd, 4> out;
    for (std::size_t i = 0; i < acc.size(); ++i) out[i] = acc[i]->hessian();
    return out;
  }

  sageptq::outcome calibrate() {
    const index_t sequences = windows_->count();
    scored_ = std::min(opt_.score_windows, sequences);
    std::vector<float> hidden = embedded_windows();
    const auto scored_floats = static_cast<std::size_t>(scored_ * windows_->context * cfg().hidden_size);
    for (index_t l = 0; l < m_->layer_count(); ++l) {
      inputs_.emplace_back(hidden.begin(), hidden.begin() + static_cast<std::ptrdiff_t>(scored_floats));
      auto h = observe_layer(l, hidden);
      if (!h.ok()) return h.as_outcome();
      hessians_.push_back(std::move(h).value());
      report("toga calibration", l + 1, m_->layer_count());
    }
    hidden.resize(scored_floats);
    reference_ = log_probs(hidden);
    return {};
  }

  // --- evaluation -----------------------------------------------------------------------------------------------

  /// Mean KL(full precision || model) per position on the scoring windows, running layers l0.. from the recorded
  /// input of layer l0 (earlier layers are unchanged).
  double kl_from(index_t l0) {
    std::vector<float> hidden = inputs_[static_cast<std::size_t>(l0)];
    for (index_t l = l0; l < m_->layer_count(); ++l) run_layer(l, hidden, scored_);
    const std::vector<float> q = log_probs(hidden);
    const index_t rows = scored_ * windows_->context, vocab = cfg().vocab_size;
    std::vector<double> per_row(static_cast<std::size_t>(rows));
    exec_.parallel_for(rows, [&](index_t r) {
      double kl = 0;
      for (index_t c = 0; c < vocab; ++c) {
        const double lp = reference_[static_cast<std::size_t>(r * vocab + c)];
        kl += std::exp(lp) * (lp - q[static_cast<std::size_t>(r * vocab + c)]);
      }
      per_row[static_cast<std::size_t>(r)] = kl;
    });
    return std::accumulate(per_row.begin(), per_row.end(), 0.0) / static_cast<double>(rows);
  }

  /// Swaps in `layers` (one array per layer from l0; null entries borrow the model's own), runs `f`, swaps back.
  template <class F>
  auto with_layers_swapped(index_t l0, std::vector<std::array<std::unique_ptr<linear_layer>, linear_kinds>>& layers,
                           F&& f) -> result<decltype(f())> {
    std::size_t done = 0;
    sageptq::outcome swapped;
    for (; done < layers.size() && swapped.ok(); ++done) {
      auto& arr = layers[done];
      const index_t l = l0 + static_cast<index_t>(done);
      for (int k = 0; k < linear_kinds; ++k)
        if (!arr[static_cast<std::size_t>(k)])
          arr[static_cast<std::size_t>(k)] =
              std::make_unique<borrowed_linear>(m_->layer(l).linear(static_cast<linear_kind>(k)));
      swapped = m_->swap_layer_linears(l, arr);
    }
    if (!swapped.ok()) --done;  // the failed swap changed nothing
    result<decltype(f())> out = swapped.ok() ? result<decltype(f())>(f()) : result<decltype(f())>(swapped);
    for (std::size_t i = done; i-- > 0;) {
      [[maybe_unused]] const auto restored = m_->swap_layer_linears(l0 + static_cast<index_t>(i), layers[i]);
      SAGEPTQ_ASSERT(restored.ok());
    }
    return out;
  }

  // --- decision space -------------------------------------------------------------------------------------------

  [[nodiscard]] std::vector<index_t> kept_groups(index_t l, index_t groups) const {
    return toga::kept_first(profile_.layers[static_cast<std::size_t>(l)].group_order, groups);
  }
  [[nodiscard]] std::vector<index_t> kept_channels(index_t l, int level) const {
    return toga::kept_first(profile_.layers[static_cast<std::size_t>(l)].channel_order,
                            profile_.channel_levels[static_cast<std::size_t>(level)]);
  }
  /// Rows of q (= columns of o) of the kept KV groups: each group's query heads, head_dim rows each.
  [[nodiscard]] std::vector<index_t> query_rows(const std::vector<index_t>& groups) const {
    const index_t hd = cfg().head_dim, per_group = cfg().num_attention_heads / cfg().num_key_value_heads * hd;
    std::vector<index_t> rows;
    for (index_t g : groups)
      for (index_t i = 0; i < per_group; ++i) rows.push_back(g * per_group + i);
    return rows;
  }
  [[nodiscard]] std::vector<index_t> kv_rows(const std::vector<index_t>& groups) const {
    std::vector<index_t> rows;
    for (index_t g : groups)
      for (index_t i = 0; i < cfg().head_dim; ++i) rows.push_back(g * cfg().head_dim + i);
    return rows;
  }

  /// Kept rows and columns of linear `kind` (empty = all) with `groups` KV groups and channel level `level`.
  [[nodiscard]] std::pair<std::vector<index_t>, std::vector<index_t>> kept(index_t l, linear_kind kind, index_t groups,
                                                                           int level) const {
    switch (kind) {
      case linear_kind::q: return {query_rows(kept_groups(l, groups)), {}};
      case linear_kind::k:
      case linear_kind::v: return {kv_rows(kept_groups(l, groups)), {}};
      case linear_kind::o: return {{}, query_rows(kept_groups(l, groups))};
      case linear_kind::gate:
      case linear_kind::up: return {kept_channels(l, level), {}};
      default: return {{}, kept_channels(l, level)};
    }
  }

  /// The full-precision weight of a linear with only the kept rows and columns.
  [[nodiscard]] std::vector<float> pruned_weight(index_t l, linear_kind kind, const std::vector<index_t>& rows,
                                                 const std::vector<index_t>& cols) const {
    const matrix_view<const float> w = m_->layer(l).dense(kind)->weight();
    const index_t nr = rows.empty() ? w.rows() : std::ssize(rows), nc = cols.empty() ? w.cols() : std::ssize(cols);
    std::vector<float> out(static_cast<std::size_t>(nr * nc));
    for (index_t r = 0; r < nr; ++r)
      for (index_t c = 0; c < nc; ++c)
        out[static_cast<std::size_t>(r * nc + c)] =
            w(rows.empty() ? r : rows[static_cast<std::size_t>(r)],
              cols.empty() ? c : cols[static_cast<std::size_t>(c)]);
    return out;
  }

  [[nodiscard]] std::unique_ptr<linear_layer> pruned_dense(index_t l, linear_kind kind, index_t groups,
                                                           int level) const {
    const auto [rows, cols] = kept(l, kind, groups, level);
    const matrix_view<const float> w = m_->layer(l).dense(kind)->weight();
    return std::make_unique<dense_linear>(rows.empty() ? w.rows() : std::ssize(rows),
                                          cols.empty() ? w.cols() : std::ssize(cols),
                                          pruned_weight(l, kind, rows, cols));
  }

  /// The Hessian factor of a linear's input with only the kept columns, prepared once.
  result<const sageptq::calib::hessian_factor*> factor(index_t l, linear_kind kind, const std::vector<index_t>& cols,
                                                       index_t prune_key) {
    const auto key = std::make_tuple(l, stat_index(kind), prune_key);
    if (const auto it = factors_.find(key); it != factors_.end()) return &it->second;
    const Eigen::MatrixXd& h = hessians_[static_cast<std::size_t>(l)][static_cast<std::size_t>(stat_index(kind))];
    Eigen::MatrixXd sub = cols.empty() ? h : Eigen::MatrixXd(h(cols, cols));
    auto f = sageptq::calib::prepare(sub, opt_.prepare, exec_);
    if (!f.has_value()) return sageptq::fail(f.code(), weight_name(l, kind) + ": " + f.message());
    return &factors_.emplace(key, std::move(f).value()).first->second;
  }

  [[nodiscard]] sageptq::pipeline::method method_of(const toga::precision& p) const {
    if (p.type == toga::precision::kind::sage) {
      sageptq::pipeline::sage_config c;
      c.target_bpw = p.target_bpw;
      return c;
    }
    sageptq::pipeline::gptq_config c;
    c.bits = p.bits;
    c.group_size = 0;
    c.symmetric = p.symmetric();
    return c;
  }

  /// Rows `rows` of a per-row uniform matrix: GPTQ quantizes rows independently given the input statistics, so
  /// this is exactly the quantization of the row-pruned matrix (tests/llama/toga_test.cpp checks it).
  static cached_matrix slice_rows(const cached_matrix& full, const std::vector<index_t>& rows) {
    const auto& m = std::get<sageptq::format::rtn_matrix>(full.packed);
    sageptq::format::rtn_matrix out;
    out.rows = std::ssize(rows);
    out.cols = m.cols;
    out.layout = m.layout;
    const index_t words = m.layout.words_per_row(m.cols), grids = m.layout.groups_per_row(m.cols);
    for (index_t r : rows) {
      out.codes.insert(out.codes.end(), m.codes.begin() + r * words, m.codes.begin() + (r + 1) * words);
      out.scales.insert(out.scales.end(), m.scales.begin() + r * grids, m.scales.begin() + (r + 1) * grids);
      if (!m.zeros.empty())
        out.zeros.insert(out.zeros.end(), m.zeros.begin() + r * grids, m.zeros.begin() + (r + 1) * grids);
    }
    cached_matrix sliced{out, full.report};
    sliced.report.rows = out.rows;
    sliced.report.bits = out.bits();
    sliced.report.hessian_error = sliced.report.relative_error = 0;  // of the full matrix only: not carried over
    return sliced;
  }

  /// The cached linears of configuration `c`, layer by layer, q k v o gate up down. invalid_argument for an invalid
  /// configuration; the quantizers' statuses.
  result<std::vector<const cached_linear*>> matrices_of(const toga::configuration& c) {
    if (std::ssize(c) != m_->layer_count()) return sageptq::fail(status::invalid_argument, "one decision per layer");
    std::vector<const cached_linear*> out;
    for (index_t l = 0; l < m_->layer_count(); ++l) {
      const toga::layer_decision& d = c[static_cast<std::size_t>(l)];
      if (!toga::valid_decision(profile_, l, d))
        return sageptq::fail(status::invalid_argument, "invalid decision at layer " + std::to_string(l));
      for (int k = 0; k < linear_kinds; ++k) {
        auto q = quantized(l, static_cast<linear_kind>(k), d.precision[static_cast<std::size_t>(k)], d.groups,
                           d.channel_level);
        if (!q.ok()) return q.as_outcome();
        out.push_back(*q);
      }
    }
    return out;
  }

  /// KL on the scoring windows of the model whose layers are `matrices` (as matrices_of orders them).
  result<double> kl_of(const std::vector<const cached_linear*>& matrices) {
    std::vector<std::array<std::unique_ptr<linear_layer>, linear_kinds>> layers(matrices.size() / linear_kinds);
    for (std::size_t i = 0; i < matrices.size(); ++i)
      layers[i / linear_kinds][i % linear_kinds] = make_linear(*matrices[i]);
    return with_layers_swapped(0, layers, [&] { return kl_from(0); });
  }

  /// The packed parts of linear `kind` of layer l with block precisions `bp`, pruned to `groups` / `level`; cached.
  /// Quantizer failures (e.g. sage cannot reach its budget on a small matrix) are cached too.
  result<const cached_linear*> quantized(index_t l, linear_kind kind, const toga::block_precisions& bp, index_t groups,
                                         int level) {
    const bool attention = static_cast<int>(kind) <= static_cast<int>(linear_kind::o);
    const index_t prune_key = attention ? groups : level;
    std::uint64_t code = 0;  // the blocks' precisions as digits in base menu
    for (int b = profile_.column_blocks; b-- > 0;)
      code = code * profile_.precisions.size() + static_cast<std::uint64_t>(bp[b]);
    const auto key = std::make_tuple(l, static_cast<int>(kind), code, prune_key);
    if (auto it = quantized_.find(key); it != quantized_.end()) {
      if (!it->second.ok()) return it->second.as_outcome();
      return &*it->second;
    }
    const auto store = [&](result<cached_linear> entry) -> result<const cached_linear*> {
      auto& slot = quantized_.emplace(key, std::move(entry)).first->second;
      if (!slot.ok()) return slot.as_outcome();
      return &*slot;
    };
    const auto [rows, cols] = kept(l, kind, groups, level);
    const index_t nr = rows.empty() ? m_->layer(l).dense(kind)->out_features() : std::ssize(rows);
    const index_t nc = cols.empty() ? m_->layer(l).dense(kind)->in_features() : std::ssize(cols);
    const std::vector<toga::precision_run> runs = toga::precision_runs(bp, profile_.column_blocks, nc);
    const bool uniform = std::all_of(runs.begin(), runs.end(), [&](const toga::precision_run& r) {
      return profile_.precisions[static_cast<std::size_t>(r.precision)].type == toga::precision::kind::uniform;
    });
    const bool unpruned = attention ? groups == cfg().num_key_value_heads : level == 0;
    if (uniform && cols.empty() && !unpruned) {  // rows are quantized independently: slice the unpruned parts
      auto full = quantized(l, kind, bp, cfg().num_key_value_heads, 0);
      if (!full.ok()) return full.as_outcome();
      cached_linear sliced;
      for (const cached_part& part : **full) {
        cached_part p{slice_rows(part, rows)};
        p.begin = part.begin;
        p.end = part.end;
        sliced.push_back(std::move(p));
      }
      return store(std::move(sliced));
    }
    std::vector<sageptq::pipeline::column_run> column_runs;
    for (const toga::precision_run& r : runs) {
      const auto method = method_of(profile_.precisions[static_cast<std::size_t>(r.precision)]);
      if (const auto* sage = std::get_if<sageptq::pipeline::sage_config>(&method);
          sage && sageptq::pipeline::sage_smallest_bpw(nr, r.end - r.begin, *sage) > sage->target_bpw)
        return store(sageptq::fail(status::invalid_argument, "sage cannot reach " + std::to_string(sage->target_bpw) +
                                                                 " full bpw on " + weight_name(l, kind)));
      column_runs.push_back({r.end, method});
    }
    const auto w = pruned_weight(l, kind, rows, cols);
    // Row pruning leaves the input, hence the factor, unchanged: key it as unpruned.
    auto f = factor(l, kind, cols, cols.empty() ? -1 : prune_key);
    if (!f.ok()) return f.as_outcome();
    const auto weights = sageptq::make_matrix_view(w.data(), nr, nc);
    cached_linear out;
    if (runs.size() == 1) {
      auto q = sageptq::pipeline::quantize_matrix(weights, *f, column_runs.front().m, exec_);
      if (!q.has_value()) return store(q.as_outcome());
      out.push_back({{std::move(q->packed), std::move(q->report)}, 0, nc});
    } else {
      auto q = sageptq::pipeline::quantize_column_runs(weights, **f, column_runs, exec_);
      if (!q.has_value()) return store(q.as_outcome());
      for (std::size_t i = 0; i < runs.size(); ++i)
        out.push_back({{std::move(q->runs[i].packed), std::move(q->runs[i].report)}, runs[i].begin, runs[i].end});
    }
    return store(std::move(out));
  }

  // --- step 2 ---------------------------------------------------------------------------------------------------

  /// The fewest adjacent input blocks of linear `k` that precision `p` can quantize at every prune level (every
  /// window of that many blocks), or 0 when not even the whole linear works: only sage has shapes it cannot reach
  /// (its fixed costs per row and column), and a precision must serve every level so the decision space stays a
  /// product.
  [[nodiscard]] int min_run_blocks(toga::linear k, const toga::precision& p) const {
    const auto method = method_of(p);
    const auto* sage = std::get_if<sageptq::pipeline::sage_config>(&method);
    if (!sage) return 1;
    const toga::model_shape& s = profile_.shape;
    const int blocks = profile_.column_blocks;
    for (int n = 1; n <= blocks; ++n) {
      bool reachable = true;
      for (index_t groups = 1; groups <= s.kv_heads && reachable; ++groups)
        for (index_t channels : profile_.channel_levels) {
          const auto [rows, cols] = s.linear_shape(k, groups, channels);
          const std::vector<index_t> bounds = toga::column_block_bounds(cols, blocks);
          for (int b = 0; b + n <= blocks && reachable; ++b)
            reachable = sageptq::pipeline::sage_smallest_bpw(rows, bounds[static_cast<std::size_t>(b + n)] -
                                                                       bounds[static_cast<std::size_t>(b)],
                                                             *sage) <= sage->target_bpw;
        }
      if (reachable) return n;
    }
    return 0;
  }

  /// Shares of a quantized linear's error tr(E H E^T) by input block: block b's columns of E (H E^T)^T, an exact
  /// split of the total (cross terms halved between the two blocks), clamped at 0; equal shares for no error.
  [[nodiscard]] std::vector<double> block_error_shares(index_t l, linear_kind kind,
                                                     matrix_view<const float> decoded) const {
    const matrix_view<const float> w = m_->layer(l).dense(kind)->weight();
    const index_t rows = w.rows(), cols = w.cols();
    SAGEPTQ_ASSERT(decoded.rows() == rows && decoded.cols() == cols);
    Eigen::MatrixXd e(rows, cols);
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) e(r, c) = static_cast<double>(w(r, c)) - decoded(r, c);
    const Eigen::MatrixXd& h = hessians_[static_cast<std::size_t>(l)][static_cast<std::size_t>(stat_index(kind))];
    const Eigen::VectorXd per_column = (e.array() * (e * h).array()).colwise().sum().transpose();
    const std::vector<index_t> bounds = toga::column_block_bounds(cols, profile_.column_blocks);
    std::vector<double> shares(static_cast<std::size_t>(profile_.column_blocks));
    double total = 0;
    for (std::size_t b = 0; b < shares.size(); ++b) {
      shares[b] = std::max(0.0, per_column.segment(bounds[b], bounds[b + 1] - bounds[b]).sum());
      total += shares[b];
    }
    for (double& v : shares) v = total > 0 ? v / total : 1.0 / static_cast<double>(shares.size());
    return shares;
  }

  /// KL with only layer l changed: `replace` gives the new linears (null: unchanged).
  result<double> layer_loss(index_t l, std::array<std::unique_ptr<linear_layer>, linear_kinds> replace) {
    std::vector<std::array<std::unique_ptr<linear_layer>, linear_kinds>> layers(1);
    layers[0] = std::move(replace);
    return with_layers_swapped(l, layers, [&] { return kl_from(l); });
  }

  result<double> attention_loss(index_t l, index_t groups, const std::vector<index_t>& order) {
    profile_.layers[static_cast<std::size_t>(l)].group_order = order;  // kept_groups reads it
    std::array<std::unique_ptr<linear_layer>, linear_kinds> replace;
    for (linear_kind k : {linear_kind::q, linear_kind::k, linear_kind::v, linear_kind::o})
      replace[static_cast<std::size_t>(k)] = pruned_dense(l, k, groups, 0);
    return layer_loss(l, std::move(replace));
  }

  sageptq::outcome measure_profile() {
    const auto& c = cfg();
    toga::profile& p = profile_;
    p.shape = toga_shape(c);
    p.precisions = opt_.precisions;
    p.channel_levels = {c.intermediate_size};
    for (double f : opt_.channel_fractions) {
      const auto n = std::max<index_t>(opt_.channel_multiple,
                                       static_cast<index_t>(std::lround(f * static_cast<double>(c.intermediate_size) /
                                                                        static_cast<double>(opt_.channel_multiple))) *
                                           opt_.channel_multiple);
      if (n < p.channel_levels.back()) p.channel_levels.push_back(n);
    }
    p.column_blocks = opt_.column_blocks;
    for (int k = 0; k < linear_kinds; ++k) {  // 0 (unreachable) is kept as 1 here; its losses are +infinity
      auto& t = p.min_run_blocks[static_cast<std::size_t>(k)];
      for (const toga::precision& precision : p.precisions)
        t.push_back(min_run_blocks(static_cast<toga::linear>(k), precision));
    }
    p.layers.resize(static_cast<std::size_t>(m_->layer_count()));
    const index_t kv = c.num_key_value_heads, menu = std::ssize(p.precisions);
    const index_t per_layer = kv + (kv - 1) + std::ssize(p.channel_levels) - 1 + linear_kinds * menu;
    index_t done = 0;
    for (index_t l = 0; l < m_->layer_count(); ++l) {
      toga::layer_profile& lp = p.layers[static_cast<std::size_t>(l)];
      // Groups: each removed alone; the most important is the one whose removal costs most.
      std::vector<double> alone(static_cast<std::size_t>(kv));
      for (index_t g = 0; g < kv; ++g) {
        std::vector<index_t> order;  // every group but g first, so kept_groups(kv - 1) drops g
        for (index_t i = 0; i < kv; ++i)
          if (i != g) order.push_back(i);
        order.push_back(g);
        auto loss = attention_loss(l, kv - 1, order);
        if (!loss.ok()) return loss.as_outcome();
        alone[static_cast<std::size_t>(g)] = *loss;
        report("toga profile", ++done, per_layer * m_->layer_count());
      }
      std::vector<index_t> order(static_cast<std::size_t>(kv));
      std::iota(order.begin(), order.end(), index_t{0});
      std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
        return alone[static_cast<std::size_t>(a)] > alone[static_cast<std::size_t>(b)];
      });
      lp.attention_loss.assign(static_cast<std::size_t>(kv + 1), 0.0);
      for (index_t groups = kv - 1; groups >= 1; --groups) {
        auto loss = attention_loss(l, groups, order);
        if (!loss.ok()) return loss.as_outcome();
        lp.attention_loss[static_cast<std::size_t>(groups)] = *loss;
        report("toga profile", ++done, per_layer * m_->layer_count());
      }
      lp.attention_loss[0] = std::numeric_limits<double>::infinity();  // unused: at least one group stays
      lp.group_order = order;

      // Channels: E[h_j^2] (the down input's Hessian diagonal, up to a constant) times ||down[:, j]||^2.
      const Eigen::MatrixXd& h_down = hessians_[static_cast<std::size_t>(l)][3];
      const matrix_view<const float> down = m_->layer(l).dense(linear_kind::down)->weight();
      std::vector<double> energy(static_cast<std::size_t>(c.intermediate_size));
      for (index_t j = 0; j < c.intermediate_size; ++j) {
        double norm = 0;
        for (index_t i = 0; i < down.rows(); ++i) norm += static_cast<double>(down(i, j)) * down(i, j);
        energy[static_cast<std::size_t>(j)] = h_down(j, j) * norm;
      }
      lp.channel_order.resize(static_cast<std::size_t>(c.intermediate_size));
      std::iota(lp.channel_order.begin(), lp.channel_order.end(), index_t{0});
      std::stable_sort(lp.channel_order.begin(), lp.channel_order.end(), [&](index_t a, index_t b) {
        return energy[static_cast<std::size_t>(a)] > energy[static_cast<std::size_t>(b)];
      });
      lp.mlp_loss.assign(p.channel_levels.size(), 0.0);
      for (int level = 1; level < std::ssize(p.channel_levels); ++level) {
        std::array<std::unique_ptr<linear_layer>, linear_kinds> replace;
        for (linear_kind k : {linear_kind::gate, linear_kind::up, linear_kind::down})
          replace[static_cast<std::size_t>(k)] = pruned_dense(l, k, kv, level);
        auto loss = layer_loss(l, std::move(replace));
        if (!loss.ok()) return loss.as_outcome();
        lp.mlp_loss[static_cast<std::size_t>(level)] = *loss;
        report("toga profile", ++done, per_layer * m_->layer_count());
      }

      const int blocks = p.column_blocks;
      for (int k = 0; k < linear_kinds; ++k)
        for (int pi = 0; pi < menu; ++pi) {
          const auto kind = static_cast<linear_kind>(k);
          auto& slot = lp.quant_loss[static_cast<std::size_t>(k)];
          slot.resize(static_cast<std::size_t>(blocks * menu));
          const int min_run = p.min_run_blocks[static_cast<std::size_t>(k)][static_cast<std::size_t>(pi)];
          auto q = min_run > 0 ? quantized(l, kind, pi, kv, 0)
                               : result<const cached_linear*>(sageptq::fail(status::invalid_argument, "unreachable"));
          if (!q.ok() && q.code() != status::invalid_argument) return q.as_outcome();
          if (!q.ok()) {  // this precision cannot quantize this matrix (sage below its reachable budget)
            for (int b = 0; b < blocks; ++b)
              slot[static_cast<std::size_t>(b * menu + pi)] = std::numeric_limits<double>::infinity();
          } else {
            std::unique_ptr<decoded_linear> layer = make_linear(**q);
            const std::vector<double> shares =
                blocks == 1 ? std::vector<double>{1.0} : block_error_shares(l, kind, layer->decoded());
            std::array<std::unique_ptr<linear_layer>, linear_kinds> replace;
            replace[static_cast<std::size_t>(k)] = std::move(layer);
            auto loss = layer_loss(l, std::move(replace));
            if (!loss.ok()) return loss.as_outcome();
            for (int b = 0; b < blocks; ++b)
              slot[static_cast<std::size_t>(b * menu + pi)] = *loss * shares[static_cast<std::size_t>(b)];
          }
          report("toga profile", ++done, per_layer * m_->layer_count());
        }
    }
    for (auto& t : p.min_run_blocks)
      for (int& n : t) n = std::max(n, 1);
    return toga::check_profile(p);
  }

  model* m_;
  const sageptq::pipeline::token_windows* windows_;
  toga_options opt_;
  thread_executor exec_;
  index_t scored_ = 0;
  std::vector<kv_block> blocks_;
  std::vector<std::vector<float>> inputs_;  ///< per layer: its input on the scoring windows
  std::vector<std::array<Eigen::MatrixXd, 4>> hessians_;  ///< per layer: q, o, gate, down inputs
  std::vector<float> reference_;  ///< full-precision log-probabilities on the scoring windows
  toga::profile profile_;
  std::map<std::tuple<index_t, int, index_t>, sageptq::calib::hessian_factor> factors_;
  std::map<std::tuple<index_t, int, std::uint64_t, index_t>, result<cached_linear>> quantized_;
  index_t refine_done_ = 0;
};

}  // namespace llama
