#pragma once
/// @file binary_rows_vnni.hpp
/// AVX-512 VNNI path of detail::binary_rows on int8 activations (int8_activations.hpp): 64 sign bits become a
/// byte mask (kmovq), the mask selects bytes of 1 (vmovdqu8{z}), and vpdpbusd adds the int8 activations under the
/// 1 bits into 16 int32 lanes: P = sum_{bit=1} q_j, exact. Per 128-column block the float sum gains d * P; then
///     sum_j s_j x_j = 2 sum_block d P - sum_block d S,   S = sum_j q_j (the block offsets),
/// so there is no per-weight sign flip and the byte mask is shared by the batch columns of a pass (up to
/// vnni_batch = 4): one vpdpbusd per 64 weights and batch column, plus a kmovq and a vmovdqu8 per 64 weights and row. Two scale layouts: one scale per row
/// (sage: alpha applied once per row) or one per 128-column block (q1_0: d_g folded per block).
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
SAGEPTQ_AVX512_VNNI inline int8_block_scale quantize_block_avx512(const float* x, std::int8_t* q) {
  // all-lanes zero-masked forms throughout: GCC 12's unmasked vmaxps, vcvtps2dq and vpmovsdb trip -Wuninitialized
  constexpr int vectors = int8_block / 16;
  constexpr auto all_lanes = static_cast<__mmask16>(0xFFFF);
  __m512 v[vectors], max = _mm512_setzero_ps();
  for (int i = 0; i < vectors; ++i) {
    v[i] = _mm512_loadu_ps(x + 16 * i);
    max = _mm512_maskz_max_ps(all_lanes, max, _mm512_abs_ps(v[i]));
  }
  alignas(64) float lane[16];
  _mm512_store_ps(lane, max);
  float block_max = 0.0f;
  for (float m : lane) block_max = std::max(block_max, m);
  if (!(block_max >= int8_flush)) {
    std::memset(q, 0, int8_block);
    return {0.0f, 0.0f};
  }
  const float d = block_max / 127.0f;
  const __m512 inverse = _mm512_set1_ps(127.0f / block_max);
  __m512i sum = _mm512_setzero_si512();
  for (int i = 0; i < vectors; ++i) {
    const __m512i qi = _mm512_maskz_cvtps_epi32(all_lanes, _mm512_mul_ps(v[i], inverse));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * i), _mm512_maskz_cvtsepi32_epi8(all_lanes, qi));
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

/// Rows [r0, r0 + R) for B batch columns; RowScaled: one group per row (else one group per 128-column block).
template <int R, int B, bool RowScaled>
SAGEPTQ_AVX512_VNNI void rows_vnni_tile(const binary_rows& w, const int8_rows& x, index_t r0, float* out,
                                        index_t out_stride) {
  constexpr int block_words = int8_block / 32;
  const index_t blocks = w.row_words / block_words;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512 total[R][B];  // sum over blocks of (group scale for !RowScaled) * d * P, lane-wise
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) total[r][b] = _mm512_setzero_ps();
  const std::uint32_t* signs = w.signs + r0 * w.row_words;
  for (index_t block = 0; block < blocks; ++block) {
    __m512i ones_sum[R][B];  // P: int8 activations under the 1 bits, 16 int32 lanes
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) ones_sum[r][b] = _mm512_setzero_si512();
    for (int pair = 0; pair < block_words / 2; ++pair) {  // 64 columns per step
      const index_t word = block * block_words + 2 * pair;
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
  const index_t groups = w.groups();
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
SAGEPTQ_AVX512_VNNI void rows_vnni_batch(const binary_rows& w, const int8_rows& x, index_t r0, index_t r1, float* out,
                                         index_t out_stride) {
  // 2 R B accumulators + B activation registers + R masks within 32 zmm; the rows of a tile share each q load.
  constexpr int R = B == 1 ? 8 : B == 2 ? 4 : B == 3 ? 4 : 2;
  index_t r = r0;
  for (; r + R <= r1; r += R) rows_vnni_tile<R, B, RowScaled>(w, x, r, out, out_stride);
  for (; r < r1; ++r) rows_vnni_tile<1, B, RowScaled>(w, x, r, out, out_stride);
}

inline constexpr index_t vnni_batch = 4;

/// Rows [r0, r1) for x.batch <= vnni_batch (callers slice larger batches). w.group_words is either w.row_words (one
/// scale per row) or int8_block / 32 (one scale per block); w.x and w.group_sums are unused.
template <bool RowScaled>
void rows_vnni(const binary_rows& w, const int8_rows& x, index_t r0, index_t r1, float* out, index_t out_stride) {
  SAGEPTQ_ASSERT(RowScaled ? w.group_words == w.row_words : w.group_words == int8_block / 32);
  switch (x.batch) {
    case 1: return rows_vnni_batch<1, RowScaled>(w, x, r0, r1, out, out_stride);
    case 2: return rows_vnni_batch<2, RowScaled>(w, x, r0, r1, out, out_stride);
    case 3: return rows_vnni_batch<3, RowScaled>(w, x, r0, r1, out, out_stride);
    default: SAGEPTQ_ASSERT(x.batch == 4); return rows_vnni_batch<4, RowScaled>(w, x, r0, r1, out, out_stride);
  }
}

#undef SAGEPTQ_AVX512_VNNI

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
#endif
