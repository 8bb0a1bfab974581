#pragma once
/// @file binary_rows_avx512.hpp
/// AVX-512 path of detail::binary_rows: 16 sign bits go straight into a mask register and select which x' lanes a
/// masked add accumulates (one vaddps per 16 weights per batch column); R rows share each x' load. fp32 throughout,
/// so it matches the scalar path to float rounding. Compiled through target attributes: no -march flag needed.
/// Threading: none.

#include "isa.hpp"

#if SAGEPTQ_CPU_X86
#include <immintrin.h>

#include "binary_rows.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

#define SAGEPTQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/// Sum of the 16 lanes, once per row (GCC 12's reduction and shuffle intrinsics trip -Wuninitialized in their own
/// header, so the lanes go through memory).
SAGEPTQ_AVX512 inline float sum_lanes(__m512 v) {
  alignas(64) float lane[16];
  _mm512_store_ps(lane, v);
  for (int width = 8; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  return lane[0];
}

/// Rows [r0, r0 + R) for B batch columns.
template <int R, int B>
SAGEPTQ_AVX512 void rows_avx512_tile(const binary_rows& a, index_t r0, float* out, index_t out_stride) {
  const index_t groups = a.groups();
  __m512 total[R][B];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) total[r][b] = _mm512_setzero_ps();
  const std::uint32_t* signs = a.signs + r0 * a.row_words;
  for (index_t g = 0; g < groups; ++g) {
    __m512 ones[R][B];  // sum of x' over the 1 bits, lane-wise
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) ones[r][b] = _mm512_setzero_ps();
    for (index_t w = g * a.group_words; w < (g + 1) * a.group_words; ++w)
      for (int half = 0; half < 2; ++half) {
        __m512 x[B];
        for (int b = 0; b < B; ++b) x[b] = _mm512_loadu_ps(a.x + b * a.x_stride + 32 * w + 16 * half);
        for (int r = 0; r < R; ++r) {
          const auto mask = static_cast<__mmask16>(signs[r * a.row_words + w] >> (16 * half));
          for (int b = 0; b < B; ++b) ones[r][b] = _mm512_mask_add_ps(ones[r][b], mask, ones[r][b], x[b]);
        }
      }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = _mm512_set1_ps(a.scale(r0 + r, g));
      for (int b = 0; b < B; ++b) {
        const __m512 all = _mm512_loadu_ps(a.group_sums + (b * groups + g) * 16);
        const __m512 signed_sum = _mm512_fmsub_ps(_mm512_set1_ps(2.0f), ones[r][b], all);  // sum s_j x'_j per lane
        total[r][b] = _mm512_fmadd_ps(scale, signed_sum, total[r][b]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) out[b * out_stride + r0 + r] = sum_lanes(total[r][b]);
}

template <int B>
SAGEPTQ_AVX512 void rows_avx512_batch(const binary_rows& a, index_t r0, index_t r1, float* out, index_t out_stride) {
  constexpr int R = 4;  // 2 R B accumulators + B x' registers stay within 32 zmm; 4 rows share each x' load
  index_t r = r0;
  for (; r + R <= r1; r += R) rows_avx512_tile<R, B>(a, r, out, out_stride);
  for (; r < r1; ++r) rows_avx512_tile<1, B>(a, r, out, out_stride);
}

/// Rows [r0, r1) for a.batch <= 2 (callers slice larger batches); a.group_sums must hold 16 lanes.
inline void rows_avx512(const binary_rows& a, index_t r0, index_t r1, float* out, index_t out_stride) {
  SAGEPTQ_ASSERT(a.batch == 1 || a.batch == 2);
  if (a.batch == 1) return rows_avx512_batch<1>(a, r0, r1, out, out_stride);
  rows_avx512_batch<2>(a, r0, r1, out, out_stride);
}

#undef SAGEPTQ_AVX512

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
#endif
