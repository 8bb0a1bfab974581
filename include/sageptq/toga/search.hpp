#pragma once
/// @file search.hpp
/// End-to-end refinement of a TOGA configuration: a (1+1) evolutionary search whose moves are guided by the
/// profile's predicted losses and whose acceptance is decided by the caller's score of the real compressed model
/// (e.g. the KL divergence from the full-precision model on calibration windows). This corrects what the additive
/// prediction misses (interactions of pruning and quantization, of layers).
///
/// Each step mutates the incumbent by 1..max_mutations random single changes (a linear's precision, a layer's kept
/// KV groups or channel level; seeded sageptq::random_generator), repairs it to the budget and fills the budget
/// greedily under the prediction (allocate.hpp), and scores it unless it was scored before; a strictly lower score
/// replaces the incumbent. The same seed and scores give the same configuration.
/// Threading: none here; the score may use the caller's threads.

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../core/random.hpp"
#include "../core/status.hpp"
#include "allocate.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace toga {

struct refine_options {
  int evaluations = 24;   ///< scored candidates besides the start (duplicates are not scored again)
  int max_mutations = 3;  ///< random single changes per candidate
  int max_attempts = 0;   ///< candidates drawn in all, scored or not (0: 8 x evaluations)
  std::uint64_t seed = 0;
};

struct refined {
  configuration best;
  double best_score = 0;
  double start_score = 0;
  int evaluations = 0;  ///< scores computed, the start included
  int accepted = 0;     ///< candidates that replaced the incumbent
};

/// Refines `start` (within the budget of `target_bpw`) with `score(configuration) -> result<double>` (lower is
/// better). invalid_argument when `start` is invalid or over budget, or options are out of range; the score's
/// errors are returned as they come.
template <class Score>
result<refined> refine(const profile& p, configuration start, double target_bpw, Score&& score,
                       const refine_options& opt = {}) {
  if (auto ok = check_profile(p); !ok) return ok;
  const std::uint64_t budget = budget_bits(p, target_bpw);
  if (opt.evaluations < 0 || opt.max_mutations < 1 || opt.max_attempts < 0)
    return fail(status::invalid_argument, "refine needs evaluations >= 0, max_mutations >= 1, max_attempts >= 0");
  if (std::ssize(start) != p.shape.layers || configuration_bits(p, start) > budget)
    return fail(status::invalid_argument, "the start configuration is not within the budget");
  for (index_t l = 0; l < p.shape.layers; ++l)
    if (!valid_decision(p, l, start[static_cast<std::size_t>(l)]))
      return fail(status::invalid_argument,
                  "the start configuration has an invalid decision at layer " + std::to_string(l));

  auto first = score(start);
  if (!first.ok()) return first.as_outcome();
  refined out{start, *first, *first, 1, 0};
  std::vector<configuration> seen{std::move(start)};
  random_generator rng(opt.seed);
  const int attempts = opt.max_attempts > 0 ? opt.max_attempts : 8 * opt.evaluations;
  for (int attempt = 0; attempt < attempts && out.evaluations <= opt.evaluations; ++attempt) {
    configuration candidate = out.best;
    std::vector<bool> mutated(candidate.size(), false);
    const auto mutations = 1 + static_cast<int>(rng.below(static_cast<std::uint64_t>(opt.max_mutations)));
    for (int m = 0; m < mutations; ++m) {
      const auto l = static_cast<std::size_t>(rng.below(static_cast<std::uint64_t>(p.shape.layers)));
      const auto options = neighbours(p, static_cast<index_t>(l), candidate[l]);
      if (!options.empty()) candidate[l] = options[rng.below(options.size())], mutated[l] = true;
    }
    // Pay for the mutation (or spend what it saved) in the other layers, so the prediction cannot simply undo it;
    // when the other layers cannot pay, the mutated ones may be repaired too.
    if (!repair_to_budget(p, candidate, budget, &mutated) && !repair_to_budget(p, candidate, budget)) continue;
    fill_budget(p, candidate, budget, &mutated);
    if (std::find(seen.begin(), seen.end(), candidate) != seen.end()) continue;
    seen.push_back(candidate);
    auto s = score(candidate);
    if (!s.ok()) return s.as_outcome();
    ++out.evaluations;
    if (*s < out.best_score) {
      out.best = std::move(candidate);
      out.best_score = *s;
      ++out.accepted;
    }
  }
  return out;
}

}  // namespace toga
SAGEPTQ_NAMESPACE_END
