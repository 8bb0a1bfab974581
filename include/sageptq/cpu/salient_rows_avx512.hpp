#pragma once
/// @file salient_rows_avx512.hpp
/// AVX-512 path of detail::salient_rows: 16 codes of b bits are 2b whole bytes (16 codes start on a 16-bit
/// boundary); one masked load takes them (never past the row), vpermb gives lane i the 4 bytes from bit i b on,
/// a variable shift and a mask leave code i, and the 16 levels meet 16 activations of each batch column in one FMA.
/// fp32 with lane sums: differs from the scalar path by float rounding only. Threading: none.

#include "isa.hpp"

#if SAGEPTQ_CPU_X86
#include <immintrin.h>

#include <algorithm>

#include "salient_rows.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

#define SAGEPTQ_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,f16c")))

/// True when this CPU has what add_salient_avx512 needs beyond isa::avx512.
inline bool salient_avx512_supported() noexcept {
  return supported(isa::avx512) && __builtin_cpu_supports("avx512vbmi");
}

/// Rows [r0, r0 + R): R rows interleaved, so R independent FMA chains hide the FMA latency.
template <int R>
SAGEPTQ_AVX512_VBMI void add_salient_avx512_tile(const salient_rows& s, const __m512i& gather_index,
                                                 const __m512i& shifts, index_t r0, float* out, index_t out_stride) {
  const __m512i code_mask = _mm512_set1_epi32((1 << s.bits) - 1);
  constexpr auto all_lanes = static_cast<__mmask16>(0xFFFF);
  const index_t row_bytes = 4 * s.row_words, steps = s.padded_count() / 16;
  __m512 dot[R][8], zero[R];
  for (int r = 0; r < R; ++r) {
    zero[r] = _mm512_set1_ps(s.zero(r0 + r));
    for (index_t b = 0; b < s.batch; ++b) dot[r][b] = _mm512_setzero_ps();
  }
  for (index_t step = 0; step < steps; ++step) {
    const index_t at = step * 2 * s.bits;  // byte offset of code 16 step
    const auto load = static_cast<__mmask16>((1u << std::min<index_t>(16, row_bytes - at)) - 1u);
    for (int r = 0; r < R; ++r) {
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(s.codes + (r0 + r) * s.row_words);
      const __m512i window = _mm512_zextsi128_si512(_mm_maskz_loadu_epi8(load, bytes + at));
      // The all-lanes zero-masked forms: GCC 12's unmasked vpermb, vpsrlvd and vcvtdq2ps trip -Wuninitialized.
      const __m512i bytes4 = _mm512_maskz_permutexvar_epi8(~__mmask64{0}, gather_index, window);
      const __m512i codes = _mm512_and_si512(_mm512_maskz_srlv_epi32(all_lanes, bytes4, shifts), code_mask);
      const __m512 level = _mm512_sub_ps(_mm512_maskz_cvtepi32_ps(all_lanes, codes), zero[r]);
      for (index_t b = 0; b < s.batch; ++b)
        dot[r][b] = _mm512_fmadd_ps(level, _mm512_loadu_ps(s.x + b * s.padded_count() + 16 * step), dot[r][b]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float scale = _cvtsh_ss(s.scales[r0 + r].bits);
    for (index_t b = 0; b < s.batch; ++b) {
      alignas(64) float lane[16];
      _mm512_store_ps(lane, dot[r][b]);
      for (int width = 8; width > 0; width /= 2)
        for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
      out[b * out_stride + r0 + r] += scale * lane[0];
    }
  }
}

SAGEPTQ_AVX512_VBMI inline void add_salient_avx512(const salient_rows& s, index_t r0, index_t r1, float* out,
                                                    index_t out_stride) {
  SAGEPTQ_ASSERT(s.batch <= 8);
  alignas(64) std::uint8_t gather[64];  // lane i, byte t <- byte (i b) / 8 + t of the 16 codes' bytes
  alignas(64) std::uint32_t shift[16];
  for (int i = 0; i < 16; ++i) {
    for (int t = 0; t < 4; ++t) gather[4 * i + t] = static_cast<std::uint8_t>(std::min(15, i * s.bits / 8 + t));
    shift[i] = static_cast<std::uint32_t>(i * s.bits % 8);
  }
  const __m512i gather_index = _mm512_load_si512(gather), shifts = _mm512_load_si512(shift);
  constexpr int R = 4;
  index_t r = r0;
  for (; r + R <= r1; r += R) add_salient_avx512_tile<R>(s, gather_index, shifts, r, out, out_stride);
  for (; r < r1; ++r) add_salient_avx512_tile<1>(s, gather_index, shifts, r, out, out_stride);
}

#undef SAGEPTQ_AVX512_VBMI

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
#endif
