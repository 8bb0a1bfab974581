#pragma once
/// @file quantize_matrix.hpp
/// One entry point for every named method of the library, and the parser that turns a method name plus options
/// (CLI flags, a config file) into a method. Each method's own header stays usable alone; this file only dispatches.
///
///   rtn     b bits, group g, symmetric or asymmetric (no calibration)
///   q1_0    sign + fp16 scale per 128 weights of a row (ggml Q1_0; no calibration)
///   gptq    b bits, group g (0 = per channel), GPTQ compensation with the MSE range search
///   septq   b bits per channel, 1% of weights kept in fp16 by importance, GPTQ compensation
///   billm   BiLLM's algorithm and hyperparameters (residual-binarized salient columns, two non-salient groups)
///   sage    SAGE-PTQ under a full-bits budget (pipeline/sage.hpp)
///
/// Options that do not apply to a method are an error, never silently ignored.

#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../calib/hessian.hpp"
#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "billm.hpp"
#include "gptq.hpp"
#include "quantized.hpp"
#include "rtn.hpp"
#include "sage.hpp"
#include "septq.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

struct rtn_method {
  quant::rtn_config config{};
};
struct q1_0_method {};

/// A named method with its configuration.
using method = std::variant<rtn_method, q1_0_method, gptq_config, septq_config, billm_config, sage_config>;

/// Every packed format a named method produces.
using packed_matrix =
    std::variant<format::rtn_matrix, format::q1_0_matrix, format::septq_matrix, format::billm_matrix, format::sage_matrix>;

struct matrix_result {
  packed_matrix packed;
  std::vector<float> dequantized;  ///< rows x cols, row-major: decode(packed)
  matrix_report report;
};

/// The method's name as the CLI and reports spell it.
inline std::string method_name(const method& m) {
  return std::visit(
      [](const auto& c) -> std::string {
        using T = std::decay_t<decltype(c)>;
        if constexpr (std::is_same_v<T, rtn_method>) return "rtn";
        else if constexpr (std::is_same_v<T, q1_0_method>) return "q1_0";
        else if constexpr (std::is_same_v<T, gptq_config>) return "gptq";
        else if constexpr (std::is_same_v<T, septq_config>) return "septq";
        else if constexpr (std::is_same_v<T, billm_config>) return "billm";
        else return "sage";
      },
      m);
}

/// True when the method needs calibration statistics (a Hessian factor).
inline bool needs_calibration(const method& m) {
  return !std::holds_alternative<rtn_method>(m) && !std::holds_alternative<q1_0_method>(m);
}

/// The options a user may give by name; unset ones keep the method's defaults.
struct method_options {
  std::optional<int> bits{};
  std::optional<index_t> group{};       ///< columns per scale; 0 = per channel
  std::optional<double> target_bpw{};  ///< sage: budget on full bits per weight
};

/// Build a named method. invalid_argument for an unknown name or an option the method does not take.
inline result<method> make_method(std::string_view name, const method_options& opt = {}) {
  const auto reject = [&](bool given, const char* option) -> outcome {
    if (given) return fail(status::invalid_argument, std::string(option) + " does not apply to method " + std::string(name));
    return {};
  };
  if (name == "rtn") {
    if (auto ok = reject(opt.target_bpw.has_value(), "--target-bpw"); !ok) return ok;
    rtn_method m;
    m.config.bits = opt.bits.value_or(1);
    m.config.group_size = opt.group.value_or(128);
    return method{m};
  }
  if (name == "q1_0") {
    if (auto ok = reject(opt.bits || opt.group || opt.target_bpw, "--bits/--group/--target-bpw"); !ok) return ok;
    return method{q1_0_method{}};
  }
  if (name == "gptq") {
    if (auto ok = reject(opt.target_bpw.has_value(), "--target-bpw"); !ok) return ok;
    gptq_config m;
    m.bits = opt.bits.value_or(2);
    m.group_size = opt.group.value_or(0);
    return method{m};
  }
  if (name == "septq") {
    if (auto ok = reject(opt.group || opt.target_bpw, "--group/--target-bpw"); !ok) return ok;
    septq_config m;
    m.bits = opt.bits.value_or(2);
    return method{m};
  }
  if (name == "billm") {
    if (auto ok = reject(opt.bits || opt.group || opt.target_bpw, "--bits/--group/--target-bpw"); !ok) return ok;
    return method{billm_config{}};
  }
  if (name == "sage") {
    if (auto ok = reject(opt.bits || opt.group, "--bits/--group"); !ok) return ok;
    sage_config m;
    if (opt.target_bpw) m.target_bpw = *opt.target_bpw;
    return method{m};
  }
  return fail(status::invalid_argument,
              "unknown method " + std::string(name) + " (expected rtn, q1_0, gptq, septq, billm or sage)");
}

/// Rows and columns of one matrix of a model.
struct matrix_extent {
  index_t rows = 0;
  index_t cols = 0;
};

/// A budget for a whole model: sage's target_bpw read as the mean full bpw over `matrices`, weighted by their sizes.
/// Each matrix gets max(its smallest reachable bpw, x), with the largest x that keeps the mean within the target
/// (water filling): narrow matrices whose fixed costs exceed the target take what they must, the others make up for
/// it. Other methods, and sage without a budget, come back unchanged, one per matrix.
/// @return one method per matrix; invalid_argument when even the smallest configurations exceed the target.
inline result<std::vector<method>> spread_budget(const method& m, std::span<const matrix_extent> matrices) {
  std::vector<method> out(matrices.size(), m);
  const auto* sage = std::get_if<sage_config>(&m);
  if (sage == nullptr || sage->target_bpw <= 0 || matrices.empty()) return out;
  double weights = 0, least = 0;
  std::vector<double> smallest;
  for (const auto& e : matrices) {
    if (e.rows < 1 || e.cols < 1) return fail(status::invalid_shape, "spread_budget: a matrix has no rows or columns");
    smallest.push_back(sage_smallest_bpw(e.rows, e.cols, *sage));
    weights += static_cast<double>(e.rows) * static_cast<double>(e.cols);
    least += smallest.back() * static_cast<double>(e.rows) * static_cast<double>(e.cols);
  }
  const double target = sage->target_bpw;
  if (least > target * weights)
    return fail(status::invalid_argument, "no sage configuration fits " + std::to_string(target) +
                                              " full bpw over these matrices; the smallest reachable is " +
                                              std::to_string(least / weights));
  const auto mean_at = [&](double x) {
    double bits = 0;
    for (std::size_t i = 0; i < matrices.size(); ++i)
      bits += std::max(smallest[i], x) * static_cast<double>(matrices[i].rows) * static_cast<double>(matrices[i].cols);
    return bits / weights;
  };
  double lo = 0, hi = target;  // mean_at(lo) <= target (checked above), mean_at(hi) >= target
  for (int i = 0; i < 60; ++i) (mean_at(0.5 * (lo + hi)) <= target ? lo : hi) = 0.5 * (lo + hi);
  for (std::size_t i = 0; i < matrices.size(); ++i) std::get<sage_config>(out[i]).target_bpw = std::max(smallest[i], lo);
  return out;
}

/// A model budget spent matrix by matrix, in any order: the share of the next matrix is spread_budget over the
/// matrices not yet quantized with the bits the quantized ones left, so a matrix that lands below its share (sage
/// picks among discrete candidates) passes the rest on instead of wasting it (gutenberg-llama-20m, sage at 2.0 bpw:
/// 1.931 full bpw with fixed shares). The total stays within the budget when each matrix stays within its share.
/// Other methods, and sage without a budget, get the method unchanged.
class budget_ledger {
 public:
  /// The statuses of spread_budget for the whole model.
  static result<budget_ledger> create(const method& m, std::span<const matrix_extent> matrices) {
    if (auto whole = spread_budget(m, matrices); !whole.ok()) return whole.as_outcome();
    budget_ledger out;
    out.method_ = m;
    out.matrices_.assign(matrices.begin(), matrices.end());
    out.spent_.assign(matrices.size(), false);
    if (const auto* sage = std::get_if<sage_config>(&m); sage && sage->target_bpw > 0) {
      double weights = 0;
      for (const auto& e : matrices) weights += static_cast<double>(e.rows) * static_cast<double>(e.cols);
      out.left_bits_ = sage->target_bpw * weights;
    }
    return out;
  }

  /// The method for matrix i, which must not be recorded yet; spread_budget's statuses.
  [[nodiscard]] result<method> method_for(std::size_t i) const {
    SAGEPTQ_ASSERT(i < matrices_.size() && !spent_[i]);
    const auto* sage = std::get_if<sage_config>(&method_);
    if (!sage || sage->target_bpw <= 0) return method_;
    std::vector<matrix_extent> left;
    std::size_t at = 0;
    double weights = 0;
    for (std::size_t j = 0; j < matrices_.size(); ++j) {
      if (spent_[j]) continue;
      if (j == i) at = left.size();
      left.push_back(matrices_[j]);
      weights += static_cast<double>(matrices_[j].rows) * static_cast<double>(matrices_[j].cols);
    }
    sage_config share = *sage;
    share.target_bpw = left_bits_ / weights;
    auto spread = spread_budget(share, left);
    if (!spread.ok()) return spread.as_outcome();
    return std::move((*spread)[at]);
  }

  /// Records that matrix i was quantized with `full_bits` stored bits.
  void record(std::size_t i, std::uint64_t full_bits) {
    SAGEPTQ_ASSERT(i < matrices_.size() && !spent_[i]);
    spent_[i] = true;
    left_bits_ -= static_cast<double>(full_bits);
  }

 private:
  method method_;
  std::vector<matrix_extent> matrices_;
  std::vector<bool> spent_;
  double left_bits_ = 0;
};

/// Quantize one matrix with a named method. `factor` may be null for methods that need no calibration.
/// @return the packed matrix, its decoded values and the report, or the method's error; invalid_argument when a
///         calibrated method gets no factor.
template <host_matrix_like Weights, executor Exec = inline_executor>
result<matrix_result> quantize_matrix(const Weights& weights, const calib::hessian_factor* factor, const method& m,
                                      const Exec& exec = {}) {
  if (needs_calibration(m) && factor == nullptr)
    return fail(status::invalid_argument, "method " + method_name(m) + " needs calibration statistics");
  const auto finish = [](auto&& q) -> result<matrix_result> {
    if (!q.has_value()) return q.as_outcome();
    matrix_result out{std::move(q->packed), std::move(q->dequantized), std::move(q->report)};
    if (!q.ok()) out.report.notes += q.message();
    return out;
  };
  return std::visit(
      [&](const auto& c) -> result<matrix_result> {
        using T = std::decay_t<decltype(c)>;
        if constexpr (std::is_same_v<T, rtn_method>)
          return finish(quantize_rtn_method(weights, c.config, factor, exec));
        else if constexpr (std::is_same_v<T, q1_0_method>)
          return finish(quantize_q1_0_method(weights, factor, exec));
        else if constexpr (std::is_same_v<T, gptq_config>)
          return finish(quantize_gptq(weights, *factor, c, exec));
        else if constexpr (std::is_same_v<T, septq_config>)
          return finish(quantize_septq(weights, *factor, c, exec));
        else if constexpr (std::is_same_v<T, billm_config>)
          return finish(quantize_billm(weights, *factor, c, exec));
        else
          return finish(quantize_sage(weights, *factor, c, exec));
      },
      m);
}

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
