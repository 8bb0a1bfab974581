#pragma once
/// @file rtn_fma.cuh
/// Device side of the rtn GEMV: y[b][r] = sum_j scale_rg(j) (q_rj - zero_rg(j)) x[b][j] for the b-bit codes of
/// format/rtn.hpp (1 <= b <= 8), on the FMA pipes. At b >= 2 bits per weight the weight stream, not the decode, bounds
/// the time (~6 instructions per weight at batch 1 against a budget of ~8 at 4 bits), and multi-bit levels times a
/// group scale have no exact 16-bit mma operand, so the products stay in fp32.
///
/// Work split: a warp owns Rows consecutive rows; its lanes take turns over units of 32 codes, which are exactly Bits
/// words of a row (so every shift of the decode is a compile-time constant) and lie in one scale group (can_implement
/// asks for groups of whole units, or one group per row). Per unit and row: one scale and one zero, loaded with the
/// code words one unit ahead; per 8 codes: one 16-byte load of x per batch column (all issued before the decode),
/// shared by the warp's rows.
/// Level: the code's bits under the exponent of 2^22 give the float 2^22 + q exactly (its last mantissa bit weighs
/// 1/2), minus 2^22 + zero (a multiple of 1/2: symmetric grids included) is q - zero exactly; w = scale (q - zero) is
/// rounded once, and the products accumulate by fma in fp32, then across lanes (cub::WarpReduce, fixed order):
/// |y - y_exact| <= (K + 8) 2^-24 sum_j |w_j x_j| + u_out |y| (x is used as given: fp16/bf16 are exact in fp32).
/// Threading: one launch; no shared state between warps, no block barrier.

#include <cstdint>
#include <cstring>
#include <cub/warp/warp_reduce.cuh>
#include <type_traits>

#include "../../format/rtn.hpp"
#include "../config.cuh"
#include "common.cuh"

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda::gemv::detail {

/// The rtn kernel's problem list: matrix m owns blocks first_block[m] .. first_block[m + 1] - 1.
template <class Out, int N>
struct rtn_problems {
  format::rtn_view<device_space> w[N];
  Out* y[N];
  index_t y_stride[N];
  int first_block[N];
  int count;
};

/// Activations col .. col + 7 of one row as stored (col a multiple of 8), columns at or past cols as 0 (not loaded):
/// the loads of every batch column are issued before any is used. The full-width load is 16-byte aligned:
/// can_implement checks x and its row stride.
template <class Act>
struct x8 {
  uint4 v[sizeof(Act) / 2];
};
template <class Act>
__device__ __forceinline__ x8<Act> load_x8(const Act* row, index_t col, index_t cols) {
  x8<Act> raw;
  if (col + 8 <= cols) {
#pragma unroll
    for (int k = 0; k < static_cast<int>(sizeof(Act) / 2); ++k)
      raw.v[k] = __ldg(reinterpret_cast<const uint4*>(row + col) + k);
  } else {
    alignas(16) Act e[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = col + i < cols ? row[col + i] : Act{};
    memcpy(&raw, e, sizeof raw);
  }
  return raw;
}
template <class Act>
__device__ __forceinline__ float x_at(const x8<Act>& raw, int i) {
  const std::uint32_t* words = &raw.v[0].x;
  if constexpr (std::is_same_v<Act, float>)
    return __uint_as_float(words[i]);
  else
    return to_float(bits_as<Act>(static_cast<std::uint16_t>(words[i / 2] >> (16 * (i % 2)))));
}

/// At least 2 blocks per SM (<= 128 registers): at 3 (<= 80) every code width spills.
template <class Act, class Out, int Bits, int Warps, int Rows, int N>
__launch_bounds__(Warps * 32, 2) SAGEPTQ_KERNEL
    void rtn_gemv_kernel(const __grid_constant__ rtn_problems<Out, N> p, const Act* __restrict__ x, index_t x_stride,
                         int batch) {
  const int m = problem_of_block(p.first_block, p.count);
  const format::rtn_view<device_space> w = p.w[m];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t row0 =
      static_cast<index_t>(static_cast<int>(blockIdx.x) - p.first_block[m]) * (Warps * Rows) + warp * Rows;
  if (row0 >= w.rows) return;  // no block barrier below
  const index_t cols = w.cols, words = w.layout.words_per_row(cols), groups = w.layout.groups_per_row(cols);
  const index_t units = (cols + 31) / 32;
  const index_t units_per_group = w.layout.group_size >= cols ? units : w.layout.group_size / 32;
  const float zero_offset = 4194304.0f + (w.layout.symmetric ? 0.5f * static_cast<float>(w.layout.max_code()) : 0.0f);
  constexpr std::uint32_t mask = (1u << Bits) - 1u;

  // Rows past the end read the last row again and are never stored.
  index_t row[Rows];
#pragma unroll
  for (int r = 0; r < Rows; ++r) row[r] = min(row0 + r, w.rows - 1);
  float acc[Rows][max_batch] = {};
  // A unit's code words, scales and zero offsets; the next unit's are loaded before the current one is used (the
  // last lane's last load repeats its unit: no branch).
  std::uint32_t word[Rows][Bits];
  float scale[Rows], offset[Rows];
  auto load_unit = [&](index_t u, std::uint32_t (&to_word)[Rows][Bits], float (&to_scale)[Rows],
                       float (&to_offset)[Rows]) {
    const index_t group = u / units_per_group;
#pragma unroll
    for (int r = 0; r < Rows; ++r) {
#pragma unroll
      for (int i = 0; i < Bits; ++i) {  // the last unit of a row may end in the row's padding, or past it
        const index_t at = Bits * u + i;
        to_word[r][i] = at < words ? __ldg(w.codes + row[r] * words + at) : 0u;
      }
      const index_t g = row[r] * groups + group;
      to_scale[r] = to_float(w.scales[g]);
      to_offset[r] = zero_offset + (w.layout.symmetric ? 0.0f : static_cast<float>(w.zeros[g]));
    }
  };
  if (lane < units) load_unit(lane, word, scale, offset);
  for (index_t u = lane; u < units; u += 32) {
    std::uint32_t next_word[Rows][Bits];
    float next_scale[Rows], next_offset[Rows];
    load_unit(min(u + 32, units - 1), next_word, next_scale, next_offset);
#pragma unroll
    for (int chunk = 0; chunk < 4; ++chunk) {
      const index_t col = 32 * u + 8 * chunk;
      if (col >= cols) break;
      constexpr int loads = 8 / sizeof(Act);  // batch columns whose x is in flight at once: 16 registers
      x8<Act> xs[loads];
#pragma unroll
      for (int b = 0; b < loads; ++b)
        if (b < batch) xs[b] = load_x8(x + b * x_stride, col, cols);
      float weight[Rows][8];
#pragma unroll
      for (int r = 0; r < Rows; ++r)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int bit = (8 * chunk + i) * Bits, k = bit / 32, shift = bit % 32;
          const std::uint32_t field = shift + Bits <= 32
                                          ? word[r][k] >> shift
                                          : __funnelshift_r(word[r][k], word[r][min(k + 1, Bits - 1)], shift);
          weight[r][i] = scale[r] * (__uint_as_float(0x4a800000u | ((field & mask) << 1)) - offset[r]);
        }
#pragma unroll
      for (int b = 0; b < max_batch; ++b) {
        if (b >= batch) break;
        if (b % loads == 0 && b > 0)  // the next columns' x, issued together
#pragma unroll
          for (int k = 0; k < loads; ++k)
            if (b + k < batch) xs[k] = load_x8(x + (b + k) * x_stride, col, cols);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float xv = x_at(xs[b % loads], i);
#pragma unroll
          for (int r = 0; r < Rows; ++r) acc[r][b] = fmaf(weight[r][i], xv, acc[r][b]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < Rows; ++r) {
#pragma unroll
      for (int i = 0; i < Bits; ++i) word[r][i] = next_word[r][i];
      scale[r] = next_scale[r];
      offset[r] = next_offset[r];
    }
  }

  using warp_reduce = cub::WarpReduce<float>;
  __shared__ typename warp_reduce::TempStorage storage[Warps];
  Out* y = p.y[m];
  const index_t y_stride = p.y_stride[m];
#pragma unroll
  for (int r = 0; r < Rows; ++r)
#pragma unroll
    for (int b = 0; b < max_batch; ++b) {
      if (b >= batch) break;
      const float total = warp_reduce(storage[warp]).Sum(acc[r][b]);
      if (lane == 0 && row0 + r < w.rows) y[b * y_stride + row0 + r] = from_float<Out>(total);
      __syncwarp();  // storage is reused
    }
}

}  // namespace cuda::gemv::detail
SAGEPTQ_NAMESPACE_END
