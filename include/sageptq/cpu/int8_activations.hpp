#pragma once
/// @file int8_activations.hpp
/// Activations quantized to int8 per block of columns, the input of the VNNI path (binary_rows_vnni.hpp):
///     d = max_block |x| / 127,   q_j = round-half-even(x_j * (127 / max_block |x|)) in [-127, 127];
/// a block with max |x| < 2^-100 (an all-zero one, say) gets d = 0 and q = 0 (so 127 / max never overflows). The
/// grid is symmetric so that -q never overflows, and each block also stores d * sum_j q_j, the term that turns the
/// VNNI sum over 1 bits into the signed sum (2 P - S). Blocks are int8_block = 128 columns (q1_0: its group) or
/// int8_wide_block = 256 (sage: one weight scale per row, so the block is only the activation grid's reach; the
/// kernel then converts and scales half as often), the last one shorter where cols is not a multiple.
/// Error: |x_j - d q_j| <= d (1/2 + 2^-12) (the 2^-12 covers the rounding of d and of x * 127 / max), or 2^-100 in a
/// flushed block, so a GEMV on q differs from one on x by at most sum_j |w_j| d_block(j) (1/2 + 2^-12) (plus
/// 2^-100 sum_j |w_j| for flushed blocks). A wider block has a d at least as large (the max over more columns): the
/// bound is per block, so it holds for either width with that width's d. binary_rows_vnni.hpp has an AVX-512 twin
/// with bit-identical output. Deterministic (IEEE single operations in a fixed order), so every thread count and
/// caller sees the same q. Threading: none.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu {

inline constexpr index_t int8_block = 128;
inline constexpr index_t int8_wide_block = 256;

/// Relative bound on |x - d q| / d.
inline constexpr double int8_rounding = 0.5 + 0x1p-12;

/// Blocks whose max |x| is below this are flushed to zero.
inline constexpr float int8_flush = 0x1p-100f;

/// `batch` rows of `cols` activations (a multiple of int8_block), quantized in blocks of `block` columns (the last
/// one shorter where block does not divide cols): q [batch][cols], and per block scale d and offset d * sum q,
/// [batch][blocks()].
struct int8_activations {
  index_t batch = 0, cols = 0, block = int8_block;
  std::vector<std::int8_t> q;
  std::vector<float> scales, offsets;

  [[nodiscard]] index_t blocks() const noexcept { return (cols + block - 1) / block; }
  [[nodiscard]] const std::int8_t* row(index_t b) const noexcept { return q.data() + b * cols; }
  [[nodiscard]] float scale(index_t b, index_t k) const noexcept { return scales[b * blocks() + k]; }
};

/// One block of n columns (a multiple of 16): writes q[0, n) and returns {d, d * sum q}. The reference;
/// quantize_block_avx512() is its twin.
struct int8_block_scale {
  float scale, offset;
};
inline int8_block_scale quantize_block(const float* x, std::int8_t* q, index_t n) {
  float max = 0.0f;
  for (index_t j = 0; j < n; ++j) max = std::max(max, std::fabs(x[j]));
  if (!(max >= int8_flush)) {
    std::fill_n(q, n, std::int8_t{0});
    return {0.0f, 0.0f};
  }
  const float d = max / 127.0f, inverse = 127.0f / max;
  std::int32_t sum = 0;
  for (index_t j = 0; j < n; ++j) {  // |x * inverse| <= 127 (1 + 2^-23)^2: rounds into [-127, 127]
    q[j] = static_cast<std::int8_t>(std::nearbyint(x[j] * inverse));
    sum += q[j];
  }
  return {d, d * static_cast<float>(sum)};
}

using quantize_block_fn = int8_block_scale (*)(const float*, std::int8_t*, index_t);

/// Quantizes x (batch x cols, cols a multiple of int8_block, row stride x_stride) in blocks of `block` columns
/// (int8_block or int8_wide_block).
inline int8_activations quantize_int8(const float* x, index_t batch, index_t cols, index_t x_stride,
                                      quantize_block_fn block_fn = quantize_block, index_t block = int8_block) {
  SAGEPTQ_ASSERT(cols % int8_block == 0 && block % int8_block == 0);
  int8_activations a{batch, cols, block, std::vector<std::int8_t>(static_cast<std::size_t>(batch * cols)), {}, {}};
  a.scales.resize(static_cast<std::size_t>(batch * a.blocks()));
  a.offsets.resize(a.scales.size());
  for (index_t b = 0; b < batch; ++b)
    for (index_t k = 0; k < a.blocks(); ++k) {
      const index_t first = k * block;
      const auto [d, offset] =
          block_fn(x + b * x_stride + first, a.q.data() + b * cols + first, std::min(block, cols - first));
      a.scales[static_cast<std::size_t>(b * a.blocks() + k)] = d;
      a.offsets[static_cast<std::size_t>(b * a.blocks() + k)] = offset;
    }
  return a;
}

}  // namespace cpu
SAGEPTQ_NAMESPACE_END
