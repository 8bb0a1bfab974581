#pragma once
/// @file rtn.hpp
/// Uniform b-bit codes (1 <= b <= 8) with one fp16 scale per group of g consecutive weights of a row, and for
/// asymmetric grids one integer zero point per group.
///
///   asymmetric: w = scale * (q - zero),            q, zero in [0, 2^b - 1]     (GPTQ's convention)
///   symmetric : w = scale * (q - (2^b - 1) / 2),   q in [0, 2^b - 1], no zero stored (a grid without a zero level,
///                                                  so 1-bit symmetric is +-scale/2)
///
/// Layout (row-major, rows x cols logical):
///   codes  : uint32 [rows][words_per_row], each row a little-endian bit stream of cols codes of b bits (a code may
///            straddle two words), padded to a whole word
///   scales : fp16  [rows][groups_per_row]
///   zeros  : uint8 [rows][groups_per_row] (asymmetric only)
/// Full bits = 32 * codes.size() + 16 * scales.size() + 8 * zeros.size(), exactly the bytes stored.

#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/numeric.hpp"
#include "../core/tensor_view.hpp"
#include "bit_accounting.hpp"
#include "decode.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

struct rtn_layout {
  int bits = 4;
  index_t group_size = 128;  ///< columns per scale; >= cols means one scale per row (per channel)
  bool symmetric = false;

  SAGEPTQ_HOST_DEVICE constexpr index_t groups_per_row(index_t cols) const noexcept {
    return (cols + group_size - 1) / group_size;
  }
  SAGEPTQ_HOST_DEVICE constexpr index_t words_per_row(index_t cols) const noexcept {
    return (cols * bits + 31) / 32;
  }
  SAGEPTQ_HOST_DEVICE constexpr std::uint32_t max_code() const noexcept { return (1u << bits) - 1u; }
};

/// Read code c of a row's bit stream.
SAGEPTQ_HOST_DEVICE std::uint32_t read_code(const std::uint32_t* row_words, index_t c, int bits) noexcept {
  const index_t bit = c * bits;
  const index_t w = bit / 32;
  const int shift = static_cast<int>(bit % 32);
  std::uint64_t pair = row_words[w];
  if (shift + bits > 32) pair |= static_cast<std::uint64_t>(row_words[w + 1]) << 32;
  return static_cast<std::uint32_t>(pair >> shift) & ((1u << bits) - 1u);
}

/// Write code c of a row's bit stream (the words must start zeroed).
inline void write_code(std::uint32_t* row_words, index_t c, int bits, std::uint32_t code) noexcept {
  const index_t bit = c * bits;
  const index_t w = bit / 32;
  const int shift = static_cast<int>(bit % 32);
  row_words[w] |= code << shift;
  if (shift + bits > 32) row_words[w + 1] |= code >> (32 - shift);
}

template <class Space = host_space>
struct rtn_view {
  const std::uint32_t* codes = nullptr;
  const fp16* scales = nullptr;
  const std::uint8_t* zeros = nullptr;  ///< null for symmetric grids
  index_t rows = 0;
  index_t cols = 0;
  rtn_layout layout{};

  SAGEPTQ_HOST_DEVICE float operator()(index_t r, index_t c) const noexcept {
    const std::uint32_t q = read_code(codes + r * layout.words_per_row(cols), c, layout.bits);
    const index_t g = r * layout.groups_per_row(cols) + c / layout.group_size;
    const float scale = scales[g].to_float();
    const float zero = layout.symmetric ? 0.5f * static_cast<float>(layout.max_code()) : static_cast<float>(zeros[g]);
    return scale * (static_cast<float>(q) - zero);
  }
};

struct rtn_matrix {
  index_t rows = 0;
  index_t cols = 0;
  rtn_layout layout{};
  std::vector<std::uint32_t> codes;
  std::vector<fp16> scales;
  std::vector<std::uint8_t> zeros;

  [[nodiscard]] rtn_view<host_space> view() const noexcept {
    return {codes.data(), scales.data(), layout.symmetric ? nullptr : zeros.data(), rows, cols, layout};
  }

  [[nodiscard]] bit_breakdown bits() const noexcept {
    bit_breakdown b;
    b.weights = static_cast<std::uint64_t>(rows * cols);
    b.code_bits = b.weights * static_cast<std::uint64_t>(layout.bits);
    b.padding_bits = static_cast<std::uint64_t>(codes.size()) * 32 - b.code_bits;
    b.scale_bits = static_cast<std::uint64_t>(scales.size()) * 16 + static_cast<std::uint64_t>(zeros.size()) * 8;
    b.paper_bits = b.code_bits;
    return b;
  }
};

template <class Space>
void decode(const rtn_view<Space>& packed, matrix_view<float> out) {
  detail::decode_by_element<Space>(packed, out);
}

}  // namespace format
SAGEPTQ_NAMESPACE_END
