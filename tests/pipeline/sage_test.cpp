#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/core/random.hpp>
#include <sageptq/format/q1_0.hpp>
#include <sageptq/pipeline/quantize_matrix.hpp>
#include <sageptq/pipeline/sage.hpp>
#include <sageptq/quant/error.hpp>
#include <sageptq/quant/q1_0.hpp>
#include <sageptq/synthetic/layer.hpp>

#include "support/calibrated_layer.hpp"

using namespace sageptq;

namespace {

using calibrated_layer = sageptq_test::calibrated_problem;
using sageptq_test::make_calibrated_problem;

}  // namespace

TEST_CASE("sage: decoded packed matrix equals the quantizer's output, within the bits budget") {
  const auto c = make_calibrated_problem(48, 172, 1);  // ragged: 172 columns
  for (double budget : {2.0, 2.2, 3.0}) {  // small matrices: the header and permutation cost ~0.85 bpw
    pipeline::sage_config cfg;
    cfg.target_bpw = budget;
    auto q = pipeline::quantize_sage(c.layer.weight_view(), c.factor, cfg);
    REQUIRE(q.ok());
    CHECK(q->report.bits.full_bpw() <= budget);
    CHECK(q->report.bits.full_bits() == 8 * format::serialize(q->packed).size());
    std::vector<float> decoded(q->dequantized.size());
    format::decode(q->packed.view(), make_matrix_view(decoded.data(), 48, 172));
    CHECK(decoded == q->dequantized);
    // The reported error is the calibrated error of exactly what is stored.
    const double err = calib::hessian_weighted_error(c.layer.weight_view(), q->dequantized_view(), c.factor.h);
    CHECK(err == doctest::Approx(q->report.hessian_error).epsilon(1e-9));
  }
}

TEST_CASE("sage: a larger budget never gives a larger error; sage beats q1_0 at fewer bits") {
  const auto c = make_calibrated_problem(256, 512, 2);
  double previous = std::numeric_limits<double>::infinity();
  for (double budget : {1.1, 1.25, 1.5}) {
    pipeline::sage_config cfg;
    cfg.target_bpw = budget;
    auto q = pipeline::quantize_sage(c.layer.weight_view(), c.factor, cfg);
    REQUIRE(q.ok());
    CHECK(q->report.hessian_error <= previous * (1 + 1e-6));
    previous = q->report.hessian_error;
  }
  pipeline::sage_config cfg;
  cfg.target_bpw = 1.125;
  auto sage = pipeline::quantize_sage(c.layer.weight_view(), c.factor, cfg);
  auto q1 = quant::quantize_q1_0(c.layer.weight_view());
  REQUIRE(sage.ok());
  REQUIRE(q1.ok());
  std::vector<float> q1_values(static_cast<std::size_t>(256 * 512));
  format::decode(q1->view(), make_matrix_view(q1_values.data(), 256, 512));
  const double q1_error = quant::relative_output_error(c.layer.weight_view(),
                                                       make_matrix_view(q1_values.data(), 256, 512),
                                                       c.layer.activation_view());
  const double sage_error = quant::relative_output_error(c.layer.weight_view(), sage->dequantized_view(),
                                                         c.layer.activation_view());
  CHECK(sage->report.bits.full_bpw() <= q1->bits().full_bpw());
  CHECK(sage_error < 0.8 * q1_error);  // measured: 0.567 vs 0.822
}

TEST_CASE("sage: compensation and the row-scale refit each lower the calibrated error") {
  int compensation_wins = 0, refit_wins = 0;
  const int matrices = 6;
  for (int seed = 0; seed < matrices; ++seed) {
    const auto c = make_calibrated_problem(32, 128, 100 + static_cast<std::uint64_t>(seed));
    pipeline::sage_config cfg;
    cfg.target_bpw = 0;  // no budget
    cfg.group_grid = {2};
    cfg.sigma_grid = {2.0};
    cfg.fraction_grid = {};
    cfg.salient_bits_grid = {4};
    cfg.screened_candidates = 1;
    const auto run = [&](bool compensate, bool refit) {
      pipeline::sage_config k = cfg;
      k.compensate = compensate;
      k.refit_row_scales = refit;
      auto q = pipeline::quantize_sage(c.layer.weight_view(), c.factor, k);
      REQUIRE(q.ok());
      return q->report.hessian_error;
    };
    compensation_wins += run(true, false) < run(false, false);
    refit_wins += run(true, true) <= run(true, false);
  }
  CHECK(compensation_wins == matrices);
  CHECK(refit_wins == matrices);
}

TEST_CASE("sage: the adaptive search is no worse than any single fixed threshold") {
  const auto c = make_calibrated_problem(128, 256, 3);
  pipeline::sage_config adaptive;
  adaptive.target_bpw = 1.3;
  adaptive.screened_candidates = 1000;  // exhaustive: every candidate is quantized in full
  adaptive.refit_candidates = 0;        // and refitted
  auto best = pipeline::quantize_sage(c.layer.weight_view(), c.factor, adaptive);
  REQUIRE(best.ok());
  for (double t : adaptive.sigma_grid) {
    pipeline::sage_config fixed = adaptive;
    fixed.sigma_grid = {t};
    fixed.fraction_grid = {};
    auto q = pipeline::quantize_sage(c.layer.weight_view(), c.factor, fixed);
    REQUIRE(q.ok());
    CHECK(best->report.hessian_error <= q->report.hessian_error * (1 + 1e-9));
  }
}

TEST_CASE("sage: refitting more candidates can only lower the error; one candidate per salient set or not") {
  for (int seed = 0; seed < 4; ++seed) {
    const auto c = make_calibrated_problem(96, 256, 300 + static_cast<std::uint64_t>(seed));
    pipeline::sage_config cfg;
    cfg.target_bpw = 1.3;
    cfg.screened_candidates = 12;
    const auto error = [&](int refit_candidates) {
      pipeline::sage_config k = cfg;
      k.refit_candidates = refit_candidates;
      auto q = pipeline::quantize_sage(c.layer.weight_view(), c.factor, k);
      REQUIRE(q.ok());
      const double err = calib::hessian_weighted_error(c.layer.weight_view(), q->dequantized_view(), c.factor.h);
      CHECK(err == doctest::Approx(q->report.hessian_error).epsilon(1e-9));
      return q->report.hessian_error;
    };
    const double all = error(0), two = error(2), one = error(1);
    CAPTURE(seed);
    CHECK(all <= two * (1 + 1e-12));
    CHECK(two <= one * (1 + 1e-12));
  }
  pipeline::sage_config bad;
  bad.refit_candidates = -1;
  const auto c = make_calibrated_problem(16, 64, 1);
  CHECK(pipeline::quantize_sage(c.layer.weight_view(), c.factor, bad).code() == status::invalid_argument);
}

TEST_CASE("sage: salient channels compensated last, with grids fitted on the compensated weights") {
  for (int seed = 0; seed < 6; ++seed) {
    const auto c = make_calibrated_problem(48, 160, 200 + static_cast<std::uint64_t>(seed));
    pipeline::sage_config cfg;
    cfg.target_bpw = 0;
    cfg.group_grid = {2};
    cfg.sigma_grid = {};
    cfg.fraction_grid = {0.1};
    cfg.salient_bits_grid = {3};
    cfg.screened_candidates = 1000;
    const auto run = [&](pipeline::sage_order order, bool act_order) {
      pipeline::sage_config k = cfg;
      k.order = order;
      k.act_order = act_order;
      auto q = pipeline::quantize_sage(c.layer.weight_view(), c.factor, k);
      REQUIRE(q.ok());
      // Whatever the order, the reported error is that of what is stored, in the calibration metric.
      const double err = calib::hessian_weighted_error(c.layer.weight_view(), q->dequantized_view(), c.factor.h);
      CHECK(err == doctest::Approx(q->report.hessian_error).epsilon(1e-9));
      return q->report;
    };
    const auto natural = run(pipeline::sage_order::natural, false);
    const auto last = run(pipeline::sage_order::salient_last, false);
    REQUIRE(last.salient_fraction > 0);
    CHECK(last.bits.full_bits() == natural.bits.full_bits());
    // Measured: salient last raises these layers' calibrated error by 1-17%, yet lowered gutenberg-llama-20m's
    // val perplexity at 1.5 bpw from 57.8 to 51.0 (sage.hpp): the order is chosen on perplexity, not this metric.
    CHECK(last.hessian_error < 1.25 * natural.hessian_error);
    (void)run(pipeline::sage_order::salient_last, true);
  }
}

TEST_CASE("sage: salient grids weighted by H_jj keep the outlier channels, so larger budgets are spent") {
  // synthetic::make_layer: 1% of input channels with 20x activations and 3x weights. Unweighted, each row's
  // salient grid clips those channels to fit the others; adding salient channels then raised the error and sage
  // at 2.0 bpw stopped at ~1.44 (the demo before this policy).
  synthetic::layer_config lc;
  lc.rows = 256;
  lc.cols = 512;
  const auto layer = synthetic::make_layer(lc);
  calib::hessian_accumulator acc(lc.cols);
  REQUIRE(acc.add_batch(layer.activation_view()).ok());
  auto factor = calib::prepare(acc);
  REQUIRE(factor.has_value());
  const thread_executor exec(2);
  const auto run = [&](double budget, pipeline::sage_grid_weight weight) {
    pipeline::sage_config cfg;
    cfg.target_bpw = budget;
    cfg.grid_weight = weight;
    auto q = pipeline::quantize_sage(layer.weight_view(), *factor, cfg, exec);
    REQUIRE(q.ok());
    CHECK(q->report.bits.full_bpw() <= budget);
    return q->report;
  };
  const auto plain_15 = run(1.5, pipeline::sage_grid_weight::none);
  const auto plain_20 = run(2.0, pipeline::sage_grid_weight::none);
  const auto weighted_15 = run(1.5, pipeline::sage_grid_weight::hessian_diag);
  const auto weighted_20 = run(2.0, pipeline::sage_grid_weight::hessian_diag);
  CAPTURE(plain_15.relative_error);
  CAPTURE(plain_20.relative_error);
  CAPTURE(weighted_15.relative_error);
  CAPTURE(weighted_20.relative_error);
  CAPTURE(weighted_20.bits.full_bpw());
  CHECK(weighted_15.relative_error < plain_15.relative_error);
  CHECK(weighted_20.relative_error < 0.9 * plain_20.relative_error);
  CHECK(weighted_20.relative_error < 0.9 * weighted_15.relative_error);  // the extra half bit buys something

  // fill_budget adds the largest top-scored sets that fit: the budget is spent, and here the error falls (measured:
  // 1.81 -> 2.00 bpw, relative error 0.0665 -> 0.0626 on the 512 x 1024 layer).
  pipeline::sage_config fill;
  fill.target_bpw = 2.0;
  fill.fill_budget = true;
  auto filled = pipeline::quantize_sage(layer.weight_view(), *factor, fill, exec);
  REQUIRE(filled.ok());
  CAPTURE(filled->report.bits.full_bpw());
  CAPTURE(filled->report.relative_error);
  CHECK(filled->report.bits.full_bpw() <= 2.0);
  CHECK(filled->report.bits.full_bpw() > weighted_20.bits.full_bpw());
  CHECK(filled->report.relative_error < weighted_20.relative_error);
  fill.fill_groups = 0;
  CHECK(pipeline::quantize_sage(layer.weight_view(), *factor, fill, exec).code() == status::invalid_argument);
}

TEST_CASE("sage: packed bytes are identical across runs and thread counts") {
  const auto c = make_calibrated_problem(40, 160, 4);
  for (bool act_order : {false, true}) {
    pipeline::sage_config cfg;
    cfg.target_bpw = 0;
    cfg.act_order = act_order;
    auto a = pipeline::quantize_sage(c.layer.weight_view(), c.factor, cfg, inline_executor{});
    auto b = pipeline::quantize_sage(c.layer.weight_view(), c.factor, cfg, thread_executor(3));
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(format::serialize(a->packed) == format::serialize(b->packed));
    CHECK(a->dequantized == b->dequantized);
  }
}

TEST_CASE("sage: bad inputs give a clear status and no value") {
  const auto c = make_calibrated_problem(16, 64, 5);
  std::vector<float> w = c.layer.weights;
  w[37] = std::numeric_limits<float>::quiet_NaN();
  auto nan = pipeline::quantize_sage(make_matrix_view(w.data(), 16, 64), c.factor);
  CHECK(nan.code() == status::non_finite_input);
  CHECK_FALSE(nan.has_value());

  auto shape = pipeline::quantize_sage(make_matrix_view(c.layer.weights.data(), 32, 32), c.factor);
  CHECK(shape.code() == status::invalid_shape);

  pipeline::sage_config tiny;
  tiny.target_bpw = 1.0;  // below the cost of the signs alone
  auto budget = pipeline::quantize_sage(c.layer.weight_view(), c.factor, tiny);
  CHECK(budget.code() == status::invalid_argument);
  CHECK(budget.message().find("smallest reachable") != std::string::npos);

  pipeline::sage_config bits;
  bits.salient_bits_grid = {1};
  CHECK(pipeline::quantize_sage(c.layer.weight_view(), c.factor, bits).code() == status::invalid_argument);
}

TEST_CASE("spread_budget: a model budget water-fills over matrices whose fixed costs differ") {
  namespace pl = sageptq::pipeline;
  // stories260k's shapes: with headers and per-row scales, the smallest configurations cost 1.28 (64 x 172) to
  // 1.63 (32 x 64) full bpw.
  const std::vector<pl::matrix_extent> shapes = {{64, 64}, {32, 64}, {172, 64}, {64, 172}};
  const auto method = pl::make_method("sage", {.target_bpw = 1.4}).value();
  auto spread = pl::spread_budget(method, shapes);
  REQUIRE_MESSAGE(spread.ok(), spread.message());
  double bits = 0, weights = 0;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto& cfg = std::get<pl::sage_config>((*spread)[i]);
    const double n = static_cast<double>(shapes[i].rows * shapes[i].cols);
    CHECK(cfg.target_bpw >= pl::sage_smallest_bpw(shapes[i].rows, shapes[i].cols, cfg) - 1e-12);
    bits += cfg.target_bpw * n;
    weights += n;
  }
  CHECK(bits / weights <= 1.4 + 1e-9);
  CHECK(bits / weights >= 1.4 - 1e-6);  // nothing left on the table
  // The cheap matrices get more than their smallest, the costliest exactly its smallest.
  CHECK(std::get<pl::sage_config>((*spread)[3]).target_bpw >
        pl::sage_smallest_bpw(64, 172, std::get<pl::sage_config>(method)) + 0.05);
  CHECK(std::get<pl::sage_config>((*spread)[1]).target_bpw ==
        pl::sage_smallest_bpw(32, 64, std::get<pl::sage_config>(method)));

  // Below the smallest reachable mean: a clear error naming it. Methods without a budget pass through.
  const auto too_small = pl::spread_budget(pl::make_method("sage", {.target_bpw = 1.0}).value(), shapes);
  CHECK(too_small.code() == sageptq::status::invalid_argument);
  CHECK(too_small.message().find("smallest reachable") != std::string::npos);
  const auto gptq = pl::spread_budget(pl::make_method("gptq").value(), shapes);
  REQUIRE(gptq.ok());
  CHECK(gptq->size() == shapes.size());
}

TEST_CASE("budget_ledger: what a matrix leaves of its share goes to the matrices after it, in any order") {
  namespace pl = sageptq::pipeline;
  const std::vector<pl::matrix_extent> shapes = {{64, 512}, {128, 512}, {512, 128}, {256, 512}};
  const double budget = 1.5;
  double weights = 0;
  for (const auto& e : shapes) weights += static_cast<double>(e.rows * e.cols);
  for (const std::vector<std::size_t>& order : {std::vector<std::size_t>{0, 1, 2, 3}, {3, 1, 0, 2}}) {
    auto ledger = pl::budget_ledger::create(pl::make_method("sage", {.target_bpw = budget}).value(), shapes);
    REQUIRE(ledger.ok());
    const auto whole = pl::spread_budget(pl::make_method("sage", {.target_bpw = budget}).value(), shapes);
    REQUIRE(whole.ok());
    double spent = 0, previous_share = 0;
    for (std::size_t step = 0; step < order.size(); ++step) {
      const std::size_t i = order[step];
      const auto m = ledger->method_for(i);
      REQUIRE(m.ok());
      const double share = std::get<pl::sage_config>(*m).target_bpw;
      const double fixed = std::get<pl::sage_config>((*whole)[i]).target_bpw;
      if (step == 0) CHECK(share == doctest::Approx(fixed));  // nothing recorded yet: the model-wide spread
      else CHECK(share > fixed);                                // every matrix so far left 40% of its share
      const auto n = static_cast<double>(shapes[i].rows * shapes[i].cols);
      const auto bits = static_cast<std::uint64_t>(0.6 * share * n);
      ledger->record(i, bits);
      spent += static_cast<double>(bits);
      previous_share = share;
    }
    CHECK(previous_share > budget);  // the last matrix gets what the others left
    CHECK(spent <= budget * weights);
  }
  // Spending every share exactly lands on the budget, never above it.
  auto ledger = pl::budget_ledger::create(pl::make_method("sage", {.target_bpw = budget}).value(), shapes);
  REQUIRE(ledger.ok());
  double spent = 0;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const double share = std::get<pl::sage_config>(ledger->method_for(i).value()).target_bpw;
    const auto n = static_cast<double>(shapes[i].rows * shapes[i].cols);
    const auto bits = static_cast<std::uint64_t>(std::floor(share * n));
    ledger->record(i, bits);
    spent += static_cast<double>(bits);
  }
  CHECK(spent <= budget * weights);
  CHECK(spent >= budget * weights - 4);
  // Other methods pass through; a budget below reach is spread_budget's error.
  auto gptq = pl::budget_ledger::create(pl::make_method("gptq").value(), shapes);
  REQUIRE(gptq.ok());
  CHECK(std::holds_alternative<pl::gptq_config>(gptq->method_for(2).value()));
  CHECK(pl::budget_ledger::create(pl::make_method("sage", {.target_bpw = 0.5}).value(), shapes).code() ==
        sageptq::status::invalid_argument);
}

TEST_CASE("sage: salient sets snapped to whole 16-byte sign rows only add candidates (every candidate compensated)") {
  // Gaussian weights and inputs with a few loud input channels (the synthetic LLM-like layers keep ~2% salient at
  // any budget, so they would not exercise the larger sets): 700 columns, 16-byte sign rows.
  const index_t rows = 128, cols = 700, samples = 1400;
  random_generator rng(17);
  std::vector<float> w(static_cast<std::size_t>(rows * cols)), x(static_cast<std::size_t>(samples * cols));
  for (float& v : w) v = static_cast<float>(rng.normal());
  for (index_t i = 0; i < samples; ++i)
    for (index_t j = 0; j < cols; ++j)
      x[static_cast<std::size_t>(i * cols + j)] = static_cast<float>(rng.normal() * (j % 37 == 0 ? 8.0 : 1.0));
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(static_cast<const float*>(x.data()), samples, cols)).ok());
  const auto factor = calib::prepare(acc).value();
  const auto weights = make_matrix_view(static_cast<const float*>(w.data()), rows, cols);
  int improved = 0;
  for (double budget : {1.5, 2.0, 2.5}) {
    pipeline::sage_config cfg;
    cfg.target_bpw = budget;
    cfg.screened_candidates = 100000;  // every candidate gets the full quantization: no screening displacement
    cfg.refit_candidates = 0;
    cfg.group_grid = {1, 4};
    cfg.salient_bits_grid = {2, 3};
    auto snapped = pipeline::quantize_sage(weights, factor, cfg);
    cfg.snap_to_sign_rows = false;
    auto plain = pipeline::quantize_sage(weights, factor, cfg);
    REQUIRE(snapped.ok());
    REQUIRE(plain.ok());
    CHECK(snapped->report.bits.full_bpw() <= budget);
    CHECK(snapped->report.hessian_error <= plain->report.hessian_error);
    improved += snapped->report.hessian_error < 0.95 * plain->report.hessian_error;
    MESSAGE("budget " << budget << ": bpw " << plain->report.bits.full_bpw() << " -> "
                      << snapped->report.bits.full_bpw() << ", salient " << plain->report.salient_fraction << " -> "
                      << snapped->report.salient_fraction << ", padding bits " << plain->report.bits.padding_bits
                      << " -> " << snapped->report.bits.padding_bits << ", error " << plain->report.hessian_error
                      << " -> " << snapped->report.hessian_error);
  }
  CHECK(improved >= 1);  // measured: 2.5 bpw, 36128 -> 29324 (padding 5336 -> 1736 bits)
}
