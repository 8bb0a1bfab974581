#pragma once
/// @file gemv.hpp
/// y = W x on the CPU for packed weights: sage (factorized scales, one sign plane, column groups, salient tail),
/// q1_0 and rtn, for 1 to 8 activation columns at once.
///
/// Inputs: the packed view, x (batch x cols, any strides) and y (batch x rows, unit column stride), batch in [1, 8].
/// Output: y, every element written. The binary part runs on the path active_isa() picks (scalar, AVX2 or AVX-512,
/// forced by SAGEPTQ_CPU_ISA) or on the one the caller names; rtn has only the scalar path.
/// Numerics: fp32 accumulation on every path. sage folds beta into x once (x'_j = beta_g(j) * x_perm(j)) and alpha
/// into the row's sum, so its rounding differs from decode(W) * x by a few ulps per term; the SIMD paths sum in
/// lanes (and as 2 * sum_{bit=1} x' - sum x'), so results differ between paths by float rounding only:
/// |y - y_exact| <= (K + 8) * 2^-24 * sum_j |w_j x_j| bounds all of them.
/// Threading: rows are split into blocks of 64 across the caller's executor; each output is computed by one task
/// in a fixed order, so y is bit-identical for every thread count (and differs between ISA paths only by rounding).

#include <algorithm>
#include <cstdint>
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
  return check_finite_matrix(x, "cpu::gemv: x");
}

inline constexpr index_t block_rows = 64;
inline constexpr index_t simd_batch = 2;

/// Runs the binary rows of `a` on `path` in blocks of rows, then tail(r0, r1) on each block (salient columns).
template <class E, class Tail>
void run_binary(binary_rows a, isa path, index_t rows, matrix_view<float> y, const E& exec, Tail&& tail) {
  const int lanes = path == isa::avx512 ? 16 : 8;
  // Batch columns per pass: 2 keeps each pass's x' (2 x 4 cols bytes) in L2 with 4 rows sharing every x' load; 8 at
  // once re-read 8 x' rows from L2 per weight row and ran 1.4x slower at batch 8 (bench/results/gemv.md).
  const index_t slice = path == isa::scalar ? max_batch : simd_batch;
  std::vector<float> sums;
  if (path != isa::scalar) sums = group_sums(a, lanes);
  exec.parallel_for((rows + block_rows - 1) / block_rows, [&](index_t block) {
    const index_t r0 = block * block_rows, r1 = std::min(rows, r0 + block_rows);
    for (index_t b0 = 0; b0 < a.batch; b0 += slice) {
      binary_rows part = a;
      part.batch = std::min(slice, a.batch - b0);
      part.x = a.x + b0 * a.x_stride;
      part.group_sums = sums.data() + b0 * a.groups() * lanes;
      float* out = y.data + b0 * y.stride[0];
      switch (path) {
#if SAGEPTQ_CPU_X86
        case isa::avx512: rows_avx512(part, r0, r1, out, y.stride[0]); break;
        case isa::avx2: rows_avx2(part, r0, r1, out, y.stride[0]); break;
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

  // x' = beta-folded x in stored order (zero in the row padding), and the salient tail of x.
  const index_t padded = 32 * row_words;
  std::vector<float> folded(static_cast<std::size_t>(batch * padded), 0.0f), tail(static_cast<std::size_t>(batch * ks));
  for (index_t g = 0; g < s.groups; ++g) {
    const float beta = w.group_scales[g].to_float();
    for (index_t j = w.group_offsets[g]; j < w.group_offsets[g + 1]; ++j) {
      const index_t c = w.source_column(j);
      for (index_t b = 0; b < batch; ++b) folded[static_cast<std::size_t>(b * padded + j)] = beta * x(b, c);
    }
  }
  for (index_t k = 0; k < ks; ++k) {
    const index_t c = w.source_column(kb + k);
    for (index_t b = 0; b < batch; ++b) tail[static_cast<std::size_t>(b * ks + k)] = x(b, c);
  }

  detail::binary_rows a{w.signs, row_words, row_words, w.row_scales, folded.data(), padded, nullptr, batch};
  const float max_code = static_cast<float>(s.salient_max_code());
  detail::run_binary(a, path, s.rows, y, exec, [&](index_t r0, index_t r1) {
    if (ks == 0) return;
    std::vector<float> level(static_cast<std::size_t>(ks));  // q - zero of the row's codes, exact small integers
    for (index_t r = r0; r < r1; ++r) {
      const std::uint32_t* codes = w.salient_codes + r * s.salient_row_words();
      const float zero = s.salient_symmetric ? 0.5f * max_code : static_cast<float>(w.salient_zeros[r]);
      for (index_t k = 0; k < ks; ++k)
        level[static_cast<std::size_t>(k)] = static_cast<float>(format::read_code(codes, k, s.salient_bits)) - zero;
      const float scale = w.salient_scales[r].to_float();
      for (index_t b = 0; b < batch; ++b) {
        const float* xt = tail.data() + b * ks;
        float dot = 0.0f;
        for (index_t k = 0; k < ks; ++k) dot += level[static_cast<std::size_t>(k)] * xt[k];
        y(b, r) += scale * dot;
      }
    }
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
  detail::run_binary(a, path, w.rows, y, exec, [](index_t, index_t) {});
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
