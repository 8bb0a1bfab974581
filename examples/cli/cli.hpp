#pragma once
// The `sageptq` command line, as a function so tests can run it in-process (tests/cli): run_cli(args, out, err)
// returns the exit status main() returns. Contract:
//
//   sageptq quantize --model DIR --calib TOKENS --method NAME [--bits B] [--group G] [--target-bpw X[,X...]]
//                    [--calib-windows N] [--ctx N] [--seed S] [--threads T] --out FILE [--report FILE.json]
//   sageptq eval     [--model DIR] [--quantized FILE] --tokens TOKENS [--ctx N] [--max-windows N] [--threads T]
//   sageptq generate [--model DIR] [--quantized FILE] --prompt-tokens TOKENS --n N
//
// Every option that does not apply (to the command, or to the method: --bits for q1_0, --calib-windows for rtn)
// is an error, never ignored. rtn and q1_0 use no calibration data: --calib is optional for them. A --target-bpw
// budget is the mean full bpw over all linear layers (pipeline::spread_budget). Several budgets quantize once per
// budget; --out (and --report) must then contain "{bpw}". `eval` prints as its last line
// "ppl=<float> full_bpw=<float> paper_bpw=<float> windows=<int>", bpw over the linear layers of the source model
// (the source dtype's bits for an unquantized model; weights a pruned model dropped count 0).
// --method toga (llama/toga.hpp) prunes and mixes precisions: it needs --calib and --target-bpw, takes no --bits
// or --group, and serves all its budgets from one calibration and profiling pass. `generate` decodes greedily with
// the KV cache and prints the generated token ids. Progress bars go to stderr.

#include <sageptq/io/quantized_model.hpp>
#include <sageptq/io/tokens.hpp>
#include <sageptq/pipeline/calibrate.hpp>
#include <sageptq/pipeline/quantize_matrix.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "../llama/perplexity.hpp"
#include "../llama/quantize.hpp"
#include "../llama/quantized_model.hpp"
#include "../llama/toga.hpp"

namespace sageptq_cli {

using sageptq::index_t;
using sageptq::outcome;
using sageptq::result;
using sageptq::status;

/// An error the CLI reports as "sageptq: <message>" with exit status 2 (usage) or 1 (anything else).
struct cli_error {
  int exit_code;
  std::string message;
};

inline constexpr const char* usage =
    "usage:\n"
    "  sageptq quantize --model DIR --calib TOKENS --method NAME [--bits B] [--group G] [--target-bpw X[,X...]]\n"
    "                   [--calib-windows N] [--ctx N] [--seed S] [--threads T] --out FILE [--report FILE.json]\n"
    "                   toga only: [--column-blocks N] (input-channel blocks per linear, each its own precision)\n"
    "                   [--precisions gptq1,sage@1.1,gptq2,gptq3] (the menu: gptqB for B-bit, sage@X for X full bpw)\n"
    "                   [--score-windows N] (calibration windows the search scores its KL on; default 4)\n"
    "  sageptq eval     [--model DIR] [--quantized FILE] --tokens TOKENS [--ctx N] [--max-windows N] [--threads T]\n"
    "  sageptq generate [--model DIR] [--quantized FILE] --prompt-tokens TOKENS --n N\n";

/// "--name value" pairs, each name at most once and from `allowed`.
class options {
 public:
  static std::optional<cli_error> parse(std::span<const std::string> args, const std::set<std::string>& allowed,
                                        const std::string& command, options& out) {
    for (std::size_t i = 0; i < args.size(); i += 2) {
      const std::string& key = args[i];
      if (!key.starts_with("--")) return cli_error{2, "expected an option, got \"" + key + "\""};
      const std::string name = key.substr(2);
      if (!allowed.contains(name)) return cli_error{2, "option " + key + " does not apply to " + command};
      if (i + 1 >= args.size()) return cli_error{2, "option " + key + " needs a value"};
      if (!out.values_.emplace(name, args[i + 1]).second) return cli_error{2, "option " + key + " is given twice"};
    }
    return std::nullopt;
  }

  [[nodiscard]] bool has(const std::string& name) const { return values_.contains(name); }
  [[nodiscard]] std::optional<std::string> text(const std::string& name) const {
    const auto it = values_.find(name);
    return it == values_.end() ? std::nullopt : std::optional(it->second);
  }

  /// The value of --name as an integer in [lo, hi], `fallback` when absent.
  [[nodiscard]] std::optional<cli_error> integer(const std::string& name, long long lo, long long hi, long long& value) const {
    const auto t = text(name);
    if (!t) return std::nullopt;
    long long v = 0;
    const auto [end, ec] = std::from_chars(t->data(), t->data() + t->size(), v);
    if (ec != std::errc{} || end != t->data() + t->size() || v < lo || v > hi)
      return cli_error{2, "--" + name + " " + *t + " is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]"};
    value = v;
    return std::nullopt;
  }

 private:
  std::map<std::string, std::string> values_;
};

/// Parses "1.1,1.5" into positive finite numbers.
inline std::optional<cli_error> parse_budgets(const std::string& text, std::vector<double>& out) {
  std::size_t begin = 0;
  while (begin <= text.size()) {
    const std::size_t end = std::min(text.find(',', begin), text.size());
    double v = 0;
    const auto [ptr, ec] = std::from_chars(text.data() + begin, text.data() + end, v);
    if (ec != std::errc{} || ptr != text.data() + end || !(v > 0) || !std::isfinite(v))
      return cli_error{2, "--target-bpw " + text + " is not a list of positive numbers"};
    out.push_back(v);
    begin = end + 1;
  }
  return std::nullopt;
}

/// Replaces every "{bpw}" with the budget.
inline std::string with_budget(std::string pattern, double bpw) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", bpw);
  for (std::size_t at; (at = pattern.find("{bpw}")) != std::string::npos;) pattern.replace(at, 5, text);
  return pattern;
}

/// A progress bar on stderr: "\r<label> [#####.....] done/total", finished with a newline (also when the work
/// stops early, so an error message starts on its own line).
class progress_bar {
 public:
  progress_bar(std::ostream& err, std::string label) : err_(err), label_(std::move(label)) {}
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;
  ~progress_bar() {
    if (open_) err_ << '\n';
  }
  void operator()(index_t done, index_t total) const {
    open_ = done != total;
    constexpr int width = 30;
    const int filled = total > 0 ? static_cast<int>(width * done / total) : width;
    err_ << '\r' << label_ << " [" << std::string(static_cast<std::size_t>(filled), '#')
         << std::string(static_cast<std::size_t>(width - filled), '.') << "] " << done << '/' << total;
    if (done == total) err_ << '\n';
    err_.flush();
  }

 private:
  std::ostream& err_;
  std::string label_;
  mutable bool open_ = false;  ///< a line is drawn and not yet ended
};

inline cli_error error_of(const outcome& o) { return {1, std::string(sageptq::to_string(o.code())) + ": " + o.message()}; }

inline unsigned default_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

// --- quantize ---------------------------------------------------------------------------------------------------

inline nlohmann::ordered_json layer_report(const sageptq::io::quantized_tensor& t) {
  const auto& r = t.report;
  nlohmann::ordered_json out = {{"name", t.name},
                                {"shape", {r.rows, r.cols}},
                                {"method", r.method},
                                {"groups", r.groups},
                                {"salient_fraction", r.salient_fraction},
                                {"relative_error", r.relative_error},
                                {"hessian_error", r.hessian_error},
                                {"bits", sageptq::io::bits_json(r.bits)},
                                {"full_bpw", r.bits.full_bpw()},
                                {"paper_bpw", r.bits.paper_bpw()},
                                {"seconds", r.times.total()},
                                {"notes", r.notes}};
  if (t.columns) out["columns"] = {t.columns->begin, t.columns->end, t.columns->of};
  return out;
}

/// What every quantize method shares: calibration sampling, threads, budgets and output paths.
struct quantize_settings {
  std::filesystem::path model_dir;
  long long windows = 128, ctx = 512, seed = 0, threads = default_threads();
  std::vector<double> budgets;  ///< --target-bpw, empty when absent
  std::string out_pattern, report_pattern;

  /// --calib with its sampling as a report records it.
  [[nodiscard]] nlohmann::ordered_json calibration_json(const options& opt) const {
    return {{"tokens", *opt.text("calib")}, {"windows", windows}, {"ctx", ctx}, {"seed", seed}};
  }
};

inline std::optional<cli_error> parse_quantize_settings(const options& opt, quantize_settings& s) {
  s.model_dir = *opt.text("model");
  if (auto e = opt.integer("calib-windows", 1, 1 << 20, s.windows)) return e;
  if (auto e = opt.integer("ctx", 1, 1 << 20, s.ctx)) return e;
  if (auto e = opt.integer("seed", 0, std::numeric_limits<long long>::max(), s.seed)) return e;
  if (auto e = opt.integer("threads", 1, 1024, s.threads)) return e;
  if (const auto t = opt.text("target-bpw"))
    if (auto e = parse_budgets(*t, s.budgets)) return e;
  s.out_pattern = *opt.text("out");
  s.report_pattern = opt.text("report").value_or("");
  if (s.budgets.size() > 1 && (s.out_pattern.find("{bpw}") == std::string::npos ||
                               (!s.report_pattern.empty() && s.report_pattern.find("{bpw}") == std::string::npos)))
    return cli_error{2, "with several --target-bpw budgets, --out (and --report) must contain {bpw}"};
  return std::nullopt;
}

/// --calib-windows windows of --ctx tokens of --calib, drawn with --seed, for a model of configuration `cfg`.
inline std::optional<cli_error> calibration_windows(const options& opt, const quantize_settings& s,
                                                    const sageptq::io::llama_config& cfg,
                                                    sageptq::pipeline::token_windows& out) {
  if (s.ctx > cfg.max_position_embeddings)
    return cli_error{2, "--ctx " + std::to_string(s.ctx) + " exceeds the model's " +
                            std::to_string(cfg.max_position_embeddings) + " positions"};
  auto tokens = sageptq::io::read_tokens(*opt.text("calib"), static_cast<std::uint32_t>(cfg.vocab_size));
  if (!tokens.ok()) return error_of(tokens.as_outcome());
  sageptq::pipeline::window_options wopt;
  wopt.count = s.windows;
  wopt.context = s.ctx;
  wopt.seed = static_cast<std::uint64_t>(s.seed);
  auto sampled = sageptq::pipeline::sample_windows(*tokens, wopt);
  if (!sampled.ok()) return error_of(sampled.as_outcome());
  out = std::move(sampled).value();
  return std::nullopt;
}

/// Writes the report of `budget` when --report was given.
inline std::optional<cli_error> write_report(const quantize_settings& s, double budget,
                                             const nlohmann::ordered_json& report) {
  if (s.report_pattern.empty()) return std::nullopt;
  const std::string path = with_budget(s.report_pattern, budget);
  std::ofstream file(path);
  file << report.dump(2) << '\n';
  if (!file) return cli_error{1, "cannot write the report " + path};
  return std::nullopt;
}

/// Wall and process CPU seconds (all threads) since construction; cpu_seconds / cores estimates a run on fewer cores.
struct stopwatch {
  std::chrono::steady_clock::time_point wall_start = std::chrono::steady_clock::now();
  std::clock_t cpu_start = std::clock();

  [[nodiscard]] double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  }
  [[nodiscard]] double cpu_seconds() const { return static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC; }
};

/// `quantize --method toga` (llama/toga.hpp): one calibration and profiling pass, then per budget an allocation
/// and an end-to-end search, each written as its own file. --seed draws the windows and seeds the search.
inline std::optional<cli_error> quantize_toga(const options& opt, const quantize_settings& s, std::ostream& out,
                                              std::ostream& err) {
  for (const char* option : {"bits", "group"})
    if (opt.has(option)) return cli_error{2, std::string("--") + option + " does not apply to method toga"};
  if (!opt.has("calib") || s.budgets.empty())
    return cli_error{2, "method toga needs --calib TOKENS and --target-bpw X[,X...]"};
  llama::toga_options topt;
  if (const auto menu_text = opt.text("precisions")) {
    auto menu = sageptq::toga::parse_precisions(*menu_text);
    if (!menu.ok()) return cli_error{2, "--precisions: " + menu.message()};
    topt.precisions = std::move(*menu);
  }
  auto m = llama::model::load(s.model_dir);
  if (!m.ok()) return error_of(m.as_outcome());
  sageptq::pipeline::token_windows windows;
  if (auto e = calibration_windows(opt, s, m->config(), windows)) return e;

  const sageptq::thread_executor exec(static_cast<unsigned>(s.threads));
  topt.refine.seed = static_cast<std::uint64_t>(s.seed);
  long long column_blocks = topt.column_blocks;
  if (auto e = opt.integer("column-blocks", 1, sageptq::toga::max_column_blocks, column_blocks)) return e;
  topt.column_blocks = static_cast<int>(column_blocks);
  long long score_windows = topt.score_windows;
  if (auto e = opt.integer("score-windows", 1, 1 << 20, score_windows)) return e;
  topt.score_windows = static_cast<index_t>(score_windows);
  std::map<std::string, std::unique_ptr<progress_bar>> bars;
  topt.progress = [&](const std::string& stage, index_t done, index_t total) {
    auto& bar = bars[stage];
    if (!bar || done == 1) bar = std::make_unique<progress_bar>(err, stage);
    (*bar)(done, total);
  };
  const stopwatch profile_time;
  auto session = llama::toga_session::create(*m, windows, topt, exec);
  if (!session.ok()) return error_of(session.as_outcome());
  out << "toga profile: " << session->profile().layers.size() << " layers, seconds=" << profile_time.seconds()
      << " cpu_seconds=" << profile_time.cpu_seconds() << '\n';
  for (const double budget : s.budgets) {
    const stopwatch budget_time;
    auto r = session->compress(budget);
    if (!r.ok()) return error_of(r.as_outcome());
    const nlohmann::ordered_json description = session->describe(*r, budget);
    auto contents = llama::assemble_quantized_model(s.model_dir, "toga", description.dump(), r->tensors);
    if (!contents.ok()) return error_of(contents.as_outcome());
    const std::filesystem::path out_path = with_budget(s.out_pattern, budget);
    if (auto written = sageptq::io::write_quantized_model(out_path, *contents); !written.ok()) return error_of(written);
    const double seconds = budget_time.seconds(), cpu_seconds = budget_time.cpu_seconds();
    out << "wrote " << out_path.string() << ": " << contents->packed.size() << " matrices, full_bpw=" << r->full_bpw()
        << " kl=" << r->score << " seconds=" << seconds << " cpu_seconds=" << cpu_seconds << '\n';
    nlohmann::ordered_json report = {{"model", s.model_dir.string()},
                                     {"method", "toga"},
                                     {"calibration", s.calibration_json(opt)},
                                     {"toga", description},
                                     {"layers", nlohmann::ordered_json::array()}};
    for (const auto& t : contents->packed) report["layers"].push_back(layer_report(t));
    report["totals"] = {{"bits", sageptq::io::bits_json(r->packed_bits)},
                        {"mask_bits", r->mask_bits},
                        {"boundary_bits", r->boundary_bits},
                        {"source_weights", r->source_weights},
                        {"full_bpw", r->full_bpw()},
                        {"paper_bpw", static_cast<double>(r->packed_bits.paper_bits) /
                                          static_cast<double>(r->source_weights)},
                        {"seconds", seconds},
                        {"cpu_seconds", cpu_seconds}};
    if (auto e = write_report(s, budget, report)) return e;
  }
  return std::nullopt;
}

inline std::optional<cli_error> quantize(const options& opt, std::ostream& out, std::ostream& err) {
  for (const char* required : {"model", "method", "out"})
    if (!opt.has(required)) return cli_error{2, std::string("quantize needs --") + required};
  quantize_settings s;
  if (auto e = parse_quantize_settings(opt, s)) return e;
  const std::string method_name = *opt.text("method");
  if (method_name == "toga") return quantize_toga(opt, s, out, err);
  for (const char* option : {"column-blocks", "precisions", "score-windows"})
    if (opt.has(option)) return cli_error{2, std::string("--") + option + " does not apply to method " + method_name};
  sageptq::pipeline::method_options method_opt;
  nlohmann::ordered_json options_json = nlohmann::ordered_json::object();
  long long bits = 0, group = 0;
  if (auto e = opt.integer("bits", 1, 8, bits)) return e;
  if (auto e = opt.integer("group", 0, 1 << 24, group)) return e;
  if (opt.has("bits")) options_json["bits"] = *(method_opt.bits = static_cast<int>(bits));
  if (opt.has("group")) options_json["group"] = *(method_opt.group = static_cast<index_t>(group));
  if (!s.budgets.empty()) method_opt.target_bpw = s.budgets.front();
  const auto probe = sageptq::pipeline::make_method(method_name, method_opt);  // rejects options the method lacks
  if (!probe.ok()) return cli_error{2, probe.message()};
  const bool calibrated = sageptq::pipeline::needs_calibration(*probe);
  if (!calibrated)
    for (const char* option : {"calib-windows", "ctx", "seed"})
      if (opt.has(option))
        return cli_error{2, std::string("--") + option + " does not apply to method " + method_name +
                                " (it uses no calibration data)"};
  if (calibrated && !opt.has("calib")) return cli_error{2, "method " + method_name + " needs --calib TOKENS"};
  std::vector<double> budgets = s.budgets;
  if (budgets.empty()) budgets.push_back(0);  // one run with the method's default budget

  const sageptq::thread_executor exec(static_cast<unsigned>(s.threads));
  sageptq::pipeline::token_windows windows;
  if (calibrated) {
    auto cfg = sageptq::io::read_llama_config(s.model_dir);
    if (!cfg.ok()) return error_of(cfg.as_outcome());
    if (auto e = calibration_windows(opt, s, *cfg, windows)) return e;
  }

  for (const double budget : budgets) {
    auto m = llama::model::load(s.model_dir);
    if (!m.ok()) return error_of(m.as_outcome());
    if (budget > 0) method_opt.target_bpw = budget;
    auto method = sageptq::pipeline::make_method(method_name, method_opt);
    if (!method.ok()) return cli_error{2, method.message()};
    nlohmann::ordered_json method_json = options_json;
    if (budget > 0) method_json["target_bpw"] = budget;

    llama::quantize_options qopt;
    qopt.method = *method;
    qopt.calibration.order = sageptq::pipeline::reference_order(*method);
    const progress_bar bar(err, "quantize " + method_name + (budget > 0 ? " @" + with_budget("{bpw}", budget) : ""));
    qopt.progress = [&](index_t done, index_t total) { bar(done, total); };
    const stopwatch time;
    auto q = llama::quantize_model(*m, windows, qopt, exec);
    if (!q.ok()) return error_of(q.as_outcome());
    const double seconds = time.seconds();

    auto contents = llama::assemble_quantized_model(s.model_dir, method_name, method_json.dump(), std::move(q->tensors));
    if (!contents.ok()) return error_of(contents.as_outcome());
    const std::filesystem::path out_path = with_budget(s.out_pattern, budget);
    if (auto written = sageptq::io::write_quantized_model(out_path, *contents); !written.ok()) return error_of(written);
    const auto total = contents->total_bits();
    out << "wrote " << out_path.string() << ": " << contents->packed.size() << " matrices, full_bpw=" << total.full_bpw()
        << " paper_bpw=" << total.paper_bpw() << " seconds=" << seconds << '\n';

    nlohmann::ordered_json report = {
        {"model", s.model_dir.string()},
        {"method", method_name},
        {"options", method_json},
        {"order", qopt.calibration.order == sageptq::pipeline::sequential_order::per_layer ? "per_layer"
                                                                                           : "true_sequential"},
        {"calibration", calibrated ? s.calibration_json(opt) : nlohmann::ordered_json(nullptr)},
        {"peak_statistics_bytes", q->peak_statistics_bytes},
        {"layers", nlohmann::ordered_json::array()}};
    for (const auto& t : contents->packed) report["layers"].push_back(layer_report(t));
    report["totals"] = {{"bits", sageptq::io::bits_json(total)},
                        {"full_bpw", total.full_bpw()},
                        {"paper_bpw", total.paper_bpw()},
                        {"seconds", seconds}};
    if (auto e = write_report(s, budget, report)) return e;
  }
  return std::nullopt;
}

// --- eval and generate ------------------------------------------------------------------------------------------

/// A model from --model and/or --quantized, with the bits per weight of its linear layers.
struct loaded {
  std::optional<llama::model> engine;
  double full_bpw = 0, paper_bpw = 0;
};

inline std::optional<cli_error> load(const options& opt, loaded& out) {
  if (!opt.has("model") && !opt.has("quantized")) return cli_error{2, "needs --model DIR or --quantized FILE"};
  if (!opt.has("quantized")) {
    const std::filesystem::path dir = *opt.text("model");
    auto m = llama::model::load(dir);
    if (!m.ok()) return error_of(m.as_outcome());
    auto source = sageptq::io::checkpoint::open(dir);  // the source dtype's bits, e.g. 16 for bf16
    if (!source.ok()) return error_of(source.as_outcome());
    const sageptq::io::tensor* q = source->find("model.layers.0.self_attn.q_proj.weight");
    out.full_bpw = out.paper_bpw = q ? 8.0 * static_cast<double>(sageptq::io::dtype_size(q->type)) : 32.0;
    out.engine = std::move(m).value();
    return std::nullopt;
  }
  const std::filesystem::path path = *opt.text("quantized");
  auto q = llama::load_quantized_model(path);
  if (!q.ok()) return error_of(q.as_outcome());
  if (opt.has("model")) {
    auto source = sageptq::io::checkpoint::open(*opt.text("model"));
    if (!source.ok()) return error_of(source.as_outcome());
    const auto fingerprint = sageptq::io::weights_fingerprint(*source);
    if (fingerprint != q->file.source_fingerprint)
      return cli_error{1, path.string() + " was quantized from weights with fingerprint " +
                              sageptq::io::fingerprint_hex(q->file.source_fingerprint) + ", but " + *opt.text("model") +
                              " has " + sageptq::io::fingerprint_hex(fingerprint)};
  }
  // Over the source model's linear weights: weights a pruned (toga) model dropped count 0 bits, its kept-structure
  // masks and the first column of each column part after a weight's first count as stored (llama/toga.hpp).
  const auto bits = q->file.total_bits();
  const sageptq::toga::model_shape shape = llama::toga_shape(q->engine.config());
  const std::uint64_t masks = q->file.method == "toga" ? shape.mask_bits() : 0;
  std::uint64_t boundaries = 0;
  for (const auto& t : q->file.packed)
    if (t.columns && t.columns->begin > 0) boundaries += sageptq::toga::run_boundary_bits;
  const auto weights = static_cast<double>(shape.source_weights());
  out.full_bpw = static_cast<double>(bits.full_bits() + masks + boundaries) / weights;
  out.paper_bpw = static_cast<double>(bits.paper_bits) / weights;
  out.engine = std::move(q->engine);
  return std::nullopt;
}

inline std::optional<cli_error> eval(const options& opt, std::ostream& out, std::ostream& err) {
  if (!opt.has("tokens")) return cli_error{2, "eval needs --tokens TOKENS"};
  long long ctx = 512, max_windows = 0, threads = default_threads();
  if (auto e = opt.integer("ctx", 1, 1 << 20, ctx)) return e;
  if (auto e = opt.integer("max-windows", 1, 1LL << 40, max_windows)) return e;
  if (auto e = opt.integer("threads", 1, 1024, threads)) return e;
  loaded model;
  if (auto e = load(opt, model)) return e;
  auto tokens = sageptq::io::read_tokens(*opt.text("tokens"), static_cast<std::uint32_t>(model.engine->config().vocab_size));
  if (!tokens.ok()) return error_of(tokens.as_outcome());
  llama::perplexity_options popt;
  popt.context = ctx;
  popt.max_windows = max_windows;
  const progress_bar bar(err, "eval");
  popt.progress = [&](index_t done, index_t total) { bar(done, total); };
  auto ppl = llama::evaluate_perplexity(*model.engine, *tokens, popt, sageptq::thread_executor(static_cast<unsigned>(threads)));
  if (!ppl.ok()) return error_of(ppl.as_outcome());
  char line[160];
  std::snprintf(line, sizeof line, "ppl=%.4f full_bpw=%.4f paper_bpw=%.4f windows=%lld\n", ppl->perplexity,
                model.full_bpw, model.paper_bpw, static_cast<long long>(ppl->windows));
  out << line;
  return std::nullopt;
}

inline std::optional<cli_error> generate(const options& opt, std::ostream& out) {
  if (!opt.has("prompt-tokens") || !opt.has("n")) return cli_error{2, "generate needs --prompt-tokens TOKENS and --n N"};
  long long n = 0;
  if (auto e = opt.integer("n", 1, 1 << 20, n)) return e;
  loaded model;
  if (auto e = load(opt, model)) return e;
  const auto& cfg = model.engine->config();
  auto prompt = sageptq::io::read_tokens(*opt.text("prompt-tokens"), static_cast<std::uint32_t>(cfg.vocab_size));
  if (!prompt.ok()) return error_of(prompt.as_outcome());
  const auto length = static_cast<index_t>(prompt->size());
  if (length < 1 || length + n > cfg.max_position_embeddings)
    return cli_error{2, "prompt of " + std::to_string(length) + " tokens + " + std::to_string(n) +
                            " new ones must be in [1, " + std::to_string(cfg.max_position_embeddings) + "]"};
  const sageptq::thread_executor exec(default_threads());
  llama::kv_cache cache(cfg, length + n);
  std::vector<float> logits(static_cast<std::size_t>(length * cfg.vocab_size));
  model.engine->forward(*prompt, cache, sageptq::make_matrix_view(logits.data(), length, cfg.vocab_size), exec);
  const float* last = logits.data() + (length - 1) * cfg.vocab_size;
  std::string ids;
  for (long long i = 0; i < n; ++i) {
    const auto next = static_cast<std::uint16_t>(std::max_element(last, last + cfg.vocab_size) - last);
    ids += (i ? " " : "") + std::to_string(next);
    if (i + 1 == n) break;
    model.engine->forward(std::span(&next, 1), cache, sageptq::make_matrix_view(logits.data(), 1, cfg.vocab_size), exec);
    last = logits.data();
  }
  out << ids << '\n';
  return std::nullopt;
}

/// Runs the CLI on `args` (without the program name). Returns 0 on success, 2 for usage errors, 1 otherwise;
/// errors go to `err` as "sageptq: <message>".
inline int run_cli(std::span<const std::string> args, std::ostream& out, std::ostream& err) {
  const auto fail = [&](const cli_error& e) {
    err << "sageptq: " << e.message << '\n';
    if (e.exit_code == 2) err << usage;
    return e.exit_code;
  };
  if (args.empty()) return fail({2, "no command"});
  const std::string& command = args[0];
  const std::map<std::string, std::set<std::string>> allowed = {
      {"quantize",
       {"model", "calib", "method", "bits", "group", "target-bpw", "calib-windows", "ctx", "seed", "threads", "out",
        "column-blocks", "precisions", "score-windows", "report"}},
      {"eval", {"model", "quantized", "tokens", "ctx", "max-windows", "threads"}},
      {"generate", {"model", "quantized", "prompt-tokens", "n"}}};
  const auto it = allowed.find(command);
  if (it == allowed.end()) return fail({2, "unknown command \"" + command + "\""});
  options opt;
  if (auto e = options::parse(args.subspan(1), it->second, command, opt)) return fail(*e);
  std::optional<cli_error> e = command == "quantize" ? quantize(opt, out, err)
                               : command == "eval"   ? eval(opt, out, err)
                                                     : generate(opt, out);
  return e ? fail(*e) : 0;
}

}  // namespace sageptq_cli
