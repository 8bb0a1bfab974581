#pragma once
/// @file fold_x.hpp
/// The per-call input of sage's binary kernels: x' = beta-folded x in stored order,
///     x'[b][j] = beta_g(j) * x[b][source(j)],   j in [0, K_b),   zero for j in [K_b, padded),
/// with source(j) read from the bit-packed column permutation. fold_scalar() is the reference; fold_avx512() decodes
/// 16 permutation codes per step (vpermw + vpsrlvd: codes of up to 17 bits, 16-bit aligned every 16 codes),
/// gathers the 16 activations and multiplies by beta: the same single IEEE product per element, so both give the
/// same bits. Threading: none.

#include <algorithm>
#include <cstdint>

#include "../config.hpp"
#include "../core/tensor_view.hpp"
#include "../format/sage.hpp"
#include "isa.hpp"

#if SAGEPTQ_CPU_X86
#include <immintrin.h>
#endif

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu::detail {

/// Writes x' for `batch` rows of x into out ([batch][padded], padded >= K_b rounded up to 16).
inline void fold_scalar(const format::sage_view<host_space>& w, const matrix_view<const float>& x, float* out,
                        index_t padded) {
  const auto& s = w.shape;
  const int perm_bits = s.perm_bits();
  const index_t batch = x.rows(), kb = s.binarized_cols();
  for (index_t b = 0; b < batch; ++b) std::fill(out + b * padded + kb, out + (b + 1) * padded, 0.0f);
  for (index_t g = 0; g < s.groups; ++g) {
    const float beta = w.group_scales[g].to_float();
    for (index_t j = w.group_offsets[g]; j < static_cast<index_t>(w.group_offsets[g + 1]); ++j) {
      const index_t c = s.identity_perm ? j
                        : perm_bits == 0 ? 0
                                         : static_cast<index_t>(format::read_code(w.col_perm, j, perm_bits));
      for (index_t b = 0; b < batch; ++b) out[b * padded + j] = beta * x(b, c);
    }
  }
}

#if SAGEPTQ_CPU_X86
/// True when fold_avx512 handles this view and x: permutation codes of at most 17 bits, gather offsets in int32.
inline bool fold_avx512_supported(const format::sage_view<host_space>& w, const matrix_view<const float>& x) {
  return supported(isa::avx512) && w.shape.perm_bits() <= 17 &&
         (w.shape.cols - 1) * x.stride[1] <= index_t{0x7FFFFFFF} && x.stride[1] >= 0;
}

/// fold_scalar() on AVX-512, bit-identical; callers check fold_avx512_supported().
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c"))) inline void fold_avx512(
    const format::sage_view<host_space>& w, const matrix_view<const float>& x, float* out, index_t padded) {
  const auto& s = w.shape;
  const int bits = s.perm_bits();
  const index_t batch = x.rows(), kb = s.binarized_cols(), perm_halves = 2 * s.perm_words();
  constexpr auto all_lanes = static_cast<__mmask16>(0xFFFF);  // zero-masked forms: GCC 12's -Wuninitialized
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // Code i of 16 starts at bit b i of a 16-bit aligned run: dword lane i takes 16-bit words (b i) / 16 and the next,
  // then shifts right by (b i) % 16 (at most 15 + 17 bits: within the dword).
  alignas(64) std::uint16_t word_index[32];
  alignas(64) std::uint32_t shift[16];
  for (int i = 0; i < 16; ++i) {
    word_index[2 * i] = static_cast<std::uint16_t>(bits * i / 16);
    word_index[2 * i + 1] = static_cast<std::uint16_t>(bits * i / 16 + 1);
    shift[i] = static_cast<std::uint32_t>(bits * i % 16);
  }
  const __m512i words = _mm512_load_si512(word_index), shifts = _mm512_load_si512(shift);
  const __m512i code_mask = _mm512_set1_epi32(static_cast<int>((std::uint64_t{1} << bits) - 1));
  const __m512i stride = _mm512_set1_epi32(static_cast<int>(x.stride[1]));
  const auto* halves = reinterpret_cast<const std::uint16_t*>(w.col_perm);
  index_t g = 0;
  for (index_t j = 0; j < padded; j += 16) {
    if (j >= kb) {
      for (index_t b = 0; b < batch; ++b) _mm512_storeu_ps(out + b * padded + j, _mm512_setzero_ps());
      continue;
    }
    const auto valid = static_cast<__mmask16>((1u << std::min<index_t>(16, kb - j)) - 1u);
    __m512i source = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j)), iota);
    if (!s.identity_perm) {
      if (bits == 0) {
        source = _mm512_setzero_si512();
      } else {
        const index_t at = j / 16 * bits;  // first 16-bit word of code j
        const index_t halves_left = std::min<index_t>(bits + 1, perm_halves - at);  // code 15 reads one more
        const auto load = static_cast<__mmask32>((std::uint64_t{1} << halves_left) - 1);
        const __m512i run = _mm512_maskz_loadu_epi16(load, halves + at);
        const __m512i pairs = _mm512_maskz_permutexvar_epi16(~__mmask32{0}, words, run);
        source = _mm512_and_si512(_mm512_maskz_srlv_epi32(all_lanes, pairs, shifts), code_mask);
      }
    }
    source = _mm512_mullo_epi32(source, stride);
    while (static_cast<index_t>(w.group_offsets[g + 1]) <= j) ++g;
    __m512 beta;
    if (static_cast<index_t>(w.group_offsets[g + 1]) >= std::min(kb, j + 16)) {
      beta = _mm512_set1_ps(w.group_scales[g].to_float());
    } else {  // a group boundary inside these 16 columns
      alignas(64) float lane[16] = {};
      for (index_t i = 0, h = g; i < std::min<index_t>(16, kb - j); ++i) {
        while (static_cast<index_t>(w.group_offsets[h + 1]) <= j + i) ++h;
        lane[i] = w.group_scales[h].to_float();
      }
      beta = _mm512_load_ps(lane);
    }
    for (index_t b = 0; b < batch; ++b) {
      const float* row = x.data + b * x.stride[0];
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, source, row, 4);
      _mm512_storeu_ps(out + b * padded + j, _mm512_maskz_mul_ps(all_lanes, v, beta));
    }
  }
}
#endif

/// fold_avx512() where `simd` asks for it and it applies, else fold_scalar(): the same bits either way.
inline void fold(const format::sage_view<host_space>& w, const matrix_view<const float>& x, float* out, index_t padded,
                 bool simd) {
#if SAGEPTQ_CPU_X86
  if (simd && fold_avx512_supported(w, x)) return fold_avx512(w, x, out, padded);
#else
  (void)simd;
#endif
  fold_scalar(w, x, out, padded);
}

}  // namespace cpu::detail
SAGEPTQ_NAMESPACE_END
