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

/// A random profile with losses shaped like real ones: more loss for more pruning and fewer bits.
toga::profile random_profile(index_t layers, std::uint64_t seed) {
  sageptq::random_generator rng(seed);
  toga::profile p;
  p.shape = tiny_shape(layers);
  p.precisions = {{toga::precision::kind::uniform, 1, 0}, {toga::precision::kind::uniform, 2, 0},
                  {toga::precision::kind::uniform, 3, 0}};
  p.channel_levels = {48, 32, 16};
  for (index_t l = 0; l < layers; ++l) {
    toga::layer_profile lp;
    lp.group_order = {1, 0};
    lp.channel_order.resize(48);
    for (index_t i = 0; i < 48; ++i) lp.channel_order[static_cast<std::size_t>(i)] = 47 - i;
    lp.attention_loss = {std::numeric_limits<double>::infinity(), 0.1 + rng.uniform(), 0.0};
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
      for (int& pi : d.precision)
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
