#pragma once
/// @file binary_rows_vnni.hpp
/// AVX-512 VNNI path of detail::binary_rows on int8 activations (int8_activations.hpp): 64 sign bits become a
/// byte mask (kmovq), the mask selects bytes of 1 (vmovdqu8{z}), and vpdpbusd adds the int8 activations under the
/// 1 bits into 16 int32 lanes: P = sum_{bit=1} q_j, exact. Per activation block the float sum gains d * P; then
///     sum_j s_j x_j = 2 sum_block d P - sum_block d S,   S = sum_j q_j (the block offsets),
/// so there is no per-weight sign flip and the byte mask is shared by the batch columns of a pass (up to
/// vnni_batch = 4): one vpdpbusd per 64 weights and batch column, plus a kmovq and a vmovdqu8 per 64 weights and
/// row. Two scale layouts: one scale per row (sage: alpha applied once per row, activation blocks of 256 columns, so
/// the int32 -> float conversion and FMA, 2 of 8 vector ops per 128 weights and row, come half as often) or one per
/// 128-column block (q1_0: d_g folded per block). sage's salient tail (salient_rows_avx512.hpp) runs inside the
/// same row tile: its fp32 products join the lanes of 2 alpha sum d P, so each row and batch column takes one lane
/// reduction, and the tail costs no second pass over the rows.
/// Numerics: int32 exact within a block; float per block, in block order; the int8 rounding of x is the only
/// approximation beyond fp32 rounding (bound in int8_activations.hpp). Threading: none.

#include "isa.hpp"

#if SAGEPTQ_CPU_X86
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "binary_rows.hpp"
#include "binary_rows_avx512.hpp"  // sum_lanes
#include "int8_activations.hpp"
#include "salient_rows_avx512.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

#define SAGEPTQ_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))

/// The int8 side of a VNNI pass: `batch` rows of q (from quantize_int8, 32 * row_words columns each) with block
/// scales, and per weight group the sum of the group's block offsets, [batch][groups].
struct int8_rows {
  const std::int8_t* q = nullptr;
  index_t q_stride = 0;
  const float* scales = nullptr;  ///< [batch][blocks], blocks = row_words / 4
  const float* offsets = nullptr;  ///< [batch][groups]
  index_t batch = 0;
};

/// quantize_block() on AVX-512, bit-identical: the same IEEE max, quotient, product and round-half-even
/// (vcvtps2dq in the default rounding mode); the |q| <= 127 range makes the saturating narrowing exact.
SAGEPTQ_AVX512_VNNI inline int8_block_scale quantize_block_avx512(const float* x, std::int8_t* q, index_t n) {
  // all-lanes zero-masked forms throughout: GCC 12's unmasked vmaxps, vcvtps2dq and vpmovsdb trip -Wuninitialized
  constexpr auto all_lanes = static_cast<__mmask16>(0xFFFF);
  __m512 max = _mm512_setzero_ps();
  for (index_t i = 0; i < n; i += 16) max = _mm512_maskz_max_ps(all_lanes, max, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  alignas(64) float lane[16];
  _mm512_store_ps(lane, max);
  float block_max = 0.0f;
  for (float m : lane) block_max = std::max(block_max, m);
  if (!(block_max >= int8_flush)) {
    std::memset(q, 0, static_cast<std::size_t>(n));
    return {0.0f, 0.0f};
  }
  const float d = block_max / 127.0f;
  const __m512 inverse = _mm512_set1_ps(127.0f / block_max);
  __m512i sum = _mm512_setzero_si512();
  for (index_t i = 0; i < n; i += 16) {
    const __m512i qi = _mm512_maskz_cvtps_epi32(all_lanes, _mm512_mul_ps(_mm512_loadu_ps(x + i), inverse));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_maskz_cvtsepi32_epi8(all_lanes, qi));
    sum = _mm512_add_epi32(sum, qi);
  }
  alignas(64) std::int32_t sums[16];
  _mm512_store_si512(sums, sum);
  std::int32_t total = 0;
  for (std::int32_t s : sums) total += s;
  return {d, d * static_cast<float>(total)};
}

/// scale(r, g) by the F16C instruction (exact, like fp16::to_float, which is bit arithmetic).
SAGEPTQ_AVX512_VNNI inline float scale_f16c(const binary_rows& w, index_t r, index_t g) {
  return _cvtsh_ss(w.scales[r * w.groups() + g].bits);
}

/// Activation block `block` (Words sign words from word0) of rows [r0, r0 + R): total[r][b] += (scale_g) d P.
template <int R, int B, int Words, bool RowScaled>
SAGEPTQ_AVX512_VNNI __attribute__((always_inline)) inline void vnni_block(const binary_rows& w, const int8_rows& x,
                                                                          index_t r0, index_t block, index_t word0,
                                                                          index_t blocks, __m512 (&total)[R][B]) {
  const __m512i ones = _mm512_set1_epi8(1);
  const std::uint32_t* signs = w.signs + r0 * w.row_words;
  __m512i ones_sum[R][B];  // P: int8 activations under the 1 bits, 16 int32 lanes
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) ones_sum[r][b] = _mm512_setzero_si512();
  for (int pair = 0; pair < Words / 2; ++pair) {  // 64 columns per step
    const index_t word = word0 + 2 * pair;
    __m512i q[B];
    for (int b = 0; b < B; ++b) q[b] = _mm512_loadu_si512(x.q + b * x.q_stride + 32 * word);
    for (int r = 0; r < R; ++r) {
      std::uint64_t bits;  // words 2k and 2k + 1: little-endian, so bit j of the pair is column 32 word + j
      std::memcpy(&bits, signs + r * w.row_words + word, sizeof bits);
      const __m512i selected = _mm512_maskz_mov_epi8(_cvtu64_mask64(bits), ones);
      for (int b = 0; b < B; ++b) ones_sum[r][b] = _mm512_dpbusd_epi32(ones_sum[r][b], selected, q[b]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float group_scale = RowScaled ? 1.0f : scale_f16c(w, r0 + r, block);
    for (int b = 0; b < B; ++b) {
      const __m512 d = _mm512_set1_ps(group_scale * x.scales[b * blocks + block]);
      // exact (|P| < 2^24); the all-lanes zero-masked form, as GCC 12's _mm512_cvtepi32_ps trips -Wuninitialized
      const __m512 ones_sum_f = _mm512_maskz_cvtepi32_ps(static_cast<__mmask16>(0xFFFF), ones_sum[r][b]);
      total[r][b] = _mm512_fmadd_ps(ones_sum_f, d, total[r][b]);
    }
  }
}

/// Rows [r0, r0 + R) for B batch columns; RowScaled: one group per row and activation blocks of int8_wide_block
/// columns (the last one int8_block where the row is an odd number of those), else one group and one activation
/// block per int8_block columns; salient (RowScaled only; nullptr: none): the rows' salient tail for the same batch
/// columns, added in the tile.
template <int R, int B, bool RowScaled>
SAGEPTQ_AVX512_VNNI void rows_vnni_tile(const binary_rows& w, const int8_rows& x, const salient_rows* salient,
                                        index_t r0, float* out, index_t out_stride) {
  constexpr int block_words = (RowScaled ? int8_wide_block : int8_block) / 32, short_words = int8_block / 32;
  const index_t whole = w.row_words / block_words, blocks = (w.row_words + block_words - 1) / block_words;
  __m512 total[R][B];  // sum over blocks of (group scale for !RowScaled) * d * P, lane-wise
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) total[r][b] = _mm512_setzero_ps();
  // The next tile's rows, one 64-byte line per row every 16 words: R short interleaved streams (a 14336-column row
  // is 28 lines) are too short for the hardware prefetchers, and weights streamed from DRAM ran at 1/4 of the
  // streaming bandwidth without this.
  const std::uint32_t* next = w.signs + (r0 + R) * w.row_words;
  for (index_t block = 0; block < whole; ++block) {
    if ((block * block_words) % 16 == 0)
      for (int r = 0; r < R; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(next + r * w.row_words + block * block_words), _MM_HINT_T0);
    vnni_block<R, B, block_words, RowScaled>(w, x, r0, block, block * block_words, blocks, total);
  }
  if constexpr (block_words != short_words)
    if (whole < blocks) vnni_block<R, B, short_words, RowScaled>(w, x, r0, whole, whole * block_words, blocks, total);
  const index_t groups = w.groups();
  if constexpr (RowScaled) {
    if (salient != nullptr) {
      // lanes of 2 alpha sum d P, then the salient products: one reduction per row gives everything but the offset
      for (int r = 0; r < R; ++r) {
        const __m512 twice_alpha = _mm512_set1_ps(2.0f * scale_f16c(w, r0 + r, 0));
        for (int b = 0; b < B; ++b) total[r][b] = _mm512_mul_ps(total[r][b], twice_alpha);
      }
      salient_accumulate<R, B>(*salient, r0, total);
      for (int r = 0; r < R; ++r) {
        const float alpha = scale_f16c(w, r0 + r, 0);
        for (int b = 0; b < B; ++b) out[b * out_stride + r0 + r] = sum_lanes(total[r][b]) - alpha * x.offsets[b];
      }
      return;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      const float* offsets = x.offsets + b * groups;
      float offset = 0.0f;  // sum_g scale_g * sum_{block in g} d S
      for (index_t g = 0; g < groups; ++g) offset += (RowScaled ? 1.0f : scale_f16c(w, r0 + r, g)) * offsets[g];
      const float signed_sum = 2.0f * sum_lanes(total[r][b]) - offset;
      out[b * out_stride + r0 + r] = RowScaled ? scale_f16c(w, r0 + r, 0) * signed_sum : signed_sum;
    }
}

template <int B, bool RowScaled>
SAGEPTQ_AVX512_VNNI void rows_vnni_batch(const binary_rows& w, const int8_rows& x, const salient_rows* salient,
                                         index_t r0, index_t r1, float* out, index_t out_stride) {
  // 2 R B accumulators + B activation registers + R masks within 32 zmm; the rows of a tile share each q load.
  constexpr int R = B == 1 ? 8 : B == 2 ? 4 : B == 3 ? 4 : 2;
  index_t r = r0;
  for (; r + R <= r1; r += R) rows_vnni_tile<R, B, RowScaled>(w, x, salient, r, out, out_stride);
  for (; r < r1; ++r) rows_vnni_tile<1, B, RowScaled>(w, x, salient, r, out, out_stride);
}

inline constexpr index_t vnni_batch = 4;

/// Rows [r0, r1) for x.batch <= vnni_batch (callers slice larger batches). w.group_words is either w.row_words (one
/// scale per row; x in blocks of int8_wide_block) or int8_block / 32 (one scale and x block per int8_block
/// columns); w.x and w.group_sums are unused. salient: nullptr, or (RowScaled only) the salient tail of the same
/// rows and batch columns, added to out in the same tiles.
template <bool RowScaled>
void rows_vnni(const binary_rows& w, const int8_rows& x, index_t r0, index_t r1, float* out, index_t out_stride,
               const salient_rows* salient = nullptr) {
  SAGEPTQ_ASSERT(RowScaled ? w.group_words == w.row_words : w.group_words == int8_block / 32);
  SAGEPTQ_ASSERT(salient == nullptr || (RowScaled && salient->batch == x.batch));
  switch (x.batch) {
    case 1: return rows_vnni_batch<1, RowScaled>(w, x, salient, r0, r1, out, out_stride);
    case 2: return rows_vnni_batch<2, RowScaled>(w, x, salient, r0, r1, out, out_stride);
    case 3: return rows_vnni_batch<3, RowScaled>(w, x, salient, r0, r1, out, out_stride);
    default:
      SAGEPTQ_ASSERT(x.batch == 4);
      return rows_vnni_batch<4, RowScaled>(w, x, salient, r0, r1, out, out_stride);
  }
}

#undef SAGEPTQ_AVX512_VNNI

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
#endif
