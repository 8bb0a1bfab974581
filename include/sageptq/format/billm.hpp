#pragma once
/// @file billm.hpp
/// Everything BiLLM's decoder needs, stored honestly (BiLLM's code ships fake-quantized weights only).
///
/// Per block of `block_size` columns (128 in BiLLM) a few columns are salient; a salient weight is a residual
/// binarization of order 2, t_1 + t_2; every other weight belongs to group 1 or group 2 of its row and block and is
/// one binary term; t = format::binary_term(sign, alpha, mu) with an fp16 (mu, alpha) per row, block and part.
///
/// Layout (row-major, rows x cols logical, words_per_row = blocks * block_size / 32):
///   salient : uint32 [words_per_row]         bit c set: column c is salient
///   signs   : uint32 [rows][words_per_row]   the sign of the first term (bit c of word c / 32: column c)
///   second  : uint32 [rows][words_per_row]   salient column: the sign of the residual term t_2;
///                                            otherwise the group flag (set: group 2)
///   scales  : fp16   [rows][blocks][8]       (mu, alpha) of group 1, group 2, salient order 1, salient order 2
/// The residual sign plane and the group bitmap are sent by BiLLM's decoder to disjoint weights, so they share one
/// plane: each weight uses exactly one of its bits, and a kernel reads both planes with the same index.
/// Padding (the ragged last block, cols not a multiple of block_size) is stored as zeros and counted.
/// Bits: full = 32 * (words of the three bit arrays) + 16 * scales = the bytes stored; paper-style = what BiLLM counts:
/// one sign per weight, the second sign of each salient weight, and the salient column bitmap.

#include <bit>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/numeric.hpp"
#include "../core/tensor_view.hpp"
#include "binary_term.hpp"
#include "bit_accounting.hpp"
#include "decode.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

struct billm {
  static constexpr int scales_per_block = 8;
  /// Index of the (mu, alpha) pair of each binarized part within a row's block: scales[8 k + 2 part + {0: mu, 1: alpha}].
  enum part : int { group1 = 0, group2 = 1, salient1 = 2, salient2 = 3 };

  SAGEPTQ_HOST_DEVICE static constexpr index_t blocks(index_t cols, index_t block_size) noexcept {
    return (cols + block_size - 1) / block_size;
  }
  /// Words of one row of a bit plane; block_size is a multiple of 32, so every block starts a word.
  SAGEPTQ_HOST_DEVICE static constexpr index_t words_per_row(index_t cols, index_t block_size) noexcept {
    return blocks(cols, block_size) * (block_size / 32);
  }
  SAGEPTQ_HOST_DEVICE static constexpr bool bit(const std::uint32_t* words, index_t i) noexcept {
    return (words[i / 32] >> (i % 32)) & 1u;
  }
};

/// Non-owning packed BiLLM matrix. Trivially copyable.
template <class Space = host_space>
struct billm_view {
  const std::uint32_t* salient = nullptr;
  const std::uint32_t* signs = nullptr;
  const std::uint32_t* second = nullptr;
  const fp16* scales = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t block_size = 128;

  SAGEPTQ_HOST_DEVICE constexpr index_t words_per_row() const noexcept { return billm::words_per_row(cols, block_size); }
  SAGEPTQ_HOST_DEVICE constexpr index_t blocks() const noexcept { return billm::blocks(cols, block_size); }

  /// Decoded weight (r, c): t_1 + t_2 for a salient column (float, left to right), else the term of its group.
  SAGEPTQ_HOST_DEVICE float operator()(index_t r, index_t c) const noexcept {
    const std::uint32_t* row_signs = signs + r * words_per_row();
    const std::uint32_t* row_second = second + r * words_per_row();
    const fp16* s = scales + (r * blocks() + c / block_size) * billm::scales_per_block;
    const auto term = [&](bool positive, int part) {
      return binary_term(positive, s[2 * part + 1].to_float(), s[2 * part].to_float());
    };
    if (billm::bit(salient, c)) {
      const float first = term(billm::bit(row_signs, c), billm::salient1);
      return first + term(billm::bit(row_second, c), billm::salient2);
    }
    return term(billm::bit(row_signs, c), billm::bit(row_second, c) ? billm::group2 : billm::group1);
  }
};

/// Owning host BiLLM matrix.
struct billm_matrix {
  index_t rows = 0;
  index_t cols = 0;
  index_t block_size = 128;
  std::vector<std::uint32_t> salient;
  std::vector<std::uint32_t> signs;
  std::vector<std::uint32_t> second;
  std::vector<fp16> scales;

  /// All-zero arrays of the right sizes (block_size: a positive multiple of 32).
  [[nodiscard]] static billm_matrix zeros(index_t rows, index_t cols, index_t block_size) {
    SAGEPTQ_ASSERT(rows >= 0 && cols >= 0 && block_size > 0 && block_size % 32 == 0);
    const auto words = static_cast<std::size_t>(billm::words_per_row(cols, block_size));
    const auto n = static_cast<std::size_t>(rows);
    return {rows,
            cols,
            block_size,
            std::vector<std::uint32_t>(words, 0u),
            std::vector<std::uint32_t>(n * words, 0u),
            std::vector<std::uint32_t>(n * words, 0u),
            std::vector<fp16>(n * static_cast<std::size_t>(billm::blocks(cols, block_size) * billm::scales_per_block))};
  }

  [[nodiscard]] billm_view<host_space> view() const noexcept {
    return {salient.data(), signs.data(), second.data(), scales.data(), rows, cols, block_size};
  }

  /// Number of salient columns (over all blocks).
  [[nodiscard]] index_t salient_columns() const noexcept {
    index_t k = 0;
    for (std::uint32_t w : salient) k += std::popcount(w);
    return k;
  }

  [[nodiscard]] bit_breakdown bits() const noexcept {
    const auto r = static_cast<std::uint64_t>(rows), c = static_cast<std::uint64_t>(cols);
    const auto k = static_cast<std::uint64_t>(salient_columns());
    bit_breakdown b;
    b.weights = r * c;
    b.sign_bits = r * c + r * k;  // the first plane, and the second at salient columns
    b.group_id_bits = r * (c - k);
    b.salient_position_bits = c;
    b.scale_bits = 16 * static_cast<std::uint64_t>(scales.size());
    b.padding_bits = 32 * static_cast<std::uint64_t>(salient.size() + signs.size() + second.size()) - 2 * r * c - c;
    b.paper_bits = b.sign_bits + b.salient_position_bits;
    return b;
  }
};

/// Decode into a row-major float matrix (the scalar reference every kernel is tested against).
template <class Space>
void decode(const billm_view<Space>& packed, matrix_view<float> out) {
  detail::decode_by_element<Space>(packed, out);
}

}  // namespace format
SAGEPTQ_NAMESPACE_END
