#pragma once
/// @file bit_accounting.hpp
/// Honest bit counts. Every packed format reports every bit a decoder needs, padding included, split by what the
/// bits are for. `full_bpw()` divides all of them by the number of logical weights; `paper_bpw()` counts what
/// BiLLM and SAGE-PTQ count (sign planes and the extra bits of salient weights), for comparison with publications.

#include <cstdint>

#include "../config.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

struct bit_breakdown {
  std::uint64_t weights = 0;                ///< logical weights the bits describe (rows x cols of the source)
  std::uint64_t sign_bits = 0;              ///< binary planes (one bit per binarized weight per plane)
  std::uint64_t code_bits = 0;              ///< multi-bit integer codes (uniform quantizers, salient codes)
  std::uint64_t scale_bits = 0;             ///< every stored scale, mean, zero point or lookup-table entry
  std::uint64_t group_id_bits = 0;          ///< group membership that a decoder reads (per weight, row or column)
  std::uint64_t salient_position_bits = 0;  ///< where salient weights are (bitmaps, indices, permutations)
  std::uint64_t salient_value_bits = 0;     ///< values of salient weights stored apart from the codes
  std::uint64_t padding_bits = 0;           ///< alignment and word padding that is stored
  std::uint64_t metadata_bits = 0;          ///< per-matrix header fields a decoder needs (shapes, counts)
  std::uint64_t paper_bits = 0;             ///< what publications count: signs + salient extra bits

  [[nodiscard]] constexpr std::uint64_t full_bits() const noexcept {
    return sign_bits + code_bits + scale_bits + group_id_bits + salient_position_bits + salient_value_bits +
           padding_bits + metadata_bits;
  }
  [[nodiscard]] constexpr double full_bpw() const noexcept {
    return weights ? static_cast<double>(full_bits()) / static_cast<double>(weights) : 0.0;
  }
  [[nodiscard]] constexpr double paper_bpw() const noexcept {
    return weights ? static_cast<double>(paper_bits) / static_cast<double>(weights) : 0.0;
  }

  constexpr bit_breakdown& operator+=(const bit_breakdown& o) noexcept {
    weights += o.weights;
    sign_bits += o.sign_bits;
    code_bits += o.code_bits;
    scale_bits += o.scale_bits;
    group_id_bits += o.group_id_bits;
    salient_position_bits += o.salient_position_bits;
    salient_value_bits += o.salient_value_bits;
    padding_bits += o.padding_bits;
    metadata_bits += o.metadata_bits;
    paper_bits += o.paper_bits;
    return *this;
  }
};

/// Words of `word_bits` bits needed to hold `bits` bits.
SAGEPTQ_HOST_DEVICE constexpr std::int64_t words_for_bits(std::int64_t bits, int word_bits = 32) noexcept {
  return (bits + word_bits - 1) / word_bits;
}

}  // namespace format
SAGEPTQ_NAMESPACE_END
