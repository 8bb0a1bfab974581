#pragma once
/// @file calibrate.hpp
/// The library's calibration API for whole models, engine-agnostic. An engine drives it decoder layer by decoder
/// layer; the library decides which inputs it needs, accumulates their statistics and returns packed sublayers.
///
///  - `sample_windows` / `validation_windows`: calibration data. N windows of `context` tokens drawn uniformly
///    (seeded, sageptq::random_generator) from the first part of a token file, like GPTQ's datautils: start
///    i in [0, n − context − 1), window = tokens[i, i + context). The last `validation_fraction` of the file is
///    reserved: `validation_windows` cuts it into consecutive windows for choosing hyperparameters, disjoint from
///    every calibration window. (torch's RNG draws other starts than ours, so perplexities after quantization
///    differ a little from runs of the reference implementations with the same seed.)
///  - `layer_calibrator`: the sublayers of a decoder layer are grouped into stages that share their input
///    ({q, k, v}, {o}, {gate, up}, {down} for LLaMA; any names). Per layer the engine runs `passes()` passes over
///    the calibration activations. In pass p it reports the input rows of every sublayer through `observe` (those
///    the pass does not need are ignored, so the engine may report all of them); then it calls `quantize` for each
///    sublayer of `pass_sublayers(p)` and swaps the packed result in before the next pass, so later stages see the
///    quantized outputs of earlier ones.
///      sequential_order::true_sequential  one pass per stage (GPTQ's --true-sequential; the default)
///      sequential_order::per_layer        one pass for all stages: every sublayer is calibrated on the inputs of
///                                         the layer with none of its own sublayers quantized (BiLLM's reference)
///    Either way quantized layers feed the next decoder layer. One Hessian accumulator per stage (q, k and v share
///    one: they see the same rows); a stage's statistics are freed once all its sublayers are quantized, so memory
///    is at most one decoder layer's statistics (one stage's in true-sequential order) plus the engine's
///    activations. `statistics_bytes()` / `peak_statistics_bytes()` report it.
///
/// Threading: the products run on the caller's executor; results are bit-identical for any thread count given the
/// same rows in the same order. A calibrator is used by one thread at a time.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../calib/hessian.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/random.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "quantize_matrix.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

// --- Calibration data -------------------------------------------------------------------------------------------

struct window_options {
  index_t count = 128;               ///< calibration windows (the reference runs: 128)
  index_t context = 512;             ///< tokens per window (the reference runs: 512)
  std::uint64_t seed = 0;
  double validation_fraction = 0.1;  ///< tail of the file reserved for validation, in [0, 1)
};

/// Windows of equal length, stored back to back.
struct token_windows {
  index_t context = 0;
  std::vector<std::uint16_t> tokens;  ///< count() * context ids

  [[nodiscard]] index_t count() const noexcept {
    return context > 0 ? static_cast<index_t>(tokens.size()) / context : 0;
  }
  [[nodiscard]] std::span<const std::uint16_t> window(index_t w) const noexcept {
    return std::span(tokens).subspan(static_cast<std::size_t>(w * context), static_cast<std::size_t>(context));
  }
};

namespace detail {
/// Tokens before the validation tail.
inline index_t calibration_tokens(index_t n, double validation_fraction) {
  return n - static_cast<index_t>(static_cast<double>(n) * validation_fraction);
}

inline outcome check_window_options(const window_options& opt) {
  if (opt.count < 1 || opt.context < 1)
    return fail(status::invalid_argument, "window count and context must be >= 1, got " + std::to_string(opt.count) +
                                              " and " + std::to_string(opt.context));
  if (!(opt.validation_fraction >= 0 && opt.validation_fraction < 1))
    return fail(status::invalid_argument, "validation_fraction must be in [0, 1)");
  return {};
}
}  // namespace detail

/// `opt.count` windows drawn uniformly with replacement from the calibration part of `tokens` (see the top).
/// invalid_argument for bad options or a calibration part shorter than context + 2 tokens.
inline result<token_windows> sample_windows(std::span<const std::uint16_t> tokens, const window_options& opt) {
  if (auto ok = detail::check_window_options(opt); !ok) return ok;
  const index_t n = detail::calibration_tokens(static_cast<index_t>(tokens.size()), opt.validation_fraction);
  if (n < opt.context + 2)
    return fail(status::invalid_argument, "the calibration part holds " + std::to_string(n) +
                                              " tokens, fewer than a window of " + std::to_string(opt.context) + " + 2");
  random_generator rng(opt.seed);
  token_windows out{opt.context, {}};
  out.tokens.reserve(static_cast<std::size_t>(opt.count * opt.context));
  for (index_t w = 0; w < opt.count; ++w) {
    const auto start = static_cast<std::size_t>(rng.below(static_cast<std::uint64_t>(n - opt.context - 1)));
    out.tokens.insert(out.tokens.end(), tokens.begin() + static_cast<std::ptrdiff_t>(start),
                      tokens.begin() + static_cast<std::ptrdiff_t>(start + static_cast<std::size_t>(opt.context)));
  }
  return out;
}

/// The validation tail cut into consecutive windows of opt.context tokens plus one target each (so they can be
/// scored like perplexity windows): tokens[v + k context, v + (k + 1) context + 1) flattened as windows of
/// context + 1 tokens. At most opt.count windows; invalid_argument when the tail does not hold one.
inline result<token_windows> validation_windows(std::span<const std::uint16_t> tokens, const window_options& opt) {
  if (auto ok = detail::check_window_options(opt); !ok) return ok;
  const auto total = static_cast<index_t>(tokens.size());
  const index_t begin = detail::calibration_tokens(total, opt.validation_fraction);
  const index_t windows = std::min(opt.count, (total - begin - 1) / opt.context);
  if (windows < 1)
    return fail(status::invalid_argument, "the validation tail of " + std::to_string(total - begin) +
                                              " tokens does not hold one window of " + std::to_string(opt.context) +
                                              " + 1");
  token_windows out{opt.context + 1, {}};
  for (index_t w = 0; w < windows; ++w) {
    const auto first = tokens.begin() + static_cast<std::ptrdiff_t>(begin + w * opt.context);
    out.tokens.insert(out.tokens.end(), first, first + static_cast<std::ptrdiff_t>(opt.context + 1));
  }
  return out;
}

// --- Layer-by-layer calibration ---------------------------------------------------------------------------------

enum class sequential_order { true_sequential, per_layer };

/// The order a method's reference calibrates in: BiLLM's code uses per_layer, the others true-sequential.
inline sequential_order reference_order(const method& m) {
  return std::holds_alternative<billm_config>(m) ? sequential_order::per_layer : sequential_order::true_sequential;
}

/// Sublayers of one decoder layer grouped into stages that share their input, in forward order.
struct layer_plan {
  std::vector<std::vector<std::string>> stages;
};

/// LLaMA's decoder layer with the reference engine's names.
inline layer_plan llama_layer_plan() { return {{{"q", "k", "v"}, {"o"}, {"gate", "up"}, {"down"}}}; }

struct calibration_options {
  sequential_order order = sequential_order::true_sequential;
  calib::prepare_options prepare{};
};

class layer_calibrator {
 public:
  /// invalid_argument for an empty plan, an empty stage, a repeated name, or a method that needs no calibration
  /// data (rtn and q1_0 quantize directly with quantize_matrix).
  static result<layer_calibrator> create(layer_plan plan, method m, calibration_options opt = {}) {
    if (plan.stages.empty()) return fail(status::invalid_argument, "the layer plan has no stage");
    std::vector<std::string> seen;
    for (const auto& stage : plan.stages) {
      if (stage.empty()) return fail(status::invalid_argument, "the layer plan has an empty stage");
      for (const auto& name : stage) {
        if (std::find(seen.begin(), seen.end(), name) != seen.end())
          return fail(status::invalid_argument, "sublayer \"" + name + "\" appears twice in the layer plan");
        seen.push_back(name);
      }
    }
    if (!needs_calibration(m))
      return fail(status::invalid_argument, "method " + method_name(m) + " uses no calibration data");
    layer_calibrator out;
    out.plan_ = std::move(plan);
    out.method_ = std::move(m);
    out.options_ = opt;
    out.stats_.resize(out.plan_.stages.size());
    return out;
  }

  [[nodiscard]] const layer_plan& plan() const noexcept { return plan_; }
  [[nodiscard]] const method& quantization_method() const noexcept { return method_; }

  /// Passes over the calibration activations per decoder layer: one per stage, or one in per_layer order.
  [[nodiscard]] index_t passes() const noexcept {
    return options_.order == sequential_order::per_layer ? 1 : static_cast<index_t>(plan_.stages.size());
  }

  /// The sublayers to quantize after pass p, in plan order.
  [[nodiscard]] std::vector<std::string> pass_sublayers(index_t p) const {
    std::vector<std::string> out;
    for (std::size_t s = 0; s < plan_.stages.size(); ++s)
      if (pass_of(s) == p) out.insert(out.end(), plan_.stages[s].begin(), plan_.stages[s].end());
    return out;
  }

  /// Starts pass p of decoder layer `layer` (passes in order 0, 1, ...; layer numbers are for messages only).
  /// invalid_argument when p is out of range or the previous pass left sublayers unquantized.
  outcome begin_pass(index_t layer, index_t p) {
    if (p < 0 || p >= passes())
      return fail(status::invalid_argument, "pass " + std::to_string(p) + " is not in [0, " + std::to_string(passes()) + ")");
    for (std::size_t s = 0; s < stats_.size(); ++s)
      if (stats_[s])
        return fail(status::invalid_argument, "layer " + std::to_string(layer_) + ": stage \"" + plan_.stages[s][0] +
                                                  "\" was observed but not all its sublayers were quantized");
    layer_ = layer;
    pass_ = p;
    return {};
  }

  /// Whether the current pass uses the input of `sublayer`: the first-named sublayer of each of its stages
  /// (the others share those rows).
  [[nodiscard]] bool wants(std::string_view sublayer) const {
    const auto s = stage_of(sublayer);
    return s && pass_of(*s) == pass_ && plan_.stages[*s].front() == sublayer;
  }

  /// Reports input rows (samples x in_features) of `sublayer`; a no-op unless wants(sublayer). Call once per batch
  /// of rows. invalid_argument for a name outside the plan; the accumulator's statuses otherwise.
  template <host_matrix_like Rows, executor Exec = inline_executor>
  outcome observe(std::string_view sublayer, const Rows& rows, const Exec& exec = {}) {
    const auto s = stage_of(sublayer);
    if (!s) return unknown(sublayer);
    if (!wants(sublayer)) return {};
    const index_t cols = sageptq::view(rows).cols();
    stage_stats& st = stats(*s, cols);
    if (st.accumulator.cols() != cols)
      return fail(status::invalid_shape, "sublayer \"" + std::string(sublayer) + "\" got rows of width " +
                                             std::to_string(cols) + ", earlier rows had " +
                                             std::to_string(st.accumulator.cols()));
    auto added = st.accumulator.add_batch(rows, exec);
    update_peak();
    return added;
  }

  /// Quantizes `sublayer` (a sublayer of the current pass) with the statistics of its stage. The stage's Hessian
  /// is prepared on first use and freed when its last sublayer is quantized. The damping's numerical_issue is
  /// appended to the report's notes. invalid_argument for a sublayer outside this pass, quantized twice, or
  /// without observed rows; the method's statuses otherwise.
  template <host_matrix_like Weights, executor Exec = inline_executor>
  result<matrix_result> quantize(std::string_view sublayer, const Weights& weights, const Exec& exec = {}) {
    return quantize(sublayer, weights, method_, exec);
  }

  /// As above with a method of this sublayer's own (e.g. its share of a model budget from spread_budget()); it
  /// must be of the calibrator's kind, so the calibration order stays the one the calibrator was created for.
  template <host_matrix_like Weights, executor Exec = inline_executor>
  result<matrix_result> quantize(std::string_view sublayer, const Weights& weights, const method& m,
                                 const Exec& exec = {}) {
    if (m.index() != method_.index())
      return fail(status::invalid_argument, "a sublayer's method must be a " + method_name(method_) + " like the calibrator's");
    const auto s = stage_of(sublayer);
    if (!s) return unknown(sublayer);
    const std::string where = "layer " + std::to_string(layer_) + " sublayer \"" + std::string(sublayer) + "\"";
    if (pass_of(*s) != pass_) return fail(status::invalid_argument, where + " is not quantized in pass " + std::to_string(pass_));
    const auto& names = plan_.stages[*s];
    const auto index = static_cast<std::size_t>(std::find(names.begin(), names.end(), sublayer) - names.begin());
    auto& st = stats_[*s];
    if (!st || st->accumulator.samples() == 0)
      return fail(status::invalid_argument, where + ": no input rows were observed for its stage");
    if (st->done[index]) return fail(status::invalid_argument, where + " was already quantized");
    if (!st->factor) {
      auto factor = calib::prepare(st->accumulator, options_.prepare, exec);
      if (!factor.has_value()) return fail(factor.code(), where + ": " + factor.message());
      if (!factor.ok()) st->notes = factor.message();
      st->factor = std::move(factor).value();
      update_peak();
    }
    auto out = quantize_matrix(weights, &*st->factor, m, exec);
    if (out.has_value() && !st->notes.empty())
      out->report.notes += (out->report.notes.empty() ? "" : "; ") + st->notes;
    st->done[index] = true;
    if (std::all_of(st->done.begin(), st->done.end(), [](bool d) { return d; })) st.reset();
    return out;
  }

  /// Bytes of the statistics alive now (accumulators and prepared factors), and the most at any time.
  [[nodiscard]] std::size_t statistics_bytes() const noexcept {
    std::size_t bytes = 0;
    for (const auto& st : stats_)
      if (st) bytes += st->bytes();
    return bytes;
  }
  [[nodiscard]] std::size_t peak_statistics_bytes() const noexcept { return peak_; }

 private:
  struct stage_stats {
    calib::hessian_accumulator accumulator;
    std::optional<calib::hessian_factor> factor;
    std::vector<bool> done;  ///< per sublayer of the stage
    std::string notes;

    [[nodiscard]] std::size_t bytes() const noexcept {
      const auto matrix = [](const Eigen::MatrixXd& m) { return static_cast<std::size_t>(m.size()) * sizeof(double); };
      return matrix(accumulator.hessian()) + (factor ? matrix(factor->h) + matrix(factor->u) : 0);
    }
  };

  layer_calibrator() = default;

  [[nodiscard]] std::optional<std::size_t> stage_of(std::string_view sublayer) const {
    for (std::size_t s = 0; s < plan_.stages.size(); ++s)
      if (std::find(plan_.stages[s].begin(), plan_.stages[s].end(), sublayer) != plan_.stages[s].end()) return s;
    return std::nullopt;
  }
  [[nodiscard]] index_t pass_of(std::size_t stage) const noexcept {
    return options_.order == sequential_order::per_layer ? 0 : static_cast<index_t>(stage);
  }
  static outcome unknown(std::string_view sublayer) {
    return fail(status::invalid_argument, "sublayer \"" + std::string(sublayer) + "\" is not in the layer plan");
  }
  stage_stats& stats(std::size_t s, index_t cols) {
    if (!stats_[s])
      stats_[s] = std::make_unique<stage_stats>(stage_stats{calib::hessian_accumulator(cols), std::nullopt,
                                                            std::vector<bool>(plan_.stages[s].size(), false), {}});
    return *stats_[s];
  }
  void update_peak() noexcept { peak_ = std::max(peak_, statistics_bytes()); }

  layer_plan plan_;
  method method_;
  calibration_options options_;
  std::vector<std::unique_ptr<stage_stats>> stats_;  ///< per stage; null when not alive
  index_t layer_ = 0, pass_ = 0;
  std::size_t peak_ = 0;
};

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
