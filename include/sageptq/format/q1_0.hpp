#pragma once
/// @file q1_0.hpp
/// ggml's Q1_0 semantics in a kernel-friendly structure-of-arrays layout: one sign bit per weight and one fp16
/// scale d per 128 consecutive weights of a row; bit 1 decodes to +d, bit 0 to -d. A ragged last group (cols not a
/// multiple of 128) keeps its own scale; its sign words are padded to a whole group, and the padding is counted.
///
/// Layout (row-major, rows x cols logical):
///   signs  : uint32 [rows][words_per_row], words_per_row = 4 * groups_per_row; bit b of word w is column 32w + b
///   scales : fp16   [rows][groups_per_row]
/// Full bits = 32 * signs.size() + 16 * scales.size(), exactly the bytes stored.

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

struct q1_0 {
  static constexpr int group_size = 128;
  static constexpr int words_per_group = group_size / 32;
  static_assert(words_per_group * 32 == group_size, "a Q1_0 group must be whole 32-bit words");

  SAGEPTQ_HOST_DEVICE static constexpr index_t groups_per_row(index_t cols) noexcept {
    return (cols + group_size - 1) / group_size;
  }
  SAGEPTQ_HOST_DEVICE static constexpr index_t words_per_row(index_t cols) noexcept {
    return groups_per_row(cols) * words_per_group;
  }
};

/// Non-owning packed Q1_0 matrix: the argument GEMV kernels and decoders take. Trivially copyable.
template <class Space = host_space>
struct q1_0_view {
  const std::uint32_t* signs = nullptr;
  const fp16* scales = nullptr;
  index_t rows = 0;
  index_t cols = 0;

  SAGEPTQ_HOST_DEVICE constexpr index_t words_per_row() const noexcept { return q1_0::words_per_row(cols); }
  SAGEPTQ_HOST_DEVICE constexpr index_t groups_per_row() const noexcept { return q1_0::groups_per_row(cols); }

  /// Decoded weight (r, c).
  SAGEPTQ_HOST_DEVICE float operator()(index_t r, index_t c) const noexcept {
    const std::uint32_t word = signs[r * words_per_row() + c / 32];
    const float d = scales[r * groups_per_row() + c / q1_0::group_size].to_float();
    return ((word >> (c % 32)) & 1u) ? d : -d;
  }
};

/// Owning host Q1_0 matrix.
struct q1_0_matrix {
  index_t rows = 0;
  index_t cols = 0;
  std::vector<std::uint32_t> signs;
  std::vector<fp16> scales;

  [[nodiscard]] q1_0_view<host_space> view() const noexcept { return {signs.data(), scales.data(), rows, cols}; }

  [[nodiscard]] bit_breakdown bits() const noexcept {
    bit_breakdown b;
    b.weights = static_cast<std::uint64_t>(rows * cols);
    b.sign_bits = b.weights;
    b.padding_bits = static_cast<std::uint64_t>(signs.size()) * 32 - b.sign_bits;
    b.scale_bits = static_cast<std::uint64_t>(scales.size()) * 16;
    b.paper_bits = b.sign_bits;
    return b;
  }
};

/// Decode into a row-major float matrix (the scalar reference every kernel is tested against).
template <class Space>
void decode(const q1_0_view<Space>& packed, matrix_view<float> out) {
  detail::decode_by_element<Space>(packed, out);
}

}  // namespace format
SAGEPTQ_NAMESPACE_END
