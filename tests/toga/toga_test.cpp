#include <doctest/doctest.h>

#include <sageptq/core/random.hpp>
#include <sageptq/pipeline/gptq.hpp>
#include <sageptq/toga/search.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

using sageptq::index_t;
using sageptq::status;
namespace toga = sageptq::toga;

namespace {

/// A small model shape: 2 KV groups of 2 query heads, 3 channel levels.
toga::model_shape tiny_shape(index_t layers) { return {layers, 32, 4, 2, 8, 48}; }

/// A random profile with losses shaped like real ones: more loss for more pruning and fewer bits. `wide`: the
/// dimensions of gutenberg-llama-20m (hidden 512, 4 KV groups, 1408 channels) instead of the tiny shape.
toga::profile random_profile(index_t layers, std::uint64_t seed, bool wide = false) {
  sageptq::random_generator rng(seed);
  toga::profile p;
  p.shape = wide ? toga::model_shape{layers, 512, 8, 4, 64, 1408} : tiny_shape(layers);
  p.precisions = {{toga::precision::kind::uniform, 1, 0}, {toga::precision::kind::uniform, 2, 0},
                  {toga::precision::kind::uniform, 3, 0}};
  const index_t channels = p.shape.intermediate, groups = p.shape.kv_heads;
  p.channel_levels = {channels, channels * 2 / 3, channels / 3};
  for (index_t l = 0; l < layers; ++l) {
    toga::layer_profile lp;
    for (index_t g = 0; g < groups; ++g) lp.group_order.push_back(groups - 1 - g);
    lp.channel_order.resize(static_cast<std::size_t>(channels));
    for (index_t i = 0; i < channels; ++i) lp.channel_order[static_cast<std::size_t>(i)] = channels - 1 - i;
    lp.attention_loss.assign(static_cast<std::size_t>(groups + 1), 0.0);  // [groups] = 0: nothing pruned
    lp.attention_loss[0] = std::numeric_limits<double>::infinity();
    for (index_t g = groups - 1; g >= 1; --g)
      lp.attention_loss[static_cast<std::size_t>(g)] =
          lp.attention_loss[static_cast<std::size_t>(g + 1)] + 0.1 + rng.uniform();
    const double m1 = 0.05 + 0.5 * rng.uniform();
    lp.mlp_loss = {0.0, m1, m1 + 0.1 + rng.uniform()};
    for (auto& q : lp.quant_loss) {
      const double base = 0.01 + rng.uniform();
      q = {base, base / (2 + 2 * rng.uniform()), base / (8 + 8 * rng.uniform())};
    }
    p.layers.push_back(lp);
  }
  return p;
}

/// `p` with every linear split into `blocks` input blocks: each block gets a random share of the linear's loss
/// (the shares of a linear sum to 1), so a one-precision-per-linear configuration predicts the same loss.
toga::profile split_profile(toga::profile p, int blocks, std::uint64_t seed) {
  sageptq::random_generator rng(seed);
  const int menu = p.menu();
  p.column_blocks = blocks;
  for (auto& lp : p.layers)
    for (auto& q : lp.quant_loss) {
      std::vector<double> share(static_cast<std::size_t>(blocks));
      double sum = 0;
      for (double& s : share) sum += (s = 0.1 + rng.uniform() * rng.uniform() * 4);
      std::vector<double> split;
      for (double s : share)
        for (int pi = 0; pi < menu; ++pi) split.push_back(q[static_cast<std::size_t>(pi)] * s / sum);
      q = std::move(split);
    }
  return p;
}

std::vector<float> normal_values(sageptq::random_generator& rng, index_t n) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

/// The prepared Hessian of `samples` random inputs of width `cols`.
sageptq::calib::hessian_factor random_factor(sageptq::random_generator& rng, index_t cols, index_t samples) {
  const std::vector<float> x = normal_values(rng, samples * cols);
  sageptq::calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(sageptq::make_matrix_view(x.data(), samples, cols)).ok());
  auto factor = sageptq::calib::prepare(acc);
  REQUIRE(factor.has_value());
  return std::move(factor).value();
}

/// Per-row GPTQ (one grid per row) at `bits`, symmetric for binary as TOGA's menu has it.
sageptq::pipeline::gptq_config per_row_gptq(int bits) {
  sageptq::pipeline::gptq_config cfg;
  cfg.bits = bits;
  cfg.group_size = 0;
  cfg.symmetric = bits == 1;
  return cfg;
}

/// Every configuration of a profile, by odometer.
template <class F>
void for_each_configuration(const toga::profile& p, F&& f) {
  const index_t per_layer = p.shape.kv_heads * std::ssize(p.channel_levels) *
                            static_cast<index_t>(std::pow(std::ssize(p.precisions), toga::linears_per_layer));
  const auto total = static_cast<index_t>(std::pow(per_layer, p.shape.layers));
  for (index_t code = 0; code < total; ++code) {
    toga::configuration c(static_cast<std::size_t>(p.shape.layers));
    index_t rest = code;
    for (auto& d : c) {
      d.groups = 1 + rest % p.shape.kv_heads, rest /= p.shape.kv_heads;
      d.channel_level = static_cast<int>(rest % std::ssize(p.channel_levels)), rest /= std::ssize(p.channel_levels);
      for (auto& pi : d.precision)
        pi = static_cast<int>(rest % std::ssize(p.precisions)), rest /= std::ssize(p.precisions);
    }
    f(c);
  }
}

}  // namespace

TEST_CASE("toga: uniform precision bits are exactly those of the packed gptq matrix") {
  sageptq::random_generator rng(11);
  for (const auto& [rows, cols] : {std::pair<index_t, index_t>{16, 64}, {8, 172}, {5, 33}}) {
    const std::vector<float> w = normal_values(rng, rows * cols);
    const auto factor = random_factor(rng, cols, 4 * cols);
    for (int bits : {1, 2, 3}) {
      const toga::precision p{toga::precision::kind::uniform, bits, 0};
      auto q = sageptq::pipeline::quantize_gptq(sageptq::make_matrix_view(w.data(), rows, cols), factor,
                                                per_row_gptq(bits));
      REQUIRE_MESSAGE(q.has_value(), q.message());
      CHECK(p.bits_bound(rows, cols) == q->packed.bits().full_bits());
    }
  }
  const toga::precision sage{toga::precision::kind::sage, 0, 1.25};
  CHECK(sage.bits_bound(10, 100) == 1250);
}

TEST_CASE("toga: a precision menu parses from its names and rejects anything else") {
  const auto menu = toga::parse_precisions("gptq1,sage@1.1,gptq2,gptq3");
  REQUIRE_MESSAGE(menu.ok(), menu.message());
  const auto defaults = toga::default_precisions();
  REQUIRE(menu->size() == defaults.size());
  for (std::size_t i = 0; i < defaults.size(); ++i) {
    CHECK((*menu)[i].type == defaults[i].type);
    CHECK((*menu)[i].bits == defaults[i].bits);
    CHECK((*menu)[i].target_bpw == defaults[i].target_bpw);
    const auto again = toga::parse_precision(defaults[i].name());  // name() and the parser are inverses
    REQUIRE(again.ok());
    CHECK(again->name() == defaults[i].name());
  }
  const auto sage2 = toga::parse_precision("sage@2");
  REQUIRE(sage2.ok());
  CHECK(sage2->type == toga::precision::kind::sage);
  CHECK(sage2->target_bpw == 2.0);
  for (const char* bad : {"", "gptq", "gptq0", "gptq9", "gptq2x", "sage@", "sage@0.5", "sage@nan", "sage@1.1.1",
                          "rtn2", "gptq1,", ",gptq1", "gptq1,,gptq2", "gptq2,sage@1.1,gptq2", " gptq1"}) {
    CAPTURE(bad);
    const auto parsed = toga::parse_precisions(bad);
    CHECK(parsed.code() == sageptq::status::invalid_argument);
    CHECK_FALSE(parsed.has_value());
  }
}

TEST_CASE("toga: per-row gptq of the kept rows equals the kept rows of per-row gptq (what row pruning reuses)") {
  sageptq::random_generator rng(5);
  const index_t rows = 24, cols = 40;
  const std::vector<float> w = normal_values(rng, rows * cols);
  const auto factor = random_factor(rng, cols, 3 * cols);
  const std::vector<index_t> kept = {1, 2, 7, 8, 9, 20, 23};
  std::vector<float> pruned;
  for (index_t r : kept) pruned.insert(pruned.end(), w.begin() + r * cols, w.begin() + (r + 1) * cols);
  for (int bits : {1, 2, 3}) {
    auto full = sageptq::pipeline::quantize_gptq(sageptq::make_matrix_view(w.data(), rows, cols), factor,
                                                 per_row_gptq(bits));
    auto part = sageptq::pipeline::quantize_gptq(sageptq::make_matrix_view(pruned.data(), std::ssize(kept), cols),
                                                 factor, per_row_gptq(bits), sageptq::thread_executor(2));
    REQUIRE(full.has_value());
    REQUIRE(part.has_value());
    for (std::size_t i = 0; i < kept.size(); ++i)
      for (index_t c = 0; c < cols; ++c)
        CHECK(part->dequantized[i * cols + static_cast<std::size_t>(c)] ==
              full->dequantized[static_cast<std::size_t>(kept[i] * cols + c)]);
  }
}

TEST_CASE("toga: bit accounting of a configuration counts kept weights, masks and nothing for pruned weights") {
  const toga::profile p = random_profile(2, 1);
  REQUIRE(toga::check_profile(p).ok());
  CHECK(p.shape.source_weights() == 2u * (32 * 32 * 2 + 16 * 32 * 2 + 48 * 32 * 3));
  toga::configuration c(2);
  c[0] = {2, 0, {2, 2, 2, 2, 2, 2, 2}};  // unpruned, 3 bits everywhere
  c[1] = {1, 2, {0, 0, 0, 0, 1, 1, 1}};  // one group, 16 channels
  const auto rtn = [](index_t rows, index_t cols, int bits) {
    return static_cast<std::uint64_t>(rows * (32 * ((cols * bits + 31) / 32) + 16 + (bits == 1 ? 0 : 8)));
  };
  const std::uint64_t layer0 = 2 * rtn(32, 32, 3) + 2 * rtn(16, 32, 3) + 2 * rtn(48, 32, 3) + rtn(32, 48, 3);
  const std::uint64_t layer1 =
      rtn(16, 32, 1) + 2 * rtn(8, 32, 1) + rtn(32, 16, 1) + 2 * rtn(16, 32, 2) + rtn(32, 16, 2);
  CHECK(toga::configuration_bits(p, c) == layer0 + layer1 + 2 * (2 + 48));
  CHECK(toga::budget_bits(p, 1.5) == static_cast<std::uint64_t>(1.5 * static_cast<double>(p.shape.source_weights())));
}

TEST_CASE("toga: allocate meets the budget, is locally optimal and close to the exhaustive optimum") {
  double worst_ratio = 1, ratio_sum = 0;
  int cases = 0;
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    const toga::profile p = random_profile(1, seed);  // 2 * 3 * 3^7 = 13122 configurations
    for (double bpw : {1.3, 1.7, 2.2, 2.9}) {
      auto c = toga::allocate(p, bpw);
      REQUIRE_MESSAGE(c.ok(), c.message());
      const std::uint64_t budget = toga::budget_bits(p, bpw);
      CHECK(toga::configuration_bits(p, *c) <= budget);
      const double loss = toga::predicted_loss(p, *c);
      for (const auto& n : toga::neighbours(p, 0, (*c)[0]))  // fill_budget's fixed point
        CHECK_FALSE((toga::layer_bits(p, n) <= budget && toga::predicted_layer_loss(p, 0, n) < loss - 1e-12));
      double best = std::numeric_limits<double>::infinity();
      for_each_configuration(p, [&](const toga::configuration& e) {
        if (toga::configuration_bits(p, e) <= budget) best = std::min(best, toga::predicted_loss(p, e));
      });
      REQUIRE(std::isfinite(best));
      CHECK(loss >= best - 1e-12);
      worst_ratio = std::max(worst_ratio, loss / best);
      ratio_sum += loss / best;
      ++cases;
    }
  }
  // One layer is the coarsest case (real models have many units to trade bits between).
  MESSAGE("allocate / exhaustive optimum loss: mean " << ratio_sum / cases << ", worst " << worst_ratio);
  CHECK(ratio_sum / cases < 1.1);
  CHECK(worst_ratio < 1.3);
}

TEST_CASE("toga: allocate rejects budgets below reach and malformed profiles") {
  toga::profile p = random_profile(2, 3);
  auto low = toga::allocate(p, 0.5);  // the cheapest configuration needs ~0.6 bpw
  CHECK(low.code() == status::invalid_argument);
  CHECK(low.message().find("smallest reachable") != std::string::npos);
  CHECK(toga::allocate(p, 0).code() == status::invalid_argument);
  CHECK(toga::allocate(p, std::nan("")).code() == status::invalid_argument);
  toga::profile bad = p;
  bad.layers[1].mlp_loss.pop_back();
  CHECK(toga::allocate(bad, 2).code() == status::invalid_argument);
  bad = p;
  bad.layers[0].group_order = {0, 0};
  CHECK(toga::allocate(bad, 2).code() == status::invalid_argument);
  bad = p;
  bad.layers[0].quant_loss[3][1] = std::nan("");
  CHECK(toga::allocate(bad, 2).code() == status::invalid_argument);
  bad = p;
  bad.channel_levels = {48, 48, 16};
  CHECK(toga::allocate(bad, 2).code() == status::invalid_argument);
  bad = p;
  for (auto& q : bad.layers[0].quant_loss[2]) q = std::numeric_limits<double>::infinity();
  CHECK(toga::allocate(bad, 2).code() == status::invalid_argument);
  // An unavailable precision is never chosen.
  p.layers[0].quant_loss[4][2] = std::numeric_limits<double>::infinity();
  auto c = toga::allocate(p, 3.5);
  REQUIRE(c.ok());
  CHECK((*c)[0].precision[4] != 2);
}

TEST_CASE("toga: refine is deterministic for a seed, stays within the budget and never worsens the score") {
  const toga::profile p = random_profile(3, 5);
  const double bpw = 1.8;
  // A score the prediction misses: pruning two units together costs extra.
  const auto score = [&](const toga::configuration& c) -> sageptq::result<double> {
    double s = toga::predicted_loss(p, c);
    for (const auto& d : c) s += (d.groups < 2 && d.channel_level > 0) ? 0.7 : 0.0;
    return s;
  };
  auto start = toga::allocate(p, bpw);
  REQUIRE(start.ok());
  toga::refine_options opt;
  opt.evaluations = 12;
  opt.seed = 42;
  auto a = toga::refine(p, *start, bpw, score, opt);
  auto b = toga::refine(p, *start, bpw, score, opt);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->best == b->best);
  CHECK(a->best_score == b->best_score);
  CHECK(a->evaluations == b->evaluations);
  CHECK(a->evaluations > 1);
  CHECK(a->best_score <= a->start_score);
  CHECK(a->best_score == *score(a->best));
  CHECK(toga::configuration_bits(p, a->best) <= toga::budget_bits(p, bpw));

  toga::configuration over(3, toga::layer_decision{2, 0, {2, 2, 2, 2, 2, 2, 2}});
  CHECK(toga::refine(p, over, bpw, score, opt).code() == status::invalid_argument);
  opt.max_mutations = 0;
  CHECK(toga::refine(p, *start, bpw, score, opt).code() == status::invalid_argument);
  opt.max_mutations = 2;
  const auto failing = [](const toga::configuration&) -> sageptq::result<double> {
    return sageptq::fail(status::numerical_issue, "score failed");
  };
  CHECK(toga::refine(p, *start, bpw, failing, opt).code() == status::numerical_issue);
}

TEST_CASE("toga: input-channel blocks — bounds, runs and their bits") {
  CHECK(toga::column_block_bounds(512, 4) == std::vector<index_t>{0, 128, 256, 384, 512});
  CHECK(toga::column_block_bounds(1408, 4) == std::vector<index_t>{0, 352, 704, 1056, 1408});
  CHECK(toga::column_block_bounds(1232, 4) == std::vector<index_t>{0, 320, 608, 928, 1232});  // multiples of 32
  CHECK(toga::column_block_bounds(48, 4) == std::vector<index_t>{0, 12, 24, 36, 48});  // too narrow for words
  CHECK(toga::column_block_bounds(100, 1) == std::vector<index_t>{0, 100});

  toga::block_precisions bp(2);
  CHECK(bp.uniform(4));
  bp.set(1, 0, 4);
  CHECK_FALSE(bp.uniform(4));
  CHECK(toga::precision_runs(bp, 4, 512) ==
        std::vector<toga::precision_run>{{0, 128, 2}, {128, 256, 0}, {256, 512, 2}});
  bp.set(1, 2, 4);
  CHECK(bp == toga::block_precisions(2));  // canonical: equal decisions compare equal
  bp.set(3, 1, 4);                         // the last block also sets the unused slots
  toga::block_precisions other(2);
  other.set(3, 1, 4);
  CHECK(bp == other);
  CHECK(bp[7] == 1);

  // Splitting costs nothing while the blocks agree; each extra run pays its rtn row overhead and its boundary.
  const toga::profile one = random_profile(1, 4);
  const toga::profile four = split_profile(one, 4, 9);
  REQUIRE(toga::check_profile(four).ok());
  toga::layer_decision d{2, 0, {1, 1, 1, 1, 1, 1, 1}};
  CHECK(toga::layer_bits(four, d) == toga::layer_bits(one, d));
  CHECK(toga::predicted_layer_loss(four, 0, d) == doctest::Approx(toga::predicted_layer_loss(one, 0, d)));
  d.precision[0].set(0, 2, 4);  // q (32 x 32 in tiny_shape): blocks of 8 columns, 3 bits on the first
  const auto rtn = [](index_t rows, index_t cols, int bits) {
    return static_cast<std::uint64_t>(rows * (32 * ((cols * bits + 31) / 32) + 16 + (bits == 1 ? 0 : 8)));
  };
  toga::layer_decision whole{2, 0, {1, 1, 1, 1, 1, 1, 1}};
  CHECK(toga::layer_bits(four, d) - toga::layer_bits(four, whole) ==
        rtn(32, 8, 3) + rtn(32, 24, 2) + toga::run_boundary_bits - rtn(32, 32, 2));
  toga::profile bad = four;
  bad.layers[0].quant_loss[2].pop_back();
  CHECK_FALSE(toga::check_profile(bad).ok());
  bad = four;
  for (int pi = 0; pi < 3; ++pi) bad.layers[0].quant_loss[5][static_cast<std::size_t>(3 + pi)] = INFINITY;
  CHECK_FALSE(toga::check_profile(bad).ok());  // block 1 of up has no precision
  bad = four;
  bad.column_blocks = 9;
  CHECK_FALSE(toga::check_profile(bad).ok());
}

TEST_CASE("toga: the Lagrangian choice of block precisions is the exhaustive minimum") {
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    const int blocks = 3;
    const toga::profile p = split_profile(random_profile(1, seed), blocks, seed + 100);
    for (double lambda : {0.0, 1e-5, 1e-4, 1e-3, 1e-2}) {
      for (toga::linear k : toga::all_linears) {
        toga::layer_decision d{1, 1, {}};
        const double dp = toga::detail::lagrangian_linear(p, 0, d, k, lambda);
        const double dp_check = toga::detail::quant_loss(p, 0, d, k) +
                                lambda * static_cast<double>(toga::detail::linear_bits(p, d, k));
        CHECK(dp == doctest::Approx(dp_check).epsilon(1e-12));
        double best = INFINITY;
        for (int code = 0; code < 27; ++code) {
          toga::layer_decision e{1, 1, {}};
          for (int b = 0, rest = code; b < blocks; ++b, rest /= 3)
            e.precision[static_cast<std::size_t>(k)].set(b, rest % 3, blocks);
          best = std::min(best, toga::detail::quant_loss(p, 0, e, k) +
                                    lambda * static_cast<double>(toga::detail::linear_bits(p, e, k)));
        }
        CHECK(dp == doctest::Approx(best).epsilon(1e-12));
      }
    }
  }
}

TEST_CASE("toga: allocation with input-channel blocks meets the budget and is no worse than one precision per linear") {
  int better = 0, cases = 0;
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    const toga::profile one = random_profile(3, seed, true);
    const toga::profile four = split_profile(one, 4, seed + 7);
    for (double bpw : {1.3, 1.7, 2.2}) {
      auto a = toga::allocate(one, bpw);
      auto b = toga::allocate(four, bpw);
      REQUIRE(a.ok());
      REQUIRE_MESSAGE(b.ok(), b.message());
      CHECK(toga::configuration_bits(four, *b) <= toga::budget_bits(four, bpw));
      const double la = toga::predicted_loss(one, *a), lb = toga::predicted_loss(four, *b);
      CHECK(lb <= la * (1 + 1e-9));
      better += lb < la * 0.999;
      ++cases;
      bool mixed = false;
      for (const auto& d : *b)
        for (const auto& bp : d.precision) mixed = mixed || !bp.uniform(4);
      CHECK(mixed);
    }
  }
  MESSAGE("blocks lowered the predicted loss in " << better << " of " << cases << " cases");
  CHECK(better * 2 >= cases);
}
