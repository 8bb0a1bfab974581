#pragma once
/// @file decision.hpp
/// TOGA's decision space and its exact bit accounting (docs/algorithms.md §2).
///
/// Per decoder layer of a LLaMA-type model the decision is
///  - the number of kept attention KV groups (a KV head with the query heads that read it: pruning respects
///    grouped-query attention, so a pruned group removes head_dim rows of k and v, (heads / kv_heads) * head_dim
///    rows of q and the same columns of o);
///  - the number of kept MLP intermediate channels (rows of gate and up, columns of down), one of a few levels;
///  - a precision per input-channel block of each linear layer, an index into a menu of quantizers (binary, 2-bit,
///    3-bit, sage, ...). The profile fixes the number of blocks per linear (column_blocks, 1 = one precision per
///    linear); the blocks of a linear are equal column ranges (column_block_bounds), and adjacent blocks of one
///    precision form one run, quantized and packed as one matrix (pipeline/column_runs.hpp compensates each run's
///    error on the runs after it), so splitting costs nothing where the precisions agree.
/// Which groups and channels are kept comes from an importance order measured once (toga/allocate.hpp's profile):
/// the first n of the order. Kept structures are packed in their source order, and attention heads and MLP
/// channels are permutation-invariant, so a decoder needs only the packed shapes; the kept-index masks are stored
/// for provenance and still counted (one bit per KV group and per intermediate channel and layer) so the budget
/// holds with every bit a reader could want.
///
/// Bits: a precision's bits for a rows x cols matrix are exact for uniform grids (the packed rtn format: codes
/// padded to 32-bit words per row, an fp16 scale per row, an 8-bit zero point unless symmetric) and an upper bound
/// for sage (it meets its own target_bpw); pipeline code replaces bounds with the packed matrices' exact counts.
/// A linear stored as several runs also pays run_boundary_bits per run after the first (where it starts).
/// Pruned weights cost 0 bits but stay in the denominator: full bpw = all bits / the source model's linear weights.
/// Standard library only; no threads.

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <system_error>
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

/// The precision that precision::name() spells: "gptqB" (B in [1, 8]) or "sage@X" (X in [1, 8]); invalid_argument
/// for anything else.
inline result<precision> parse_precision(std::string_view name) {
  const auto bad = [&] {
    return fail(status::invalid_argument,
                "precision \"" + std::string(name) + "\": expected gptqB (B in [1, 8]) or sage@X (X in [1, 8])");
  };
  const auto whole_number = [](std::string_view text, auto& value) {
    const char* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, value);
    return !text.empty() && ec == std::errc{} && ptr == end;
  };
  if (name.starts_with("gptq")) {
    int bits = 0;
    if (!whole_number(name.substr(4), bits) || bits < 1 || bits > 8) return bad();
    return precision{precision::kind::uniform, bits, 0};
  }
  if (name.starts_with("sage@")) {
    double bpw = 0;
    if (!whole_number(name.substr(5), bpw) || !(bpw >= 1 && bpw <= 8)) return bad();
    return precision{precision::kind::sage, 0, bpw};
  }
  return bad();
}

/// A menu from comma-separated names ("gptq1,sage@1.1,gptq2,gptq3" is the default), kept in the given order;
/// invalid_argument for an empty list, a bad name or a repeated one.
inline result<std::vector<precision>> parse_precisions(std::string_view list) {
  std::vector<precision> menu;
  std::vector<std::string> names;
  for (std::size_t begin = 0; begin <= list.size();) {
    const std::size_t end = std::min(list.find(',', begin), list.size());
    auto p = parse_precision(list.substr(begin, end - begin));
    if (!p.ok()) return p.as_outcome();
    if (std::find(names.begin(), names.end(), p->name()) != names.end())
      return fail(status::invalid_argument, "precision " + p->name() + " appears twice in the menu");
    names.push_back(p->name());
    menu.push_back(*p);
    begin = end + 1;
  }
  return menu;
}

/// The most input-channel blocks per linear a profile may have.
inline constexpr int max_column_blocks = 8;
/// Bits that locate a run of blocks after the first in a linear's packed parts (its first column).
inline constexpr std::uint64_t run_boundary_bits = 32;

/// The precision (menu index) of each input-channel block of one linear layer. Made from one index, every block
/// has it. Canonical form: the slots past the profile's block count repeat its last block (set() keeps this), so
/// equal decisions compare equal.
class block_precisions {
 public:
  // NOLINTNEXTLINE(google-explicit-constructor): implicit on purpose, a linear at one precision on every block
  constexpr block_precisions(int every_block = 0) noexcept { slots_.fill(static_cast<std::int8_t>(every_block)); }

  [[nodiscard]] constexpr int operator[](int block) const noexcept { return slots_[static_cast<std::size_t>(block)]; }
  /// Block `block` of `blocks` gets precision `p`.
  constexpr void set(int block, int p, int blocks) noexcept {
    for (int b = block; b < (block == blocks - 1 ? max_column_blocks : block + 1); ++b)
      slots_[static_cast<std::size_t>(b)] = static_cast<std::int8_t>(p);
  }
  /// Whether the first `blocks` blocks share one precision.
  [[nodiscard]] constexpr bool uniform(int blocks) const noexcept {
    for (int b = 1; b < blocks; ++b)
      if (slots_[static_cast<std::size_t>(b)] != slots_[0]) return false;
    return true;
  }
  friend constexpr bool operator==(const block_precisions&, const block_precisions&) = default;

 private:
  std::array<std::int8_t, max_column_blocks> slots_{};
};

/// Column bounds (blocks + 1 values from 0 to cols) of `blocks` equal input-channel blocks of a matrix with `cols`
/// columns, rounded to multiples of 32 (whole words of packed bits) where cols allows distinct ones.
inline std::vector<index_t> column_block_bounds(index_t cols, int blocks) {
  std::vector<index_t> bounds(static_cast<std::size_t>(blocks) + 1, cols);
  bounds[0] = 0;
  bool distinct = true;
  for (int b = 1; b < blocks; ++b) {
    bounds[static_cast<std::size_t>(b)] = (cols * b / blocks + 16) / 32 * 32;
    distinct = distinct && bounds[static_cast<std::size_t>(b)] > bounds[static_cast<std::size_t>(b) - 1];
  }
  distinct = distinct && bounds[static_cast<std::size_t>(blocks)] > bounds[static_cast<std::size_t>(blocks) - 1];
  if (!distinct)
    for (int b = 1; b < blocks; ++b) bounds[static_cast<std::size_t>(b)] = cols * b / blocks;
  return bounds;
}

/// A maximal range of adjacent blocks of one precision: columns [begin, end).
struct precision_run {
  index_t begin = 0, end = 0;
  int precision = 0;
  friend bool operator==(const precision_run&, const precision_run&) = default;
};

/// The runs of a linear with `cols` columns whose `blocks` blocks have precisions `p`.
inline std::vector<precision_run> precision_runs(const block_precisions& p, int blocks, index_t cols) {
  const std::vector<index_t> bounds = column_block_bounds(cols, blocks);
  std::vector<precision_run> runs;
  for (int b = 0; b < blocks; ++b) {
    const index_t begin = bounds[static_cast<std::size_t>(b)], end = bounds[static_cast<std::size_t>(b) + 1];
    if (begin == end) continue;  // fewer columns than blocks
    if (!runs.empty() && runs.back().precision == p[b]) runs.back().end = end;
    else runs.push_back({begin, end, p[b]});
  }
  return runs;
}

/// The decision for one decoder layer.
struct layer_decision {
  index_t groups = 0;    ///< kept KV groups, in [1, kv_heads]
  int channel_level = 0; ///< index into the profile's channel levels (0 = every channel)
  std::array<block_precisions, linears_per_layer> precision{};  ///< menu indices, per linear and input block

  friend bool operator==(const layer_decision&, const layer_decision&) = default;
};

using configuration = std::vector<layer_decision>;

}  // namespace toga
SAGEPTQ_NAMESPACE_END
