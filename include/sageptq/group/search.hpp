#pragma once
/// @file search.hpp
/// The exhaustive baseline for G: fit the grouping policy (assign.hpp) for every G = 1..max_groups, measure the
/// binarization error and the bits, and keep the G with the best trade-off. The error alone always prefers more
/// groups, so the default criterion prices bits at the rate-distortion exchange rate of a good quantizer: one more
/// bit per weight must divide the squared error by at least `bits_exchange` (4 = 6.02 dB per bit):
///     objective(G) = ln SE(G) + full_bpw(G) · ln(bits_exchange),   full_bpw over the unsalient weights.
/// bits_exchange = 1 turns the price off (pure error). Single-threaded: max_groups fits.

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/status.hpp"
#include "../format/bit_accounting.hpp"
#include "assign.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace group {

template <class P, class W>
concept grouping_policy = requires(const P& p, const W& w, const std::vector<std::uint8_t>& salient) {
  { fit(p, w, salient, 1) } -> std::same_as<result<grouping>>;
};

struct search_config {
  int max_groups = 16;
  double bits_exchange = 4.0;  ///< squared-error ratio one extra stored bit per weight must buy
};

struct search_point {
  int groups = 1;
  double squared_error = 0;
  format::bit_breakdown bits;
  double objective = 0;
};

struct search_result {
  int best_groups = 1;
  std::vector<search_point> curve;  ///< curve[G - 1]

  [[nodiscard]] const search_point& at(int groups) const { return curve[static_cast<std::size_t>(groups - 1)]; }
};

/// Fit `policy` for G = 1..cfg.max_groups and pick G by the objective above (ties: the smaller G).
/// @return the curve, or invalid_argument (max_groups outside [1, 256], bits_exchange < 1) and the errors of fit().
template <class Policy, host_matrix_like Weights>
  requires grouping_policy<Policy, Weights>
result<search_result> search_groups(const Policy& policy, const Weights& weights,
                                    const std::vector<std::uint8_t>& salient, const search_config& cfg) {
  if (cfg.max_groups < 1 || cfg.max_groups > 256)
    return fail(status::invalid_argument, "max_groups must be in [1, 256], got " + std::to_string(cfg.max_groups));
  if (!(cfg.bits_exchange >= 1.0))
    return fail(status::invalid_argument, "bits_exchange must be >= 1, got " + std::to_string(cfg.bits_exchange));
  const auto w = sageptq::view(weights);
  search_result out;
  for (int g = 1; g <= cfg.max_groups; ++g) {
    auto q = fit(policy, weights, salient, g);
    if (!q.ok()) return q.as_outcome();
    index_t unsalient = w.rows() * w.cols();
    for (const auto s : salient) unsalient -= s != 0;
    search_point p{g, squared_error(*q, weights, salient), bits(*q, unsalient), 0.0};
    p.objective = std::log(p.squared_error) + p.bits.full_bpw() * std::log(cfg.bits_exchange);
    out.curve.push_back(p);
    if (p.objective < out.at(out.best_groups).objective) out.best_groups = g;
  }
  return out;
}

}  // namespace group
SAGEPTQ_NAMESPACE_END
