#pragma once
/// @file decision.hpp
/// TOGA's decision space and its exact bit accounting (docs/algorithms.md §2).
///
/// Per decoder layer of a LLaMA-type model the decision is
///  - the number of kept attention KV groups (a KV head with the query heads that read it: pruning respects
///    grouped-query attention, so a pruned group removes head_dim rows of k and v, (heads / kv_heads) * head_dim
///    rows of q and the same columns of o);
///  - the number of kept MLP intermediate channels (rows of gate and up, columns of down), one of a few levels;
///  - a precision per linear layer, an index into a menu of quantizers (binary, 2-bit, 3-bit, ...).
/// Which groups and channels are kept comes from an importance order measured once (toga/allocate.hpp's profile):
/// the first n of the order. Kept structures are packed in their source order, and attention heads and MLP
/// channels are permutation-invariant, so a decoder needs only the packed shapes; the kept-index masks are stored
/// for provenance and still counted (one bit per KV group and per intermediate channel and layer) so the budget
/// holds with every bit a reader could want.
///
/// Bits: a precision's bits for a rows x cols matrix are exact for uniform grids (the packed rtn format: codes
/// padded to 32-bit words per row, an fp16 scale per row, an 8-bit zero point unless symmetric) and an upper bound
/// for sage (it meets its own target_bpw); pipeline code replaces bounds with the packed matrices' exact counts.
/// Pruned weights cost 0 bits but stay in the denominator: full bpw = all bits / the source model's linear weights.
/// Standard library only; no threads.

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"
#include "../format/bit_accounting.hpp"
#include "../format/rtn.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace toga {

/// The seven linear layers of a decoder layer, in forward order.
enum class linear : int { q, k, v, o, gate, up, down };
inline constexpr int linears_per_layer = 7;
inline constexpr std::array<linear, linears_per_layer> all_linears = {linear::q,    linear::k,  linear::v,   linear::o,
                                                                      linear::gate, linear::up, linear::down};
constexpr bool is_attention(linear k) noexcept { return static_cast<int>(k) <= static_cast<int>(linear::o); }

/// The dimensions of a LLaMA-type model that the decision space needs.
struct model_shape {
  index_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;

  [[nodiscard]] index_t group_heads() const noexcept { return heads / kv_heads; }
  /// rows x cols of linear `k` with `groups` KV groups and `channels` intermediate channels kept.
  [[nodiscard]] std::pair<index_t, index_t> linear_shape(linear k, index_t groups, index_t channels) const noexcept {
    const index_t q_rows = groups * group_heads() * head_dim, kv_rows = groups * head_dim;
    switch (k) {
      case linear::q: return {q_rows, hidden};
      case linear::k:
      case linear::v: return {kv_rows, hidden};
      case linear::o: return {hidden, q_rows};
      case linear::gate:
      case linear::up: return {channels, hidden};
      default: return {hidden, channels};
    }
  }
  /// Weights of every linear layer of the unpruned model: the denominator of full bpw.
  [[nodiscard]] std::uint64_t source_weights() const noexcept {
    std::uint64_t per_layer = 0;
    for (linear k : all_linears) {
      const auto [r, c] = linear_shape(k, kv_heads, intermediate);
      per_layer += static_cast<std::uint64_t>(r * c);
    }
    return per_layer * static_cast<std::uint64_t>(layers);
  }
  /// The kept-structure masks of one layer (see the top).
  [[nodiscard]] std::uint64_t mask_bits_per_layer() const noexcept {
    return static_cast<std::uint64_t>(kv_heads + intermediate);
  }
  [[nodiscard]] std::uint64_t mask_bits() const noexcept {
    return mask_bits_per_layer() * static_cast<std::uint64_t>(layers);
  }
};

/// invalid_shape unless every dimension is positive and heads is a multiple of kv_heads.
inline outcome check_model_shape(const model_shape& s) {
  if (s.layers < 1 || s.hidden < 1 || s.heads < 1 || s.kv_heads < 1 || s.head_dim < 1 || s.intermediate < 1 ||
      s.heads % s.kv_heads != 0)
    return fail(status::invalid_shape, "TOGA needs positive model dimensions and heads divisible by kv_heads");
  return {};
}

/// One entry of the precision menu.
struct precision {
  enum class kind { uniform, sage };
  kind type = kind::uniform;
  int bits = 2;            ///< uniform: code width (1 = binary with the symmetric +-scale/2 grid)
  double target_bpw = 0;   ///< sage: its full-bpw budget per matrix

  [[nodiscard]] bool symmetric() const noexcept { return type == kind::uniform && bits == 1; }
  [[nodiscard]] std::string name() const {
    if (type == kind::sage) {
      char text[32];
      std::snprintf(text, sizeof text, "sage@%g", target_bpw);
      return text;
    }
    return "gptq" + std::to_string(bits);
  }
  /// Full bits of a rows x cols matrix: exact for uniform grids, an upper bound for sage (see the top).
  [[nodiscard]] std::uint64_t bits_bound(index_t rows, index_t cols) const noexcept {
    if (type == kind::sage)
      return static_cast<std::uint64_t>(std::floor(target_bpw * static_cast<double>(rows) * static_cast<double>(cols)));
    const format::rtn_layout layout{bits, cols, symmetric()};  // one grid per row
    return static_cast<std::uint64_t>(rows) *
           static_cast<std::uint64_t>(32 * layout.words_per_row(cols) + 16 + (symmetric() ? 0 : 8));
  }
};

/// The default menu: binary (GPTQ-compensated, symmetric), 2-bit and 3-bit per channel, plus sage at 1.1 full bpw
/// where a matrix can reach it. Ordered by bits.
inline std::vector<precision> default_precisions() {
  return {{precision::kind::uniform, 1, 0}, {precision::kind::sage, 0, 1.1}, {precision::kind::uniform, 2, 0},
          {precision::kind::uniform, 3, 0}};
}

/// The decision for one decoder layer.
struct layer_decision {
  index_t groups = 0;    ///< kept KV groups, in [1, kv_heads]
  int channel_level = 0; ///< index into the profile's channel levels (0 = every channel)
  std::array<int, linears_per_layer> precision{};  ///< index into the menu, per linear

  friend bool operator==(const layer_decision&, const layer_decision&) = default;
};

using configuration = std::vector<layer_decision>;

}  // namespace toga
SAGEPTQ_NAMESPACE_END
