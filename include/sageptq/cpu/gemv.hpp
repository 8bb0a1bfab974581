#pragma once
/// @file gemv.hpp
/// y = W x on the CPU for packed weights: sage (factorized scales, one sign plane, column groups, salient tail),
/// q1_0 and rtn, for 1 to 8 activation columns at once.
///
/// Inputs: the packed view, x (batch x cols, any strides) and y (batch x rows, unit column stride), batch in [1, 8].
/// Output: y, every element written. The binary part runs on the path active_isa() picks (scalar, AVX2, AVX-512 or
/// AVX-512 VNNI, forced by SAGEPTQ_CPU_ISA) or on the one the caller names; rtn has only the scalar path.
/// Numerics: scalar, avx2 and avx512 accumulate fp32 products with x. sage folds beta into x once
/// (x'_j = beta_g(j) * x_perm(j)) and alpha into the row's sum, so its rounding differs from decode(W) * x by a few
/// ulps per term; the SIMD paths sum in lanes (and as 2 * sum_{bit=1} x' - sum x'), so these paths differ by float
/// rounding only: |y - y_exact| <= (K + 8) * 2^-24 * sum_j |w_j x_j|.
/// avx512_vnni (the default where the CPU has it) multiplies the binarized weights with x' rounded to int8 per
/// block of 256 columns (sage; the last one 128 where the sign row is an odd number of 128s) or 128 columns (q1_0)
/// (int8_activations.hpp), exactly in int32 within a block: it meets the bound above against
/// decode(W) * x^, x^ the dequantized activations (the salient tail and rtn keep fp32 x), and differs from
/// decode(W) * x by at most sum_j |w_j| d_block(j) (1/2 + 2^-12) more (d = block max |x'| / 127).
/// Threading: rows are split into blocks of 64 across the caller's executor; each output is computed by one task
/// in a fixed order, so y is bit-identical for every thread count.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "../format/q1_0.hpp"
#include "../format/rtn.hpp"
#include "../format/sage.hpp"
#include "binary_rows.hpp"
#include "binary_rows_avx2.hpp"
#include "binary_rows_avx512.hpp"
#include "binary_rows_vnni.hpp"
#include "fold_x.hpp"
#include "int8_activations.hpp"
#include "salient_rows.hpp"
#include "salient_rows_avx512.hpp"
#include "isa.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu {

inline constexpr index_t max_batch = 8;

namespace detail {

inline outcome check_batch(index_t batch) {
  if (batch < 1 || batch > max_batch)
    return fail(status::invalid_argument, "cpu::gemv: batch " + std::to_string(batch) + " is outside [1, 8]");
  return {};
}

/// Shapes of x (batch x cols) and y (batch x rows), y's layout and x's values.
inline outcome check_io(index_t rows, index_t cols, const matrix_view<const float>& x, const matrix_view<float>& y) {
  if (x.rows() != y.rows() || x.cols() != cols || y.cols() != rows)
    return fail(status::invalid_shape, "cpu::gemv: x is " + std::to_string(x.rows()) + " x " +
                                           std::to_string(x.cols()) + " and y " + std::to_string(y.rows()) + " x " +
                                           std::to_string(y.cols()) + ", expected batch x " + std::to_string(cols) +
                                           " and batch x " + std::to_string(rows));
  if (y.stride[1] != 1) return fail(status::invalid_layout, "cpu::gemv: y needs a unit column stride");
  if (x.stride[1] == 1 && x.rows() > 0 && x.cols() > 0) {  // branch-free scan (vectorized) for the common case
    std::uint32_t non_finite = 0;
    for (index_t b = 0; b < x.rows(); ++b)
      for (index_t c = 0; c < x.cols(); ++c) {
        std::uint32_t bits;
        std::memcpy(&bits, x.data + b * x.stride[0] + c, sizeof bits);
        non_finite |= static_cast<std::uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
      }
    if (non_finite == 0) return {};
  }
  return check_finite_matrix(x, "cpu::gemv: x");  // its message names the first bad element
}

#if SAGEPTQ_CPU_X86
inline constexpr quantize_block_fn vnni_quantizer = quantize_block_avx512;
inline bool salient_simd_supported() noexcept { return salient_avx512_supported(); }
inline void add_salient_simd(const salient_rows& s, index_t r0, index_t r1, float* out, index_t out_stride) {
  add_salient_avx512(s, r0, r1, out, out_stride);
}
#else
inline constexpr quantize_block_fn vnni_quantizer = quantize_block;
inline bool salient_simd_supported() noexcept { return false; }
inline void add_salient_simd(const salient_rows& s, index_t r0, index_t r1, float* out, index_t out_stride) {
  add_salient_scalar(s, r0, r1, out, out_stride);
}
#endif

inline constexpr index_t block_rows = 64;
inline constexpr index_t simd_batch = 2;

/// The int8 side of the VNNI path for `a`: x' quantized per block, and the block offsets summed per weight group.
struct vnni_input {
  int8_activations x;
  std::vector<float> group_offsets;  // [batch][groups]

  // One scale per row (sage): blocks of int8_wide_block; q1_0: its group of int8_block columns (rows_vnni).
  explicit vnni_input(const binary_rows& a)
      : x(quantize_int8(a.x, a.batch, 32 * a.row_words, a.x_stride, vnni_quantizer,
                        a.groups() == 1 ? int8_wide_block : int8_block)) {
    const index_t groups = a.groups(), blocks_per_group = x.blocks() / groups;
    group_offsets.assign(static_cast<std::size_t>(a.batch * groups), 0.0f);
    for (index_t b = 0; b < a.batch; ++b)
      for (index_t block = 0; block < x.blocks(); ++block)
        group_offsets[static_cast<std::size_t>(b * groups + block / blocks_per_group)] +=
            x.offsets[static_cast<std::size_t>(b * x.blocks() + block)];
  }
};

/// Runs the binary rows of `a` on `path` in blocks of rows, then tail(r0, r1) on each block (salient columns);
/// `fused` (avx512_vnni and one scale per row only; else nullptr): a salient tail the VNNI tiles add themselves.
template <class E, class Tail>
void run_binary(binary_rows a, isa path, index_t rows, matrix_view<float> y, const E& exec, const salient_rows* fused,
                Tail&& tail) {
  SAGEPTQ_ASSERT(fused == nullptr || (path == isa::avx512_vnni && a.groups() == 1));
  const int lanes = path == isa::avx512 ? 16 : 8;
  // Batch columns per pass: 2 keeps each pass's x' (2 x 4 cols bytes) in L2 with 4 rows sharing every x' load; 8 at
  // once re-read 8 x' rows from L2 per weight row and ran 1.4x slower at batch 8 (bench/results/gemv.md).
  const index_t slice = path == isa::scalar ? max_batch : path == isa::avx512_vnni ? vnni_batch : simd_batch;
  std::vector<float> sums;
  if (path == isa::avx2 || path == isa::avx512) sums = group_sums(a, lanes);
  std::optional<vnni_input> vnni;
  if (path == isa::avx512_vnni) vnni.emplace(a);
  exec.parallel_for((rows + block_rows - 1) / block_rows, [&](index_t block) {
    const index_t r0 = block * block_rows, r1 = std::min(rows, r0 + block_rows);
    for (index_t b0 = 0; b0 < a.batch; b0 += slice) {
      binary_rows part = a;
      part.batch = std::min(slice, a.batch - b0);
      part.x = a.x + b0 * a.x_stride;
      float* out = y.data + b0 * y.stride[0];
      switch (path) {
#if SAGEPTQ_CPU_X86
        case isa::avx512_vnni: {
          const int8_rows q{vnni->x.row(b0), vnni->x.cols, vnni->x.scales.data() + b0 * vnni->x.blocks(),
                            vnni->group_offsets.data() + b0 * a.groups(), part.batch};
          salient_rows fused_part;  // the same batch columns of the salient tail
          if (fused != nullptr) {
            fused_part = *fused;
            fused_part.batch = part.batch;
            fused_part.x = fused->x + b0 * fused->padded_count();
          }
          if (a.groups() == 1)
            rows_vnni<true>(part, q, r0, r1, out, y.stride[0], fused != nullptr ? &fused_part : nullptr);
          else
            rows_vnni<false>(part, q, r0, r1, out, y.stride[0]);
          break;
        }
        case isa::avx512:
          part.group_sums = sums.data() + b0 * a.groups() * lanes;
          rows_avx512(part, r0, r1, out, y.stride[0]);
          break;
        case isa::avx2:
          part.group_sums = sums.data() + b0 * a.groups() * lanes;
          rows_avx2(part, r0, r1, out, y.stride[0]);
          break;
#endif
        default: rows_scalar(part, r0, r1, out, y.stride[0]); break;
      }
    }
    tail(r0, r1);
  });
}

}  // namespace detail

/// success, or unsupported for the sage modes without a kernel (planes > 1, table scales, weight groups), or
/// invalid_argument for a batch outside [1, 8].
inline outcome can_implement(const format::sage_view<host_space>& w, index_t batch) {
  if (auto ok = detail::check_batch(batch); !ok) return ok;
  const auto& s = w.shape;
  if (s.planes != 1 || s.scale_mode != format::sage_scale_mode::factorized ||
      s.group_mode != format::sage_group_mode::column)
    return fail(status::unsupported,
                "cpu::gemv: sage kernels implement one plane, factorized scales and column groups only");
  return {};
}
inline outcome can_implement(const format::q1_0_view<host_space>&, index_t batch) { return detail::check_batch(batch); }
inline outcome can_implement(const format::rtn_view<host_space>&, index_t batch) { return detail::check_batch(batch); }

/// y = W x for sage weights on `path`.
template <executor E>
outcome gemv(const format::sage_view<host_space>& w, matrix_view<const float> x, matrix_view<float> y, const E& exec,
             isa path) {
  const auto& s = w.shape;
  if (auto ok = can_implement(w, x.rows()); !ok) return ok;
  if (auto ok = detail::check_io(s.rows, s.cols, x, y); !ok) return ok;
  if (!supported(path)) return fail(status::unsupported, std::string("cpu::gemv: this CPU lacks ") + to_string(path));
  const index_t batch = x.rows(), kb = s.binarized_cols(), ks = s.salient_cols, row_words = s.sign_row_words();

  // x' = beta-folded x in stored order (zero in the row padding), and the salient tail of x (zero-padded to whole
  // SIMD chunks, in the order of the tail's path).
  const index_t padded = 32 * row_words;
  detail::salient_rows salient{w.salient_codes, s.salient_row_words(), s.salient_bits, ks, w.salient_scales,
                               s.salient_symmetric ? nullptr : w.salient_zeros,
                               0.5f * static_cast<float>(s.salient_max_code()), nullptr, batch};
  std::vector<float> folded(static_cast<std::size_t>(batch * padded)),
      tail(static_cast<std::size_t>(batch * salient.padded_count()), 0.0f);
  detail::fold(w, x, folded.data(), padded, path == isa::avx512 || path == isa::avx512_vnni);
  // 4-byte sign rows (word_rows, small matrices) are not whole int8 blocks: they take the fp32 AVX-512 path.
  if (path == isa::avx512_vnni && row_words % (int8_block / 32) != 0) path = isa::avx512;
  const bool simd_tail = (path == isa::avx512 || path == isa::avx512_vnni) && detail::salient_simd_supported();
  // The VNNI tiles add the tail themselves (one reduction per row); the other paths run it after each row block.
  const bool fused = ks > 0 && simd_tail && path == isa::avx512_vnni;
  for (index_t k = 0; k < ks; ++k) {
    const index_t c = w.source_column(kb + k), at = salient.x_position(k, simd_tail);
    for (index_t b = 0; b < batch; ++b) tail[static_cast<std::size_t>(b * salient.padded_count() + at)] = x(b, c);
  }
  salient.x = tail.data();

  detail::binary_rows a{w.signs, row_words, row_words, w.row_scales, folded.data(), padded, nullptr, batch};
  detail::run_binary(a, path, s.rows, y, exec, fused ? &salient : nullptr, [&](index_t r0, index_t r1) {
    if (ks == 0 || fused) return;
    if (simd_tail)
      detail::add_salient_simd(salient, r0, r1, y.data, y.stride[0]);
    else
      detail::add_salient_scalar(salient, r0, r1, y.data, y.stride[0]);
  });
  return {};
}

/// y = W x for q1_0 weights on `path`.
template <executor E>
outcome gemv(const format::q1_0_view<host_space>& w, matrix_view<const float> x, matrix_view<float> y, const E& exec,
             isa path) {
  if (auto ok = can_implement(w, x.rows()); !ok) return ok;
  if (auto ok = detail::check_io(w.rows, w.cols, x, y); !ok) return ok;
  if (!supported(path)) return fail(status::unsupported, std::string("cpu::gemv: this CPU lacks ") + to_string(path));
  const index_t batch = x.rows(), padded = 32 * w.words_per_row();
  std::vector<float> padded_x(static_cast<std::size_t>(batch * padded), 0.0f);  // zero past cols: padding bits add 0
  for (index_t b = 0; b < batch; ++b)
    for (index_t c = 0; c < w.cols; ++c) padded_x[static_cast<std::size_t>(b * padded + c)] = x(b, c);
  detail::binary_rows a{w.signs,          w.words_per_row(), format::q1_0::words_per_group, w.scales,
                        padded_x.data(), padded,            nullptr,                       batch};
  detail::run_binary(a, path, w.rows, y, exec, nullptr, [](index_t, index_t) {});
  return {};
}

/// y = W x for rtn weights (scalar on every path: `path` is only checked).
template <executor E>
outcome gemv(const format::rtn_view<host_space>& w, matrix_view<const float> x, matrix_view<float> y, const E& exec,
             isa path) {
  if (auto ok = can_implement(w, x.rows()); !ok) return ok;
  if (auto ok = detail::check_io(w.rows, w.cols, x, y); !ok) return ok;
  if (!supported(path)) return fail(status::unsupported, std::string("cpu::gemv: this CPU lacks ") + to_string(path));
  const auto& layout = w.layout;
  const index_t batch = x.rows(), groups = layout.groups_per_row(w.cols), words = layout.words_per_row(w.cols);
  const float symmetric_zero = 0.5f * static_cast<float>(layout.max_code());
  exec.parallel_for((w.rows + detail::block_rows - 1) / detail::block_rows, [&](index_t block) {
    const index_t r0 = block * detail::block_rows, r1 = std::min(w.rows, r0 + detail::block_rows);
    for (index_t r = r0; r < r1; ++r)
      for (index_t b = 0; b < batch; ++b) {
        float total = 0.0f;
        for (index_t g = 0; g < groups; ++g) {
          const index_t at = r * groups + g;
          const float zero = layout.symmetric ? symmetric_zero : static_cast<float>(w.zeros[at]);
          float dot = 0.0f;
          for (index_t c = g * layout.group_size; c < std::min(w.cols, (g + 1) * layout.group_size); ++c)
            dot += (static_cast<float>(format::read_code(w.codes + r * words, c, layout.bits)) - zero) * x(b, c);
          total += w.scales[at].to_float() * dot;
        }
        y(b, r) = total;
      }
  });
  return {};
}

/// y = W x on the path active_isa() picks (SAGEPTQ_CPU_ISA or the widest this CPU has).
template <class Packed, executor E = inline_executor>
outcome gemv(const Packed& w, matrix_view<const float> x, matrix_view<float> y, const E& exec = {}) {
  auto path = active_isa();
  if (!path.ok()) return path.as_outcome();
  return gemv(w, x, y, exec, *path);
}

}  // namespace cpu
SAGEPTQ_NAMESPACE_END
