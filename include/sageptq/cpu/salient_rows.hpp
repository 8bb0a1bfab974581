#pragma once
/// @file salient_rows.hpp
/// The salient tail of sage's GEMV: per row, K_s codes of b bits (b in [1, 8]) on a uniform grid, against the
/// gathered fp32 salient activations,
///     out[b][r] += scale_r * sum_k (code_rk - zero_r) * x_s[b][k].
/// The activations stay fp32 on every path (salient columns carry the large products). The scalar path here is the
/// reference; salient_rows_avx512.hpp decodes 16 codes per step. Threading: none; callers pass row ranges.

#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/numeric.hpp"
#include "../core/tensor_view.hpp"
#include "../format/rtn.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

struct salient_rows {
  const std::uint32_t* codes = nullptr;  ///< row r starts at codes + r * row_words
  index_t row_words = 0;
  int bits = 0;
  index_t count = 0;                     ///< K_s
  const fp16* scales = nullptr;          ///< per row
  const std::uint8_t* zeros = nullptr;   ///< per row; nullptr: symmetric grid, zero = symmetric_zero
  float symmetric_zero = 0.0f;
  const float* x = nullptr;              ///< batch rows of padded_count() floats, x_position order, zero past count
  index_t batch = 0;

  /// Codes the SIMD paths decode per load: 16 bytes of 8 / bits codes each where bits divides 8, else 16 codes.
  [[nodiscard]] index_t simd_chunk() const noexcept { return bits > 0 && 8 % bits == 0 ? 128 / bits : 16; }
  /// Row stride of x: whole SIMD chunks, so a SIMD path reads whole vectors.
  [[nodiscard]] index_t padded_count() const noexcept {
    return (count + simd_chunk() - 1) / simd_chunk() * simd_chunk();
  }
  /// Where code k's activation sits in a row of x: k for the scalar path; the SIMD paths put the codes that share
  /// a byte (bits dividing 8) in separate vectors: in a chunk of 16 bytes, code m (byte m / c, c = 8 / bits codes
  /// per byte) goes to 16 (m % c) + m / c, so a vector of 16 bytes' codes meets 16 consecutive activations.
  [[nodiscard]] index_t x_position(index_t k, bool simd) const noexcept {
    if (!simd || simd_chunk() == 16) return k;
    const index_t per_byte = 8 / bits, m = k % simd_chunk();
    return k - m + 16 * (m % per_byte) + m / per_byte;
  }
  [[nodiscard]] float zero(index_t r) const noexcept {
    return zeros == nullptr ? symmetric_zero : static_cast<float>(zeros[r]);
  }
};

/// Rows [r0, r1): adds each row's salient sum to out[b * out_stride + r], codes read in order.
inline void add_salient_scalar(const salient_rows& s, index_t r0, index_t r1, float* out, index_t out_stride) {
  std::vector<float> level(static_cast<std::size_t>(s.count));  // code - zero: exact small values
  for (index_t r = r0; r < r1; ++r) {
    const float zero = s.zero(r);
    for (index_t k = 0; k < s.count; ++k)
      level[static_cast<std::size_t>(k)] =
          static_cast<float>(format::read_code(s.codes + r * s.row_words, k, s.bits)) - zero;
    const float scale = s.scales[r].to_float();
    for (index_t b = 0; b < s.batch; ++b) {
      const float* x = s.x + b * s.padded_count();
      float dot = 0.0f;
      for (index_t k = 0; k < s.count; ++k) dot += level[static_cast<std::size_t>(k)] * x[s.x_position(k, false)];
      out[b * out_stride + r] += scale * dot;
    }
  }
}

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
