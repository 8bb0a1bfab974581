#pragma once
/// @file binary_rows_avx2.hpp
/// AVX2 path of detail::binary_rows: a sign word is broadcast once per row, and each 8-lane slice becomes a lane
/// mask by an AND with the lane's bit and a compare (vpand, vpcmpeqd), which gates the x' lanes that are added.
/// fp32 throughout. Batches of at most 2 columns per pass keep accumulators in the 16 ymm registers.
/// Threading: none.

#include "isa.hpp"

#if SAGEPTQ_CPU_X86
#include <immintrin.h>

#include "binary_rows.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

#define SAGEPTQ_AVX2 __attribute__((target("avx2,fma")))

template <int R, int B>
SAGEPTQ_AVX2 void rows_avx2_tile(const binary_rows& a, index_t r0, float* out, index_t out_stride) {
  const index_t groups = a.groups();
  __m256i lane_bit[4];  // lane l of slice q tests bit 8 q + l of the word
  for (int q = 0; q < 4; ++q)
    lane_bit[q] = _mm256_sllv_epi32(_mm256_set1_epi32(1), _mm256_setr_epi32(8 * q, 8 * q + 1, 8 * q + 2, 8 * q + 3,
                                                                            8 * q + 4, 8 * q + 5, 8 * q + 6, 8 * q + 7));
  __m256 total[R][B];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) total[r][b] = _mm256_setzero_ps();
  const std::uint32_t* signs = a.signs + r0 * a.row_words;
  for (index_t g = 0; g < groups; ++g) {
    __m256 ones[R][B];
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) ones[r][b] = _mm256_setzero_ps();
    for (index_t w = g * a.group_words; w < (g + 1) * a.group_words; ++w) {
      __m256i word[R];
      for (int r = 0; r < R; ++r) word[r] = _mm256_set1_epi32(static_cast<int>(signs[r * a.row_words + w]));
      for (int q = 0; q < 4; ++q) {
        __m256 x[B];
        for (int b = 0; b < B; ++b) x[b] = _mm256_loadu_ps(a.x + b * a.x_stride + 32 * w + 8 * q);
        for (int r = 0; r < R; ++r) {
          const __m256 mask =
              _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(word[r], lane_bit[q]), lane_bit[q]));
          for (int b = 0; b < B; ++b) ones[r][b] = _mm256_add_ps(ones[r][b], _mm256_and_ps(mask, x[b]));
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_set1_ps(a.scale(r0 + r, g));
      for (int b = 0; b < B; ++b) {
        const __m256 all = _mm256_loadu_ps(a.group_sums + (b * groups + g) * 8);
        total[r][b] = _mm256_fmadd_ps(scale, _mm256_fmsub_ps(_mm256_set1_ps(2.0f), ones[r][b], all), total[r][b]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      const __m128 v = _mm_add_ps(_mm256_castps256_ps128(total[r][b]), _mm256_extractf128_ps(total[r][b], 1));
      const __m128 h = _mm_add_ps(v, _mm_movehl_ps(v, v));
      out[b * out_stride + r0 + r] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    }
}

template <int B>
SAGEPTQ_AVX2 void rows_avx2_batch(const binary_rows& a, index_t r0, index_t r1, float* out, index_t out_stride) {
  constexpr int R = B == 1 ? 4 : 2;
  index_t r = r0;
  for (; r + R <= r1; r += R) rows_avx2_tile<R, B>(a, r, out, out_stride);
  for (; r < r1; ++r) rows_avx2_tile<1, B>(a, r, out, out_stride);
}

/// Rows [r0, r1) for a.batch <= 2; a.group_sums must hold 8 lanes.
inline void rows_avx2(const binary_rows& a, index_t r0, index_t r1, float* out, index_t out_stride) {
  SAGEPTQ_ASSERT(a.batch == 1 || a.batch == 2);
  if (a.batch == 1) return rows_avx2_batch<1>(a, r0, r1, out, out_stride);
  rows_avx2_batch<2>(a, r0, r1, out, out_stride);
}

#undef SAGEPTQ_AVX2

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
#endif
