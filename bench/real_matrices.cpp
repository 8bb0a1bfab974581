// The real-matrix reports of issues 3 and 4 on gutenberg-llama-20m, every linear matrix (6 layers x 7):
//  (a) group estimators: G of each estimator of the library (graph: cut_components, modularity, eigengap; and
//      group::search_groups, the bits-priced Frobenius search) against G*, the G of the lowest calibrated error
//      over an exhaustive search of G = 1..max_groups, where each G is one full sage run (its own threshold search)
//      with group_grid = {G}. Error of sage at the estimate vs at G*, and the time of each path.
//  (b) adaptive threshold: sage's per-matrix search against the best single fixed saliency rule (one mu + t sigma
//      or one top fraction, everything else of sage unchanged), the rule chosen leave-one-out on the other 41
//      matrices (lowest sum of errors), at each budget of full bpw.
// Calibrated error: e = tr((W - Q) H (W - Q)^T) / tr(W H W^T) with the undamped H of the matrix's inputs,
// accumulated from the full-precision model's activations (no sublayer quantized: every matrix sees the inputs the
// FP model gives it) on seeded windows from the first 90% of calib.u16.bin.
// Writes a markdown report (--out, default bench/results/stages.md); progress on stderr.
//
//   g++-12 -std=c++20 -O2 -DNDEBUG -Iinclude -Iexamples -isystem /usr/include/eigen3
//       -DSAGEPTQ_SHARED_DIR='"../shared"' bench/real_matrices.cpp -lpthread -o /tmp/real_matrices
//   nice -n 10 /tmp/real_matrices [--quick] [--windows N] [--context N] [--seed S] [--threads T]
//                                 [--budgets 1.1,1.5] [--max-groups G] [--group-grid 1,2,4,8] [--screened N]
//                                 [--out FILE]
// --quick: 8 windows of 256 tokens, budget 1.1 only, G* searched over 1..8 (about 8 minutes on 2 busy cores).

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/graph/builder.hpp>
#include <sageptq/group/estimators.hpp>
#include <sageptq/group/search.hpp>
#include <sageptq/io/tokens.hpp>
#include <sageptq/pipeline/calibrate.hpp>
#include <sageptq/pipeline/sage.hpp>

#include "llama/model.hpp"

#ifndef SAGEPTQ_SHARED_DIR
#define SAGEPTQ_SHARED_DIR "../shared"
#endif

namespace {

using namespace sageptq;
using llama::linear_kind;
constexpr double inf = std::numeric_limits<double>::infinity();

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "real_matrices: %s\n", what.c_str());
  std::exit(1);
}

template <class T>
T take(result<T> r, const std::string& what) {
  if (!r.has_value()) die(what + ": " + r.message());
  return std::move(r).value();
}

std::string strf(const char* fmt, auto... args) {
  std::string s(static_cast<std::size_t>(std::snprintf(nullptr, 0, fmt, args...)), '\0');
  std::snprintf(s.data(), s.size() + 1, fmt, args...);
  return s;
}

struct options {
  index_t windows = 32, context = 512;
  std::uint64_t seed = 0;
  unsigned threads = 2;
  std::vector<double> budgets = {1.1, 1.5};
  int max_groups = 16;
  std::vector<int> group_grid = {1, 2, 4, 8};  ///< sage's candidate G in (b)
  int screened = 3;                            ///< sage's screened_candidates
  bool quick = false;
  std::string out = "bench/results/stages.md";
};

/// One sage run: the calibrated error of what it stores, what it chose, and its wall time.
struct sage_run {
  double error = inf;  ///< e = tr(E H E^T) / tr(W H W^T), undamped H
  int groups = 0;
  double salient_fraction = 0, full_bpw = 0, seconds = 0;
  std::vector<index_t> salient;  ///< source columns stored at higher precision
};

/// A matrix with its calibration statistics.
struct matrix_case {
  std::string name;  ///< "L3.gate"
  matrix_view<const float> w;
  const Eigen::MatrixXd* h = nullptr;           ///< undamped
  const calib::hessian_factor* factor = nullptr;
  double reference = 0;                         ///< tr(W H W^T)
};

sage_run run_sage(const matrix_case& m, const pipeline::sage_config& cfg, const thread_executor& exec) {
  const double t0 = now();
  auto q = pipeline::quantize_sage(m.w, *m.factor, cfg, exec);
  sage_run r;
  r.seconds = now() - t0;
  if (!q.has_value()) return r;  // no candidate within the budget: infinite error
  r.error = calib::hessian_weighted_error(m.w, q->dequantized_view(), *m.h, exec) / m.reference;
  r.groups = q->report.groups;
  r.salient_fraction = q->report.salient_fraction;
  r.full_bpw = q->report.bits.full_bpw();
  const auto v = q->packed.view();
  for (index_t j = v.shape.binarized_cols(); j < m.w.cols(); ++j) r.salient.push_back(v.source_column(j));
  std::sort(r.salient.begin(), r.salient.end());
  return r;
}

std::string describe(const pipeline::sage_config& c) {
  const auto list = [](const auto& v) {
    std::string s = "{";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + strf("%g", static_cast<double>(v[i]));
    return s + "}";
  };
  return "salient_bits_grid " + list(c.salient_bits_grid) + ", metric hessian, sigma_grid " + list(c.sigma_grid) +
         ", fraction_grid " + list(c.fraction_grid) + ", group_grid " + list(c.group_grid) +
         strf(", screened_candidates %d, screen_rows %lld, compensate %s, order salient_last, act_order %s, "
                "refit_row_scales %s, block_size %lld, row_padding automatic",
                c.screened_candidates, static_cast<long long>(c.screen_rows), c.compensate ? "on" : "off",
                c.act_order ? "on" : "off", c.refit_row_scales ? "on" : "off", static_cast<long long>(c.block_size));
}

/// The configuration of every run, written out in full so the results do not depend on the library's defaults.
pipeline::sage_config base_config(double budget, const std::vector<int>& group_grid, int screened) {
  pipeline::sage_config c;
  c.target_bpw = budget;
  c.salient_bits_grid = {2, 3, 4};
  c.metric = pipeline::sage_saliency::hessian;
  c.sigma_grid = {6.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5};
  c.fraction_grid = {0.02, 0.05, 0.1, 0.2, 0.3, 0.5};
  c.group_grid = group_grid;
  c.screened_candidates = screened;
  c.screen_rows = 512;
  c.compensate = true;
  c.order = pipeline::sage_order::salient_last;
  c.act_order = false;
  c.refit_row_scales = true;
  c.block_size = 128;
  c.row_padding = pipeline::sage_row_padding::automatic;
  return c;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) die("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick") {
      o.quick = true;
      o.windows = 8;
      o.context = 256;
      o.budgets = {1.1};
      o.max_groups = 8;
    } else if (a == "--windows") o.windows = std::atoll(value().c_str());
    else if (a == "--context") o.context = std::atoll(value().c_str());
    else if (a == "--seed") o.seed = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--threads") o.threads = static_cast<unsigned>(std::atoi(value().c_str()));
    else if (a == "--max-groups") o.max_groups = std::atoi(value().c_str());
    else if (a == "--screened") o.screened = std::atoi(value().c_str());
    else if (a == "--out") o.out = value();
    else if (a == "--budgets") {
      o.budgets.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) o.budgets.push_back(std::atof(item.c_str()));
    } else if (a == "--group-grid") {
      o.group_grid.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) o.group_grid.push_back(std::atoi(item.c_str()));
    } else die("unknown option " + a);
  }
  if (o.windows < 1 || o.context < 2 || o.max_groups < 1 || o.max_groups > 256 || o.budgets.empty() ||
      o.group_grid.empty() || o.screened < 1)
    die("need --windows >= 1, --context >= 2, --max-groups in [1, 256], --screened >= 1, a budget and a G");
  return o;
}

/// Per layer, one accumulator per distinct input: {q, k, v}, o, {gate, up}, down.
constexpr int input_of(linear_kind k) {
  switch (k) {
    case linear_kind::q: case linear_kind::k: case linear_kind::v: return 0;
    case linear_kind::o: return 1;
    case linear_kind::gate: case linear_kind::up: return 2;
    case linear_kind::down: return 3;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const options opt = parse(argc, argv);
  std::string command = argv[0];
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  const thread_executor exec(opt.threads);
  const double t_start = now();

  // --- Calibration statistics of every linear layer, from the full-precision model -----------------------------
  const std::string shared = SAGEPTQ_SHARED_DIR;
  auto model = take(llama::model::load(shared + "/models/gutenberg-llama-20m"), "loading gutenberg-llama-20m");
  const auto& cfg = model.config();
  const auto tokens = take(io::read_tokens(shared + "/data/gutenberg/calib.u16.bin",
                                           static_cast<std::uint32_t>(cfg.vocab_size)), "reading calib.u16.bin");
  const auto windows = take(pipeline::sample_windows(tokens, {.count = opt.windows, .context = opt.context,
                                                              .seed = opt.seed, .validation_fraction = 0.1}),
                            "sampling windows");
  const index_t layers = model.layer_count(), dim = cfg.hidden_size;
  std::vector<std::array<std::unique_ptr<calib::hessian_accumulator>, 4>> acc(static_cast<std::size_t>(layers));
  for (index_t l = 0; l < layers; ++l)
    for (linear_kind k : {linear_kind::q, linear_kind::o, linear_kind::gate, linear_kind::down})
      acc[static_cast<std::size_t>(l)][static_cast<std::size_t>(input_of(k))] =
          std::make_unique<calib::hessian_accumulator>(model.layer(l).linear(k).in_features());
  outcome observed;
  const llama::linear_input_hook hook = [&](const llama::linear_input& in) {
    if (in.kind != linear_kind::q && in.kind != linear_kind::o && in.kind != linear_kind::gate &&
        in.kind != linear_kind::down)
      return;  // k, v and up see the rows q and gate saw
    if (observed.ok())
      observed = acc[static_cast<std::size_t>(in.layer)][static_cast<std::size_t>(input_of(in.kind))]->add_batch(in.x, exec);
  };
  constexpr index_t chunk = 8;
  std::vector<llama::kv_block> blocks(chunk, llama::make_kv_block(cfg, opt.context));
  std::vector<llama::kv_block*> caches;
  for (auto& b : blocks) caches.push_back(&b);
  std::vector<float> hidden;
  for (index_t s0 = 0; s0 < windows.count(); s0 += chunk) {
    const index_t n = std::min(chunk, windows.count() - s0);
    hidden.assign(static_cast<std::size_t>(n * opt.context * dim), 0.0f);
    const auto view = make_matrix_view(hidden.data(), n * opt.context, dim);
    model.embed(std::span(windows.tokens).subspan(static_cast<std::size_t>(s0 * opt.context),
                                                  static_cast<std::size_t>(n * opt.context)), view);
    for (index_t l = 0; l < layers; ++l)
      model.forward_layer(l, view, std::span<llama::kv_block* const>(caches.data(), static_cast<std::size_t>(n)), 0,
                          exec, hook);
  }
  if (!observed.ok()) die("accumulating the Hessians: " + observed.message());
  std::vector<std::array<calib::hessian_factor, 4>> factors(static_cast<std::size_t>(layers));
  for (index_t l = 0; l < layers; ++l)
    for (int i = 0; i < 4; ++i)
      factors[static_cast<std::size_t>(l)][static_cast<std::size_t>(i)] =
          take(calib::prepare(*acc[static_cast<std::size_t>(l)][static_cast<std::size_t>(i)], {.percdamp = 0.01}, exec),
               "preparing the Hessian of layer " + std::to_string(l));
  const double t_calib = now() - t_start;
  std::fprintf(stderr, "calibration statistics: %lld windows x %lld tokens, %.1f s\n",
               static_cast<long long>(windows.count()), static_cast<long long>(opt.context), t_calib);

  std::vector<matrix_case> cases;
  for (index_t l = 0; l < layers; ++l)
    for (int k = 0; k < llama::linear_kinds; ++k) {
      const auto kind = static_cast<linear_kind>(k);
      constexpr const char* short_name[] = {"q", "k", "v", "o", "gate", "up", "down"};
      matrix_case m;
      m.name = strf("L%lld.%s", static_cast<long long>(l), short_name[k]);
      m.w = model.layer(l).dense(kind)->weight();
      const int i = input_of(kind);
      m.h = &acc[static_cast<std::size_t>(l)][static_cast<std::size_t>(i)]->hessian();
      m.factor = &factors[static_cast<std::size_t>(l)][static_cast<std::size_t>(i)];
      const float zero = 0.0f;
      const matrix_view<const float> zeros{&zero, {m.w.rows(), m.w.cols()}, {0, 0}};
      m.reference = calib::hessian_weighted_error(m.w, zeros, *m.h, exec);
      cases.push_back(std::move(m));
    }

  // --- (a) group estimators vs the searched G ------------------------------------------------------------------
  const double budget_a = opt.budgets.front();
  constexpr int estimators = 4;
  const char* estimator_name[estimators] = {"cut_components", "modularity", "eigengap", "search_groups (Frobenius)"};
  struct estimate_row {
    std::vector<sage_run> curve;  ///< curve[G - 1]: sage with group_grid = {G}
    int best = 1;                 ///< G*
    double search_seconds = 0;
    double graph_seconds = 0;
    std::array<int, estimators> groups{};
    std::array<double, estimators> seconds{};  ///< estimator alone (graph build counted separately)
    std::array<bool, estimators> converged{};
    double salient_fraction = 0;  ///< of the set excluded from the graph
  };
  std::vector<estimate_row> est(cases.size());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const matrix_case& m = cases[i];
    estimate_row& row = est[i];
    for (int g = 1; g <= opt.max_groups; ++g) {
      auto c = base_config(budget_a, opt.group_grid, opt.screened);
      c.group_grid = {g};
      row.curve.push_back(run_sage(m, c, exec));
      row.search_seconds += row.curve.back().seconds;
      if (row.curve.back().error < row.curve[static_cast<std::size_t>(row.best - 1)].error) row.best = g;
    }
    // The graph is built over the weights sage binarizes at G = 1 (its salient set at that G; the estimate must
    // come before G is known).
    const auto& salient = row.curve.front().salient;
    row.salient_fraction = static_cast<double>(salient.size()) / static_cast<double>(m.w.cols());
    saliency::salient_set set;
    set.unit = saliency::granularity::input_channel;
    set.rows = m.w.rows();
    set.cols = m.w.cols();
    set.indices = salient;
    double t0 = now();
    const auto g = take(graph::build(graph::features::value_and_column_scale{}, m.w, &set, graph::build_config{}, exec),
                        m.name + ": graph");
    row.graph_seconds = now() - t0;
    group::cut_components cut;
    cut.dims = graph::features::value_and_column_scale::dims;
    const auto count = [&](int e, const auto& estimator) {
      const double t = now();
      const auto r = estimator.count(g.graph, opt.max_groups);
      row.seconds[static_cast<std::size_t>(e)] = now() - t;
      if (!r.has_value()) die(m.name + ": " + estimator_name[e] + ": " + r.message());
      row.groups[static_cast<std::size_t>(e)] = r->groups;
      row.converged[static_cast<std::size_t>(e)] = r.ok();
    };
    count(0, cut);
    count(1, group::modularity{});
    count(2, group::eigengap{});
    t0 = now();
    const auto s = take(group::search_groups(group::column_groups{}, m.w, set.dense_mask(),
                                             {.max_groups = opt.max_groups, .bits_exchange = 4.0}),
                        m.name + ": search_groups");
    row.seconds[3] = now() - t0;
    row.groups[3] = s.best_groups;
    row.converged[3] = true;
    std::fprintf(stderr, "(a) %-8s G*=%d  cut %d  mod %d  eig %d  srch %d  [%.0f s]\n", m.name.c_str(), row.best,
                 row.groups[0], row.groups[1], row.groups[2], row.groups[3], now() - t_start);
  }

  // --- (b) adaptive threshold vs the best fixed rule, leave-one-out ---------------------------------------------
  struct rule {
    std::string name;
    std::vector<double> sigma, fraction;
  };
  std::vector<rule> rules;
  {
    const auto c = base_config(1.0, opt.group_grid, opt.screened);
    for (double t : c.sigma_grid) rules.push_back({strf("mu+%gsigma", t), {t}, {}});
    for (double p : c.fraction_grid) rules.push_back({strf("top %g%%", 100 * p), {}, {p}});
  }
  struct threshold_row {
    sage_run adaptive;
    std::vector<sage_run> fixed;  ///< per rule
  };
  std::vector<std::vector<threshold_row>> thr(opt.budgets.size(), std::vector<threshold_row>(cases.size()));
  for (std::size_t b = 0; b < opt.budgets.size(); ++b)
    for (std::size_t i = 0; i < cases.size(); ++i) {
      threshold_row& row = thr[b][i];
      row.adaptive = run_sage(cases[i], base_config(opt.budgets[b], opt.group_grid, opt.screened), exec);
      for (const rule& r : rules) {
        auto c = base_config(opt.budgets[b], opt.group_grid, opt.screened);
        c.sigma_grid = r.sigma;
        c.fraction_grid = r.fraction;
        row.fixed.push_back(run_sage(cases[i], c, exec));
      }
      std::fprintf(stderr, "(b) %.2f bpw %-8s [%.0f s]\n", opt.budgets[b], cases[i].name.c_str(), now() - t_start);
    }

  // --- Report --------------------------------------------------------------------------------------------------
  std::string md;
  const auto put = [&](const std::string& s) { md += s; };
  char date[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  put("# Real-matrix reports of the stages (issue 3 items 4 and 7, deferred to issue 4): gutenberg-llama-20m\n\n");
  put("Generated by `bench/real_matrices.cpp`" + std::string(opt.quick ? " in **quick mode** (not the full report)" : "") +
      ".\n\n");
  put(strf("- machine: %s, %u thread(s) (the VM's 2 cores shared with other jobs: times are indicative)\n",
             cpu_name().c_str(), opt.threads));
  put("- command: `" + command + "`\n");
  put(strf("- date: %s; total wall time %.0f s (calibration statistics %.0f s)\n", date, now() - t_start, t_calib));
  put(strf("- calibration: %lld windows of %lld tokens drawn uniformly (seed %llu, pipeline::sample_windows) from the "
             "first 90%% of `data/gutenberg/calib.u16.bin`; H = (2/N) sum x x^T of each matrix's inputs from the "
             "**full-precision model** (no sublayer quantized before, unlike the true-sequential pipeline); "
             "sage runs on calib::prepare(H, percdamp 0.01)\n",
             static_cast<long long>(windows.count()), static_cast<long long>(opt.context),
             static_cast<unsigned long long>(opt.seed)));
  put("- error: e = tr((W - Q) H (W - Q)^T) / tr(W H W^T) with the undamped H, Q = the decoded packed matrix "
      "(the square of sage's report.relative_error up to the 1% damping)\n");
  put("- sage_config of every run (fields overridden per experiment are named there): " + describe(base_config(budget_a, opt.group_grid, opt.screened)) +
      "; target_bpw per budget (per matrix, not spread over the model)\n\n");

  put(strf("## (a) Group estimators vs the searched G (budget %.2f full bpw)\n\n", budget_a));
  put(strf("G* = argmin over G = 1..%d of e(sage with group_grid = {G}); each run keeps sage's own threshold search "
             "(salient set and bits) at that G. The estimators see the kNN graph (graph::build, "
             "features::value_and_column_scale, default build_config: 16384 sampled weights, k = 10, self-tuning "
             "Gaussian) of the weights left binarized by sage's choice at G = 1, with max_groups = %d and their "
             "default knobs (cut_components with dims = 2). search_groups is group::search_groups(column_groups{}, "
             "bits_exchange 4): the library's exhaustive G search on the unweighted binarization error priced by "
             "bits, no H and no compensation. The last column is no estimator: sage's adaptive run of (b) (G chosen from "
             "its group_grid jointly with the salient set by its proxy screening). Cell: G, e(G) / e(G*) - 1, "
             "time. Times: search = the sum of the %d sage runs; an estimator = graph build (if it uses the graph) + "
             "its count + the one sage run at its G.\n\n",
             opt.max_groups, opt.max_groups, opt.max_groups));
  // Column 4: sage's own joint choice of (salient set, G) over its group_grid (the (b) adaptive run at this
  // budget): its proxy screening instead of any estimate.
  constexpr int columns = estimators + 1;
  const char* column_name[columns] = {estimator_name[0], estimator_name[1], estimator_name[2], estimator_name[3],
                                      "sage's joint screening"};
  struct pick { int groups; double error, seconds; bool converged; };
  const auto picked = [&](std::size_t i, int e) -> pick {
    const estimate_row& r = est[i];
    if (e == estimators) {
      const sage_run& a = thr.front()[i].adaptive;
      return {a.groups, a.error, a.seconds, true};
    }
    const auto se = static_cast<std::size_t>(e);
    const sage_run& at = r.curve[static_cast<std::size_t>(r.groups[se] - 1)];
    return {r.groups[se], at.error, (e < 3 ? r.graph_seconds : 0.0) + r.seconds[se] + at.seconds, r.converged[se]};
  };
  put("| matrix | rows x cols | salient (G=1) | G* | e(G*) | e(G=1) | search s | graph s |");
  for (const char* c : column_name) put(std::string(" ") + c + " |");
  put("\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::array<double, columns> sum_delta{}, max_delta{}, sum_time{};
  std::array<int, columns> within{}, exact{}, cheaper{};
  double sum_search = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const estimate_row& r = est[i];
    const double best = r.curve[static_cast<std::size_t>(r.best - 1)].error;
    put(strf("| %s | %lld x %lld | %.1f%% | %d | %.5f | %.5f | %.2f | %.2f |", cases[i].name.c_str(),
             static_cast<long long>(cases[i].w.rows()), static_cast<long long>(cases[i].w.cols()),
             100 * r.salient_fraction, r.best, best, r.curve.front().error, r.search_seconds, r.graph_seconds));
    sum_search += r.search_seconds;
    for (int e = 0; e < columns; ++e) {
      const auto se = static_cast<std::size_t>(e);
      const pick p = picked(i, e);
      const double delta = p.error / best - 1;
      sum_delta[se] += delta;
      max_delta[se] = std::max(max_delta[se], delta);
      sum_time[se] += p.seconds;
      within[se] += delta <= 0.01;
      exact[se] += p.groups == r.best;
      cheaper[se] += p.seconds < r.search_seconds;
      put(strf(" %d, %+.2f%%, %.2f s%s |", p.groups, 100 * delta, p.seconds, p.converged ? "" : " (no conv.)"));
    }
    put("\n");
  }
  const double n = static_cast<double>(cases.size());
  put(strf("\n| G from | mean e(G)/e(G*) - 1 | max | matrices within 1%% | G = G* | mean time per matrix "
           "(search: %.2f s) | cheaper than the search |\n|---|---|---|---|---|---|---|\n", sum_search / n));
  for (int e = 0; e < columns; ++e) {
    const auto se = static_cast<std::size_t>(e);
    put(strf("| %s | %+.2f%% | %+.2f%% | %d / %zu | %d / %zu | %.2f s | %d / %zu |\n", column_name[e],
             100 * sum_delta[se] / n, 100 * max_delta[se], within[se], cases.size(), exact[se], cases.size(),
             sum_time[se] / n, cheaper[se], cases.size()));
  }
  {
    std::vector<int> hist(static_cast<std::size_t>(opt.max_groups) + 1, 0);
    for (const auto& r : est) ++hist[static_cast<std::size_t>(r.best)];
    put("\nG* histogram:");
    for (int g = 1; g <= opt.max_groups; ++g)
      if (hist[static_cast<std::size_t>(g)]) put(strf(" G=%d: %d;", g, hist[static_cast<std::size_t>(g)]));
    double gain = 0;
    for (std::size_t i = 0; i < cases.size(); ++i)
      gain += 1 - est[i].curve[static_cast<std::size_t>(est[i].best - 1)].error / est[i].curve.front().error;
    put(strf(" mean error reduction of G* over G = 1: %.2f%%.\n", 100 * gain / n));
  }

  struct aggregate {
    double mean = 0, min = inf, max = -inf;
    int wins = 0, ties = 0, none_salient = 0;
  };
  std::vector<aggregate> agg(opt.budgets.size());
  for (std::size_t b = 0; b < opt.budgets.size(); ++b) {
    put(strf("\n## (b) Adaptive threshold vs the best fixed rule, leave-one-out (budget %.2f full bpw)\n\n",
               opt.budgets[b]));
    put("Adaptive: the sage_config above. Fixed rule: the same config with the candidate salient sets reduced to one "
        "rule (sigma_grid = {t}, fraction_grid = {} or sigma_grid = {}, fraction_grid = {p}); sage still chooses G, "
        "the salient bits, and the empty salient set when the rule's set does not fit. For matrix i the rule is the "
        "one with the lowest sum of e over the other " + std::to_string(cases.size() - 1) +
        " matrices. Gain = (e_fixed - e_adaptive) / e_fixed.\n\n");
    put("| matrix | e adaptive | choice (salient, G, full bpw) | fixed rule (LOO) | e fixed | choice | gain |\n"
        "|---|---|---|---|---|---|---|\n");
    aggregate& a = agg[b];
    for (std::size_t i = 0; i < cases.size(); ++i) {
      std::size_t best_rule = 0;
      double best_total = inf;
      for (std::size_t k = 0; k < rules.size(); ++k) {
        double total = 0;
        for (std::size_t j = 0; j < cases.size(); ++j)
          if (j != i) total += thr[b][j].fixed[k].error;
        if (total < best_total) best_total = total, best_rule = k;
      }
      const sage_run& ad = thr[b][i].adaptive;
      const sage_run& fx = thr[b][i].fixed[best_rule];
      const double gain = (fx.error - ad.error) / fx.error;
      a.mean += gain / n;
      a.min = std::min(a.min, gain);
      a.max = std::max(a.max, gain);
      a.wins += gain > 0;
      a.ties += gain == 0;
      a.none_salient += ad.salient.empty();
      const auto choice = [](const sage_run& r) {
        return strf("%.1f%%, %d, %.3f", 100 * r.salient_fraction, r.groups, r.full_bpw);
      };
      put(strf("| %s | %.5f | %s | %s | %.5f | %s | %+.2f%% |\n", cases[i].name.c_str(), ad.error,
                 choice(ad).c_str(), rules[best_rule].name.c_str(), fx.error, choice(fx).c_str(), 100 * gain));
    }
    put(strf("\nAggregate gain: mean %+.2f%%, min %+.2f%%, max %+.2f%%; adaptive better on %d of %zu matrices, "
             "equal on %d, worse on %zu. The adaptive choice keeps no salient column on %d of %zu matrices.\n",
             100 * a.mean, 100 * a.min, 100 * a.max, a.wins, cases.size(), a.ties,
             cases.size() - static_cast<std::size_t>(a.wins + a.ties), a.none_salient, cases.size()));
    put("\nFixed rules, mean e over all matrices:");
    for (std::size_t k = 0; k < rules.size(); ++k) {
      double total = 0;
      for (std::size_t j = 0; j < cases.size(); ++j) total += thr[b][j].fixed[k].error;
      put(strf(" %s %.5f;", rules[k].name.c_str(), total / n));
    }
    double total = 0;
    for (std::size_t j = 0; j < cases.size(); ++j) total += thr[b][j].adaptive.error;
    put(strf(" adaptive %.5f.\n", total / n));
  }

  put("\n## Conclusion (numbers above; written by the program from them)\n\n");
  for (int e = 0; e < columns; ++e) {
    const auto se = static_cast<std::size_t>(e);
    const bool all_within = within[se] == static_cast<int>(cases.size());
    const char* verdict = !all_within ? "NOT within 1% of the searched G's error on every matrix"
                          : sum_time[se] < sum_search ? "within 1% of the searched G's error at lower cost"
                                                      : "within 1% of the searched G's error, but not cheaper";
    put(strf("- %s: e(G) over e(G*) by %+.2f%% on average, %+.2f%% at worst, within 1%% on %d of %zu matrices; "
             "%.2f s per matrix against %.2f s for the search (cheaper on %d of %zu): %s.\n", column_name[e],
             100 * sum_delta[se] / n, 100 * max_delta[se], within[se], cases.size(), sum_time[se] / n,
             sum_search / n, cheaper[se], cases.size(),
             verdict));
  }
  for (std::size_t b = 0; b < opt.budgets.size(); ++b) {
    const aggregate& a = agg[b];
    const int losses = static_cast<int>(cases.size()) - a.wins - a.ties;
    const std::string verdict =
        losses > 0 ? strf("adaptive does NOT beat fixed on every matrix: worse on %d", losses)
        : a.ties > 0 ? strf("adaptive is never worse, but only equal (the same choice) on %d", a.ties)
                     : std::string("adaptive beats fixed on every matrix");
    put(strf("- adaptive vs best fixed (LOO) at %.2f bpw: better on %d of %zu matrices (mean %+.2f%%, min %+.2f%%, "
             "max %+.2f%%): %s.\n", opt.budgets[b], a.wins, cases.size(), 100 * a.mean, 100 * a.min, 100 * a.max,
             verdict.c_str()));
  }

  std::ofstream out(opt.out);
  if (!out) die("cannot write " + opt.out);
  out << md;
  std::fprintf(stderr, "wrote %s (%.0f s)\n", opt.out.c_str(), now() - t_start);
  return 0;
}
