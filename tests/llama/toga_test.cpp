// TOGA end to end on stories260k (examples/llama/toga.hpp, the CLI's --method toga) and the pruned decoder layers it
// produces. The allocation and search themselves are tested on synthetic profiles in tests/toga/.

#include <doctest/doctest.h>

#include <sageptq/io/tokens.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../examples/cli/cli.hpp"
#include "../../examples/llama/perplexity.hpp"
#include "../../examples/llama/quantize.hpp"
#include "../../examples/llama/quantized_model.hpp"
#include "../../examples/llama/toga.hpp"
#include "../io/temp_dir.hpp"

using llama::linear_kind;
using sageptq::index_t;
using sageptq::make_matrix_view;
using sageptq::status;
using sageptq::thread_executor;
namespace toga = sageptq::toga;

namespace {

const std::filesystem::path shared = SAGEPTQ_SHARED_DIR;
const std::filesystem::path stories_dir = shared / "models/stories260k";
const std::filesystem::path stories_calib = shared / "data/tinystories/calib.tok512.u16.bin";
const std::filesystem::path stories_eval = shared / "data/tinystories/eval.tok512.u16.bin";

std::vector<std::uint16_t> read_tokens(const std::filesystem::path& path) {
  REQUIRE_MESSAGE(std::filesystem::exists(path), "missing shared file " << path);
  auto t = sageptq::io::read_tokens(path, 512);
  REQUIRE_MESSAGE(t.ok(), t.message());
  return std::move(t).value();
}

llama::model load_stories() {
  REQUIRE_MESSAGE(std::filesystem::exists(stories_dir / "model.safetensors"), "missing shared file " << stories_dir);
  auto m = llama::model::load(stories_dir);
  REQUIRE_MESSAGE(m.ok(), m.message());
  return std::move(m).value();
}

/// 8 calibration windows of 32 tokens, drawn as the CLI draws them with seed 0.
const sageptq::pipeline::token_windows& calibration_windows() {
  static const sageptq::pipeline::token_windows windows = [] {
    sageptq::pipeline::window_options opt;
    opt.count = 8;
    opt.context = 32;
    auto w = sageptq::pipeline::sample_windows(read_tokens(stories_calib), opt);
    REQUIRE(w.ok());
    return std::move(w).value();
  }();
  return windows;
}

/// Perplexity on the first 6 windows of the held-out tokens (text neither the calibration nor the search saw).
double held_out_perplexity(const llama::model& m) {
  static const std::vector<std::uint16_t> tokens = read_tokens(stories_eval);
  llama::perplexity_options opt;
  opt.max_windows = 6;
  auto ppl = llama::evaluate_perplexity(m, tokens, opt, thread_executor(2));
  REQUIRE_MESSAGE(ppl.ok(), ppl.message());
  return ppl->perplexity;
}

/// Layer l's linear `kind` as a dense layer, with only the `rows` and `cols` listed (empty: all) kept, or with the
/// others zeroed instead.
std::unique_ptr<llama::linear_layer> restricted(const llama::model& m, index_t l, linear_kind kind,
                                                const std::vector<index_t>& rows, const std::vector<index_t>& cols,
                                                bool zero_instead) {
  const auto w = m.layer(l).dense(kind)->weight();
  const auto kept = [](const std::vector<index_t>& list, index_t i) {
    return list.empty() || std::find(list.begin(), list.end(), i) != list.end();
  };
  std::vector<float> out;
  index_t out_rows = 0;
  for (index_t r = 0; r < w.rows(); ++r) {
    if (!zero_instead && !kept(rows, r)) continue;
    ++out_rows;
    for (index_t c = 0; c < w.cols(); ++c)
      if (zero_instead || kept(cols, c)) out.push_back(kept(rows, r) && kept(cols, c) ? w(r, c) : 0.0f);
  }
  return std::make_unique<llama::dense_linear>(out_rows, std::ssize(out) / out_rows, std::move(out));
}

/// Prunes KV group `group` and every odd MLP channel of layer l: by removal, or by zeroing q/k/v's rows of the group
/// and gate/up's rows of the channels, and o's and down's columns (which removes exactly their contributions).
void prune(llama::model& m, index_t l, index_t group, bool zero_instead) {
  const auto& c = m.config();
  const index_t hd = c.head_dim, per_group = c.num_attention_heads / c.num_key_value_heads * hd;
  std::vector<index_t> q_rows, kv_rows, channels;
  for (index_t g = 0; g < c.num_key_value_heads; ++g)
    if (g != group) {
      for (index_t i = 0; i < per_group; ++i) q_rows.push_back(g * per_group + i);
      for (index_t i = 0; i < hd; ++i) kv_rows.push_back(g * hd + i);
    }
  for (index_t j = 0; j < c.intermediate_size; j += 2) channels.push_back(j);
  const std::array<std::pair<std::vector<index_t>, std::vector<index_t>>, llama::linear_kinds> kept = {
      {{q_rows, {}}, {kv_rows, {}}, {kv_rows, {}}, {{}, q_rows}, {channels, {}}, {channels, {}}, {{}, channels}}};
  std::array<std::unique_ptr<llama::linear_layer>, llama::linear_kinds> linears;
  for (int k = 0; k < llama::linear_kinds; ++k) {
    const auto& [rows, cols] = kept[static_cast<std::size_t>(k)];
    linears[static_cast<std::size_t>(k)] = restricted(m, l, static_cast<linear_kind>(k), rows, cols, zero_instead);
  }
  REQUIRE(m.swap_layer_linears(l, linears).ok());
}

struct cli_run {
  int code;
  std::string text;  ///< stdout and stderr
};

cli_run cli(std::vector<std::string> args) {
  std::ostringstream out, err;
  const int code = sageptq_cli::run_cli(args, out, err);
  return {code, out.str() + err.str()};
}

}  // namespace

TEST_CASE("llama: pruned decoder layers (whole KV groups, MLP channels) run as the zeroed full layers") {
  llama::model removed = load_stories(), zeroed = load_stories();
  const auto tokens = read_tokens(stories_eval);
  const std::span<const std::uint16_t> window(tokens.data(), 96);
  for (const auto& [layer, group] : {std::pair<index_t, index_t>{1, 2}, {3, 0}}) {
    prune(removed, layer, group, false);
    prune(zeroed, layer, group, true);
  }
  CHECK(removed.layer(1).linear(linear_kind::k).out_features() == 24);
  CHECK(removed.layer(3).linear(linear_kind::down).in_features() == 86);
  const index_t vocab = removed.config().vocab_size;
  const auto logits = [&](const llama::model& m) {
    llama::kv_cache cache(m.config(), std::ssize(window));
    std::vector<float> out(window.size() * static_cast<std::size_t>(vocab));
    m.forward(window, cache, make_matrix_view(out.data(), std::ssize(window), vocab), thread_executor(2));
    return out;
  };
  const auto a = logits(removed), b = logits(zeroed);
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  CHECK(worst < 1e-4);

  // Incremental decoding through the KV cache agrees with the full window on the pruned model.
  llama::kv_cache cache(removed.config(), std::ssize(window));
  std::vector<float> step(static_cast<std::size_t>(vocab));
  for (index_t t = 0; t < std::ssize(window); ++t) {
    removed.forward(window.subspan(static_cast<std::size_t>(t), 1), cache, make_matrix_view(step.data(), 1, vocab),
                    thread_executor(1));
    if (t % 19 == 0)
      for (index_t c = 0; c < vocab; ++c)
        CHECK(step[static_cast<std::size_t>(c)] ==
              doctest::Approx(a[static_cast<std::size_t>(t * vocab + c)]).epsilon(1e-4));
  }

  // Shapes the structure does not allow are refused, and nothing is swapped.
  const auto& cfg = removed.config();
  const auto broken = [&](linear_kind k, bool rows, index_t by) {
    auto shapes = removed.layer(0).shapes();
    auto& [r, c] = shapes[static_cast<std::size_t>(k)];
    (rows ? r : c) -= by;
    return !llama::pruned_shape_error(cfg, shapes).empty();
  };
  CHECK_FALSE(broken(linear_kind::q, true, 0));
  CHECK(broken(linear_kind::q, true, cfg.head_dim));  // one query head, not a whole group
  CHECK(broken(linear_kind::k, true, 3));             // part of a head
  CHECK(broken(linear_kind::down, false, 1));         // down disagrees with gate
  std::array<std::unique_ptr<llama::linear_layer>, llama::linear_kinds> bad;
  for (int k = 0; k < llama::linear_kinds; ++k)
    bad[static_cast<std::size_t>(k)] = restricted(removed, 0, static_cast<linear_kind>(k), {}, {}, false);
  bad[static_cast<std::size_t>(linear_kind::up)] = restricted(removed, 0, linear_kind::up, {0, 1}, {}, false);
  CHECK(removed.swap_layer_linears(0, bad).code() == status::invalid_shape);
  CHECK(removed.layer(0).linear(linear_kind::up).out_features() == cfg.intermediate_size);
}

TEST_CASE("toga on stories260k through the CLI: budget met, pruned structures absent, mixed precision, beats sage, "
          "deterministic") {
  // Uniform sage (default options) on the calibration windows the CLI draws; its full bpw is toga's budget.
  llama::model sage_model = load_stories();
  llama::quantize_options qopt;
  sageptq::pipeline::sage_config sage;
  sage.target_bpw = 2.0;  // reaches ~1.6 full bpw: stories260k's 64-column rows make sage's fixed costs large
  qopt.method = sage;
  auto sage_q = llama::quantize_model(sage_model, calibration_windows(), qopt, thread_executor(2));
  REQUIRE_MESSAGE(sage_q.ok(), sage_q.message());
  sageptq::format::bit_breakdown sage_bits;
  for (const auto& t : sage_q->tensors) sage_bits += sageptq::io::packed_bits(t.packed);
  const double budget = std::floor(sage_bits.full_bpw() * 1e4) / 1e4;  // as the CLI's argument spells it

  // Two budgets from one profiling pass, with the default options; windows as calibration_windows() draws them.
  sageptq_test::temp_dir dir;
  const std::string model = stories_dir.string(), pattern = (dir / "toga-{bpw}").string();  // .safetensors, .json
  const auto quantize = [&](const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> args = {"quantize", "--model", model, "--calib", stories_calib.string(),
                                     "--method", "toga", "--out", out};
    args.insert(args.end(), extra.begin(), extra.end());
    return cli(args);
  };
  const std::string budgets = sageptq_cli::with_budget("{bpw},2.5", budget);
  const auto run = quantize(pattern + ".safetensors", {"--target-bpw", budgets, "--calib-windows", "8", "--ctx", "32",
                                                       "--threads", "2", "--report", pattern + ".json"});
  REQUIRE_MESSAGE(run.code == 0, run.text);
  CHECK(std::count(run.text.begin(), run.text.end(), '\n') >= 3);  // the profile line and one line per file

  const toga::model_shape shape = llama::toga_shape(sage_model.config());
  for (const double bpw : {budget, 2.5}) {
    const std::string name = sageptq_cli::with_budget(pattern, bpw);
    nlohmann::json report;
    std::ifstream(name + ".json") >> report;
    REQUIRE_MESSAGE(report.contains("toga"), name);
    auto loaded = llama::load_quantized_model(name + ".safetensors");
    REQUIRE_MESSAGE(loaded.ok(), loaded.message());

    // The budget, counted from the packed matrices in the file plus the masks, over the source model's weights.
    const std::uint64_t bits = loaded->file.total_bits().full_bits() + shape.mask_bits();
    CHECK(report["totals"]["mask_bits"] == 5 * (4 + 172));
    CHECK(bits <= static_cast<std::uint64_t>(bpw * static_cast<double>(shape.source_weights())));
    CHECK(static_cast<double>(bits) / static_cast<double>(shape.source_weights()) > bpw - 0.05);  // spent
    CHECK(report["totals"]["full_bpw"].get<double>() ==
          doctest::Approx(static_cast<double>(bits) / static_cast<double>(shape.source_weights())));

    // Pruned structures are absent: every packed shape is that of the kept KV groups and channels.
    const auto& layers = report["toga"]["layers"];
    REQUIRE(std::ssize(layers) == shape.layers);
    std::set<std::string> precisions;
    bool pruned = false;
    for (index_t l = 0; l < shape.layers; ++l) {
      const auto& layer = layers[static_cast<std::size_t>(l)];
      const auto groups = std::ssize(layer["kv_groups"]), channels = std::ssize(layer["channels"]);
      pruned = pruned || groups < shape.kv_heads || channels < shape.intermediate;
      for (int k = 0; k < llama::linear_kinds; ++k) {
        const auto* t = loaded->file.find_packed(llama::weight_name(l, static_cast<linear_kind>(k)));
        REQUIRE(t);
        CHECK(sageptq::io::packed_shape(t->packed) ==
              shape.linear_shape(static_cast<toga::linear>(k), groups, channels));
        precisions.insert(layer["precision"][llama::plan_name(static_cast<linear_kind>(k))].get<std::string>());
      }
    }
    CHECK(pruned);
    CHECK(precisions.size() >= 2);

    // eval counts the same bits.
    const auto e = cli({"eval", "--model", model, "--quantized", name + ".safetensors", "--tokens",
                        stories_eval.string(), "--max-windows", "1", "--ctx", "64"});
    REQUIRE_MESSAGE(e.code == 0, e.text);
    const auto at = e.text.find("full_bpw=");
    REQUIRE(at != std::string::npos);
    CHECK(std::stod(e.text.substr(at + 9)) ==
          doctest::Approx(report["totals"]["full_bpw"].get<double>()).epsilon(1e-4));
  }

  // Held-out text: stated margin, toga's perplexity at most 75% of uniform sage's at the same budget.
  const std::string file = sageptq_cli::with_budget(pattern, budget) + ".safetensors";
  auto toga_model = llama::load_quantized_model(file);
  REQUIRE(toga_model.ok());
  const double toga_ppl = held_out_perplexity(toga_model->engine), sage_ppl = held_out_perplexity(sage_model);
  MESSAGE("stories260k, 6 held-out windows: toga ppl " << toga_ppl << " vs uniform sage ppl " << sage_ppl << " at "
                                                       << budget << " full bpw");
  CHECK(toga_ppl < 0.75 * sage_ppl);

  // The same seed gives the same packed bytes in process, on another thread count (the CLI ran on 2).
  llama::model m = load_stories();
  auto session = llama::toga_session::create(m, calibration_windows(), {}, thread_executor(3));
  REQUIRE_MESSAGE(session.ok(), session.message());
  auto r = session->compress(budget);
  REQUIRE_MESSAGE(r.ok(), r.message());
  CHECK(r->score <= r->allocated_score);
  REQUIRE(r->tensors.size() == toga_model->file.packed.size());
  for (const auto& t : r->tensors) {
    const auto* written = toga_model->file.find_packed(t.name);
    REQUIRE(written);
    CHECK(sageptq::io::decode_packed(t.packed) == sageptq::io::decode_packed(written->packed));
  }
  CHECK(session->compress(0.1).code() == status::invalid_argument);  // below what even pruning reaches

  const auto refused = [&](const std::string& out, std::vector<std::string> extra, const std::string& message) {
    const auto e = quantize(out, std::move(extra));
    CHECK(e.code == 2);
    CHECK_MESSAGE(e.text.find(message) != std::string::npos, e.text);
  };
  refused(pattern, {"--target-bpw", "1.6", "--bits", "2"}, "--bits does not apply to method toga");
  refused(pattern, {}, "needs --calib TOKENS and --target-bpw");
  refused((dir / "plain").string(), {"--target-bpw", "1.6,2.5"}, "must contain {bpw}");
}

TEST_CASE("toga with input-channel blocks on stories260k: mixed blocks, exact bits, parts in the file, same engine") {
  llama::model m = load_stories();
  llama::toga_options opt;
  opt.column_blocks = 2;
  auto session = llama::toga_session::create(m, calibration_windows(), opt, thread_executor(2));
  REQUIRE_MESSAGE(session.ok(), session.message());
  const toga::profile& p = session->profile();
  CHECK(p.column_blocks == 2);
  // The blocks of a linear split its measured loss: non-negative shares, infinite exactly where the whole is.
  for (const auto& lp : p.layers)
    for (const auto& q : lp.quant_loss)
      for (int pi = 0; pi < p.menu(); ++pi) {
        const double a = q[static_cast<std::size_t>(pi)], b = q[static_cast<std::size_t>(p.menu() + pi)];
        CHECK(std::isfinite(a) == std::isfinite(b));
        if (std::isfinite(a)) CHECK((a >= 0 && b >= 0));
      }

  // Budgets from one profile; the one whose allocation splits the most linears is written below.
  std::optional<llama::toga_result> r;
  double bpw = 0;
  std::uint64_t most_parts = 0;
  for (const double budget : {1.1, 1.6, 2.5}) {
    auto q = session->compress(budget);
    REQUIRE_MESSAGE(q.ok(), q.message());
    std::uint64_t parts_after_first = 0;
    for (const auto& t : q->tensors) parts_after_first += t.columns && t.columns->begin > 0;
    CHECK(q->boundary_bits == toga::run_boundary_bits * parts_after_first);
    CHECK(q->packed_bits.full_bits() + q->mask_bits + q->boundary_bits <= toga::budget_bits(p, budget));
    CHECK(toga::configuration_bits(p, q->configuration) >=
          q->packed_bits.full_bits() + q->mask_bits + q->boundary_bits);
    if (!r || parts_after_first > most_parts) r = std::move(q).value(), bpw = budget, most_parts = parts_after_first;
  }
  MESSAGE("stories260k, 2 blocks per linear: " << most_parts << " extra column parts at " << bpw << " full bpw");
  CHECK(most_parts > 0);  // some linear mixes precisions across its blocks

  // Written and loaded back: every weight in its parts, the engine runs them, eval counts the same bits.
  sageptq_test::temp_dir dir;
  auto contents = llama::assemble_quantized_model(stories_dir, "toga", session->describe(*r, bpw).dump(), r->tensors);
  REQUIRE_MESSAGE(contents.ok(), contents.message());
  const auto path = dir / "toga-blocks.safetensors";
  REQUIRE(sageptq::io::write_quantized_model(path, *contents).ok());
  auto loaded = llama::load_quantized_model(path);
  REQUIRE_MESSAGE(loaded.ok(), loaded.message());
  for (const auto& t : r->tensors) {
    const auto parts = loaded->file.find_parts(t.name);
    REQUIRE(!parts.empty());
    CHECK((parts.size() > 1) == t.columns.has_value());
  }
  const auto e = cli({"eval", "--quantized", path.string(), "--tokens", stories_eval.string(), "--max-windows", "1",
                      "--ctx", "64"});
  REQUIRE_MESSAGE(e.code == 0, e.text);
  const auto at = e.text.find("full_bpw=");
  REQUIRE(at != std::string::npos);
  CHECK(std::stod(e.text.substr(at + 9)) == doctest::Approx(r->full_bpw()).epsilon(1e-4));
  CHECK(held_out_perplexity(loaded->engine) > 1);
}
