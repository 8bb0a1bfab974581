#pragma once
/// @file salient_rows_avx512.hpp
/// AVX-512 path of detail::salient_rows (F, BW, VL, DQ: every CPU with isa::avx512). Codes become dword lanes whose
/// low `bits` bits hold a code:
///  * bits dividing 8 (1, 2, 4, 8): a 16-byte chunk (one load, masked for the row's last chunk: never past the row)
///    zero-extends to 16 lanes, lane i holding byte i; a shift by p bits moves code (8 / bits) i + p down, so one
///    load gives 8 / bits code vectors without a shuffle; x is stored in that order (salient_rows::x_position).
///  * 3, 5, 6, 7 bits: 16 codes are 2b whole bytes, broadcast to the four 128-bit lanes; vpshufb gives lane i the
///    4 bytes from bit i b on and a variable shift moves code i down.
/// A code becomes scale_r (code - zero_r) by one vpermps from a 16-entry table per row for bits <= 4 (vpermps reads
/// the index's low 4 bits, the table masks off the rest), else by mask, convert, subtract and multiply; one FMA per
/// batch column adds it times x. fp32 with lane sums (and one rounding of scale * level per term): differs from the
/// scalar path by float rounding only. The VNNI path runs salient_accumulate() inside its row tiles (one reduction
/// per row for both parts); add_salient_avx512() is the separate pass the fp32 AVX-512 path uses. Threading: none.

#include "isa.hpp"

#if SAGEPTQ_CPU_X86
#include <immintrin.h>

#include <algorithm>

#include "binary_rows_avx512.hpp"  // sum_lanes
#include "salient_rows.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

#define SAGEPTQ_AVX512_SALIENT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))

/// True when this CPU runs the AVX-512 salient paths.
inline bool salient_avx512_supported() noexcept { return supported(isa::avx512); }

// All-lanes zero-masked intrinsics throughout: GCC 12's unmasked forms trip -Wuninitialized.
inline constexpr auto salient_all_lanes = static_cast<__mmask16>(0xFFFF);

/// acc[b] += level(code in the low bits of `lanes`) * the 16 activations at x + b * stride; Table: bits <= 4, the level
/// is table[code & 15]; else scale (code & code_mask - zero).
template <int B, bool Table>
SAGEPTQ_AVX512_SALIENT inline void salient_add(__m512i lanes, __m512 table, __m512i code_mask, float scale, float zero,
                                               const float* x, index_t stride, __m512 (&acc)[B]) {
  __m512 level;
  if constexpr (Table) {
    level = _mm512_maskz_permutexvar_ps(salient_all_lanes, lanes, table);
  } else {
    const __m512 code = _mm512_maskz_cvtepi32_ps(salient_all_lanes, _mm512_and_si512(lanes, code_mask));
    level = _mm512_mul_ps(_mm512_sub_ps(code, _mm512_set1_ps(zero)), _mm512_set1_ps(scale));
  }
  for (int b = 0; b < B; ++b) acc[b] = _mm512_fmadd_ps(level, _mm512_loadu_ps(x + b * stride), acc[b]);
}

/// salient_accumulate() for PerByte = 8 / bits codes per byte (0: 3, 5, 6 or 7 bits) and Table = (bits <= 4).
/// Compile-time PerByte and unrolled row loops keep acc and the tables in registers.
template <int R, int B, int PerByte, bool Table>
SAGEPTQ_AVX512_SALIENT void salient_accumulate_as(const salient_rows& s, index_t r0, __m512 (&acc_out)[R][B]) {
  // Locals, not acc_out and s: stores through acc_out may alias s, which made GCC store and reload every FMA.
  __m512 acc[R][B];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) acc[r][b] = acc_out[r][b];
  const int bits = s.bits;
  const float* const x = s.x;
  const index_t row_bytes = 4 * s.row_words, stride = s.padded_count();
  const __m512i code_mask = _mm512_set1_epi32((1 << bits) - 1);
  const std::uint8_t* codes[R];
  float scale[R], zero[R];
  __m512 table[R];  // Table: table[r][i] = scale (i & code_mask - zero)
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    codes[r] = reinterpret_cast<const std::uint8_t*>(s.codes + (r0 + r) * s.row_words);
    scale[r] = _cvtsh_ss(s.scales[r0 + r].bits);
    zero[r] = s.zero(r0 + r);
    table[r] = _mm512_setzero_ps();
    if constexpr (Table) {
      const __m512i index =
          _mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), code_mask);
      const __m512 level = _mm512_sub_ps(_mm512_maskz_cvtepi32_ps(salient_all_lanes, index), _mm512_set1_ps(zero[r]));
      table[r] = _mm512_mul_ps(level, _mm512_set1_ps(scale[r]));
    }
  }
  if constexpr (PerByte > 0) {
    constexpr int chunk_bits = 8 / PerByte;
    for (index_t at = 0; at * PerByte < stride; at += 16) {  // at: byte offset; x offset at * PerByte
      const bool whole = at + 16 <= row_bytes;
      const auto load = static_cast<__mmask16>((1u << std::min<index_t>(16, row_bytes - at)) - 1u);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m128i chunk = whole ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[r] + at))
                                    : _mm_maskz_loadu_epi8(load, codes[r] + at);
        const __m512i bytes = _mm512_maskz_cvtepu8_epi32(salient_all_lanes, chunk);
#pragma GCC unroll 8
        for (int p = 0; p < PerByte; ++p) {  // code PerByte i + p of the chunk: lane i, shifted by p bits
          const __m512i lanes = p == 0 ? bytes : _mm512_maskz_srli_epi32(salient_all_lanes, bytes, p * chunk_bits);
          salient_add<B, Table>(lanes, table[r], code_mask, scale[r], zero[r], x + at * PerByte + 16 * p, stride,
                                acc[r]);
        }
      }
    }
  } else {
    alignas(64) std::uint8_t gather[64];  // lane i, byte t <- byte (i b) / 8 + t of the 16 codes' bytes
    alignas(64) std::uint32_t shift[16];
    for (int i = 0; i < 16; ++i) {
      for (int t = 0; t < 4; ++t) gather[4 * i + t] = static_cast<std::uint8_t>(std::min(15, i * bits / 8 + t));
      shift[i] = static_cast<std::uint32_t>(i * bits % 8);
    }
    const __m512i gather_index = _mm512_load_si512(gather), shifts = _mm512_load_si512(shift);
    for (index_t step = 0; step < stride / 16; ++step) {
      const index_t at = step * 2 * bits;  // byte offset of code 16 step
      const auto load = static_cast<__mmask16>((1u << std::min<index_t>(16, row_bytes - at)) - 1u);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i window =
            _mm512_maskz_broadcast_i32x4(salient_all_lanes, _mm_maskz_loadu_epi8(load, codes[r] + at));
        const __m512i bytes4 = _mm512_maskz_shuffle_epi8(~__mmask64{0}, window, gather_index);
        salient_add<B, Table>(_mm512_maskz_srlv_epi32(salient_all_lanes, bytes4, shifts), table[r], code_mask,
                              scale[r], zero[r], x + 16 * step, stride, acc[r]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) acc_out[r][b] = acc[r][b];
}

/// acc[r][b] += scale_r sum_k (code_{r0 + r, k} - zero_{r0 + r}) x[b][k], in lanes, for R rows and B batch columns.
template <int R, int B>
SAGEPTQ_AVX512_SALIENT void salient_accumulate(const salient_rows& s, index_t r0, __m512 (&acc)[R][B]) {
  switch (s.bits) {
    case 1: return salient_accumulate_as<R, B, 8, true>(s, r0, acc);
    case 2: return salient_accumulate_as<R, B, 4, true>(s, r0, acc);
    case 4: return salient_accumulate_as<R, B, 2, true>(s, r0, acc);
    case 8: return salient_accumulate_as<R, B, 1, false>(s, r0, acc);
    case 3: return salient_accumulate_as<R, B, 0, true>(s, r0, acc);
    default: return salient_accumulate_as<R, B, 0, false>(s, r0, acc);
  }
}

/// Rows [r0, r0 + R), batch columns [0, B) of s: out[b * out_stride + r] += the row's salient sum.
template <int R, int B>
SAGEPTQ_AVX512_SALIENT void add_salient_avx512_tile(const salient_rows& s, index_t r0, float* out, index_t out_stride) {
  __m512 acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) acc[r][b] = _mm512_setzero_ps();
  salient_accumulate<R, B>(s, r0, acc);
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) out[b * out_stride + r0 + r] += sum_lanes(acc[r][b]);
}

template <int B>
SAGEPTQ_AVX512_SALIENT void add_salient_avx512_batch(const salient_rows& s, index_t r0, index_t r1, float* out,
                                                     index_t out_stride) {
  constexpr int R = 4;  // R independent FMA chains per batch column hide the FMA latency
  index_t r = r0;
  for (; r + R <= r1; r += R) add_salient_avx512_tile<R, B>(s, r, out, out_stride);
  for (; r < r1; ++r) add_salient_avx512_tile<1, B>(s, r, out, out_stride);
}

/// Rows [r0, r1) of every batch column of s, in slices of up to 4 batch columns.
inline void add_salient_avx512(const salient_rows& s, index_t r0, index_t r1, float* out, index_t out_stride) {
  for (index_t b0 = 0; b0 < s.batch; b0 += 4) {
    salient_rows part = s;
    part.batch = std::min<index_t>(4, s.batch - b0);
    part.x = s.x + b0 * s.padded_count();
    float* o = out + b0 * out_stride;
    switch (part.batch) {
      case 1: add_salient_avx512_batch<1>(part, r0, r1, o, out_stride); break;
      case 2: add_salient_avx512_batch<2>(part, r0, r1, o, out_stride); break;
      case 3: add_salient_avx512_batch<3>(part, r0, r1, o, out_stride); break;
      default: add_salient_avx512_batch<4>(part, r0, r1, o, out_stride); break;
    }
  }
}

#undef SAGEPTQ_AVX512_SALIENT

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
#endif
