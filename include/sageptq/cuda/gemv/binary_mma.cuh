#pragma once
/// @file binary_mma.cuh
/// Device side of the binary GEMV: y[b][r] = alpha_r * sum_j s_rj x'[b][j] (+ the salient tail), on tensor cores.
///
/// Why tensor cores at batch 1: a +-1 weight is exact in fp16/bf16, so the decode is the whole cost: two sign bits
/// become one half2 of +-scale with one shift and one LOP3, and a single mma.m16n8k16 then applies 256 weights to
/// all 8 activation columns at once, so batch 1..8 cost the same instructions.
///
/// Layouts. The sum over k is order-free, so the kernel picks the k order that makes decoding cheap:
///  - A (16 rows x 16 k): thread (g = lane / 4, c = lane % 4) owns a 16-byte sign vector (128 columns) of rows g and
///    g + 8; mma k pair {2c, 2c+1} takes bits (i, i + 16) of one of its words and pair {2c+8, 2c+9} bits (i+1, i+17).
///  - B (16 k x 8 batch): the fold kernel stores x' of word w as 16 pairs (x'[32w + i], x'[32w + i + 16]), so the
///    B fragment of thread (g, c) is one 8-byte load of batch column g.
/// A block of Warps warps owns 16 * Tiles rows; warps split the 16-byte vectors of those rows, reduce through shared
/// memory, and finish their rows (alpha, salient tail with a CUB warp reduction, output conversion).
/// Threading: one launch of fold_kernel, then one of binary_gemv_kernel, on the caller's stream.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cub/warp/warp_reduce.cuh>

#include "../../format/q1_0.hpp"
#include "../../format/sage.hpp"
#include "../config.cuh"

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda::gemv::detail {

inline constexpr int max_batch = 8;

/// The 16-bit type x' is folded into (the mma operand type) for each activation type: fp16 for fp16 and f32
/// activations, bf16 for bf16 (its range).
template <class Act>
struct operand {
  using type = __half;
  static constexpr std::uint16_t one = 0x3c00;
};
template <>
struct operand<__nv_bfloat16> {
  using type = __nv_bfloat16;
  static constexpr std::uint16_t one = 0x3f80;
};

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }
/// A stored fp16 scale through the hardware conversion (fp16::to_float is the portable integer version).
__device__ __forceinline__ float to_float(fp16 v) { return __half2float(__ushort_as_half(v.bits)); }

template <class T>
__device__ __forceinline__ std::uint16_t operand_bits(float v) {
  if constexpr (std::is_same_v<T, __half>)
    return __half_as_ushort(__float2half_rn(v));
  else
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <class Out>
__device__ __forceinline__ Out from_float(float v) {
  if constexpr (std::is_same_v<Out, __half>)
    return __float2half_rn(v);
  else if constexpr (std::is_same_v<Out, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else
    return v;
}

/// The sage default format as the kernels see it: 1 plane, factorized scales, column groups.
struct sage_rows {
  format::sage_view<device_space> w;
  static constexpr bool has_tail = true;
  static constexpr bool unit_vector_scale = true;  ///< A = +-1: alpha is applied to the row's sum
  __host__ __device__ index_t rows() const { return w.shape.rows; }
  __host__ __device__ index_t row_words() const { return w.shape.sign_row_words(); }
  __host__ __device__ index_t tail_cols() const { return w.shape.salient_cols; }
  /// x' of stored binarized column j (0 in the row padding) from one activation row.
  template <class Act>
  __device__ float folded(const Act* x, index_t j) const {
    if (j >= w.shape.binarized_cols()) return 0.0f;
    return to_float(w.group_scales[w.group(0, j)]) * to_float(x[w.source_column(j)]);
  }
  template <class Act>
  __device__ float tail(const Act* x, index_t k) const {
    return to_float(x[w.source_column(w.shape.binarized_cols() + k)]);
  }
  __device__ float vector_scale(index_t, index_t) const { return 1.0f; }
  __device__ float row_scale(index_t r) const { return to_float(w.row_scales[r]); }
};

/// q1_0: the scale d of each 128-column group is exactly one 16-byte sign vector, so it goes into A.
struct q1_0_rows {
  format::q1_0_view<device_space> w;
  static constexpr bool has_tail = false;
  static constexpr bool unit_vector_scale = false;
  __host__ __device__ index_t rows() const { return w.rows; }
  __host__ __device__ index_t row_words() const { return w.words_per_row(); }
  __host__ __device__ index_t tail_cols() const { return 0; }
  template <class Act>
  __device__ float folded(const Act* x, index_t j) const {
    return j < w.cols ? to_float(x[j]) : 0.0f;
  }
  template <class Act>
  __device__ float tail(const Act*, index_t) const { return 0.0f; }
  __device__ float vector_scale(index_t r, index_t v) const { return to_float(w.scales[r * w.groups_per_row() + v]); }
  __device__ float row_scale(index_t) const { return 1.0f; }
};

/// x'[b] as (j, j + 16) pairs of the operand type (pairs[b][word][i]), and the salient activations as floats.
/// Grid: x over the pairs (then the salient columns) of one batch column, y over batch columns; 32-bit indices.
template <class Rows, class Act>
SAGEPTQ_KERNEL void fold_kernel(Rows rows, const Act* __restrict__ x, index_t x_stride,
                                std::uint32_t* __restrict__ pairs, float* __restrict__ tail) {
#if SAGEPTQ_CUDA_ARCH >= 900
  asm volatile("griddepcontrol.launch_dependents;");  // let the GEMV start streaming weights now
#endif
  using T = typename operand<Act>::type;
  const auto per_batch = static_cast<std::uint32_t>(rows.row_words() * 16);
  const auto tail_cols = static_cast<std::uint32_t>(rows.tail_cols());
  const std::uint32_t i = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  const Act* row = x + b * x_stride;
  if (i < per_batch) {
    const index_t j = 32 * (i / 16) + i % 16;
    pairs[b * static_cast<index_t>(per_batch) + i] =
        operand_bits<T>(rows.folded(row, j)) | (std::uint32_t{operand_bits<T>(rows.folded(row, j + 16))} << 16);
  } else if (i < per_batch + tail_cols) {
    tail[b * tail_cols + (i - per_batch)] = rows.tail(row, i - per_batch);
  }
}

/// 16 bytes of sign words that are read once: bypass L1.
__device__ __forceinline__ uint4 load_streaming(const std::uint32_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

/// Bits (i, i + 16) of `word` as the half2 (+-s, +-s), bit 1 -> +s; minus_s2 holds -s in both halves.
__device__ __forceinline__ std::uint32_t decode_pair(std::uint32_t word, int i, std::uint32_t minus_s2) {
  return ((word << (15 - i)) & 0x80008000u) ^ minus_s2;
}

template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <class T>
__device__ __forceinline__ std::uint32_t minus_pair(float s) {
  const std::uint32_t h = operand_bits<T>(-s);
  return h | (h << 16);
}

/// Shared-memory staging limits: the salient codes of a block's rows and the salient activations are copied once per
/// block when they fit (the common case: 1% salient columns), else read from global memory.
inline constexpr int staged_code_words = 2048;
inline constexpr int staged_tail_floats = 4096;

template <class Rows, class Act, class Out, int Warps, int Tiles, int MinBlocks>
__launch_bounds__(Warps * 32, MinBlocks) SAGEPTQ_KERNEL
    void binary_gemv_kernel(Rows rows, const std::uint32_t* __restrict__ pairs, const float* __restrict__ tail,
                            Out* __restrict__ y, index_t y_stride, int batch) {
  using T = typename operand<Act>::type;
  constexpr int block_rows = 16 * Tiles;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
  const index_t n_rows = rows.rows(), row_words = rows.row_words(), vectors = row_words / 4;
  const index_t row0 = static_cast<index_t>(blockIdx.x) * block_rows;

  // Rows g and g + 8 of each tile (clamped: rows past the end load a real row and are never stored).
  const std::uint32_t* sign_row[Tiles][2];
  index_t row_of[Tiles][2];
#pragma unroll
  for (int t = 0; t < Tiles; ++t)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_of[t][h] = min(row0 + 16 * t + g + 8 * h, n_rows - 1);
      sign_row[t][h] = rows.w.signs + row_of[t][h] * row_words;
    }
  const index_t steps = (vectors + 3) / 4, first = steps * warp / Warps, last = steps * (warp + 1) / Warps;
  uint4 words[Tiles][2];
  std::uint32_t minus_s[Tiles][2];
  auto load = [&](index_t step, uint4 (&into)[Tiles][2], std::uint32_t (&scale)[Tiles][2]) {
    const index_t v = 4 * step + c;
#pragma unroll
    for (int t = 0; t < Tiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        into[t][h] = v < vectors ? load_streaming(sign_row[t][h] + 4 * v) : make_uint4(0, 0, 0, 0);
        if constexpr (Rows::unit_vector_scale)
          scale[t][h] = minus_pair<T>(1.0f);
        else
          scale[t][h] = minus_pair<T>(v < vectors ? rows.vector_scale(row_of[t][h], v) : 0.0f);
      }
  };
  // The weights do not depend on the fold kernel: start streaming them before waiting for it (PDL).
  if (first < last) load(first, words, minus_s);

  // Per-row scalars and salient codes of this block, staged while the sign words are in flight.
  __shared__ float red[Warps][Tiles][16][max_batch];  // partial sums: [warp][tile][row][batch column]
  __shared__ float row_scale[block_rows], salient_scale[block_rows], salient_zero[block_rows];
  __shared__ std::uint32_t staged_codes[Rows::has_tail ? staged_code_words : 1];
  __shared__ float staged_tail[Rows::has_tail ? staged_tail_floats : 1];
  const index_t block_end = min(row0 + block_rows, n_rows);
  index_t ks = 0, code_words = 0;
  const std::uint32_t* codes = nullptr;
  const float* tail_x = tail;
  for (index_t r = row0 + threadIdx.x; r < block_end; r += blockDim.x) row_scale[r - row0] = rows.row_scale(r);
  if constexpr (Rows::has_tail) {
    const auto& s = rows.w.shape;
    ks = s.salient_cols;
    code_words = s.salient_row_words();
    codes = rows.w.salient_codes + row0 * code_words;
    if (ks > 0) {
      for (index_t r = row0 + threadIdx.x; r < block_end; r += blockDim.x) {
        salient_scale[r - row0] = to_float(rows.w.salient_scales[r]);
        salient_zero[r - row0] = s.salient_symmetric ? 0.5f * static_cast<float>(s.salient_max_code())
                                                     : static_cast<float>(rows.w.salient_zeros[r]);
      }
      if ((block_end - row0) * code_words <= staged_code_words) {
        for (index_t i = threadIdx.x; i < (block_end - row0) * code_words; i += blockDim.x) staged_codes[i] = codes[i];
        codes = staged_codes;
      }
    }
  }
#if SAGEPTQ_CUDA_ARCH >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");  // x' and the salient activations are written by fold_kernel
#endif
  if constexpr (Rows::has_tail) {
    if (ks > 0 && batch * ks <= staged_tail_floats) {
      for (index_t i = threadIdx.x; i < batch * ks; i += blockDim.x) staged_tail[i] = tail[i];
      tail_x = staged_tail;
    }
  }

  const std::uint32_t* my_pairs = pairs + static_cast<index_t>(min(g, batch - 1)) * row_words * 16;
  const bool my_batch = g < batch;
  float acc[Tiles][2][4] = {};  // two independent mma chains per tile (even and odd words)
  for (index_t step = first; step < last; ++step) {
    uint4 next[Tiles][2];
    std::uint32_t next_s[Tiles][2];
    if (step + 1 < last) load(step + 1, next, next_s);  // the next vectors are in flight while these decode
    const index_t v = 4 * step + c;
    const bool valid = v < vectors && my_batch;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      uint4 b[4];  // the 16 x' pairs of word q, all loads issued before the first mma
      const uint4* from = reinterpret_cast<const uint4*>(my_pairs + (4 * v + q) * 16);
#pragma unroll
      for (int k = 0; k < 4; ++k) b[k] = valid ? __ldg(from + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int i = 0; i < 16; i += 2) {
        const std::uint32_t b0 = (&b[i / 4].x)[i % 4], b1 = (&b[i / 4].x)[i % 4 + 1];
#pragma unroll
        for (int t = 0; t < Tiles; ++t) {
          const std::uint32_t w0 = (&words[t][0].x)[q], w1 = (&words[t][1].x)[q];
          const std::uint32_t a[4] = {decode_pair(w0, i, minus_s[t][0]), decode_pair(w1, i, minus_s[t][1]),
                                      decode_pair(w0, i + 1, minus_s[t][0]), decode_pair(w1, i + 1, minus_s[t][1])};
          mma_16816<T>(acc[t][q % 2], a, b0, b1);
        }
      }
    }
    if (step + 1 < last)
#pragma unroll
      for (int t = 0; t < Tiles; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          words[t][h] = next[t][h];
          minus_s[t][h] = next_s[t][h];
        }
  }

#pragma unroll
  for (int t = 0; t < Tiles; ++t) {
    red[warp][t][g][2 * c] = acc[t][0][0] + acc[t][1][0];
    red[warp][t][g][2 * c + 1] = acc[t][0][1] + acc[t][1][1];
    red[warp][t][g + 8][2 * c] = acc[t][0][2] + acc[t][1][2];
    red[warp][t][g + 8][2 * c + 1] = acc[t][0][3] + acc[t][1][3];
  }
  __syncthreads();

  // Warp w finishes the block's rows w, w + Warps, ...: lane b owns batch column b.
  using warp_reduce = cub::WarpReduce<float>;
  __shared__ typename warp_reduce::TempStorage reduce_storage[Warps];
  for (int local = warp; local < block_rows; local += Warps) {
    const index_t r = row0 + local;
    if (r >= n_rows) break;
    float mine = 0.0f;  // salient sum of batch column `lane`, scaled
    if constexpr (Rows::has_tail) {
      if (ks > 0) {
        const std::uint32_t* row_codes = codes + local * code_words;
        const int bits = rows.w.shape.salient_bits;
        float salient[max_batch] = {};
        for (index_t k = lane; k < ks; k += 32) {
          const float level = static_cast<float>(format::read_code(row_codes, k, bits)) - salient_zero[local];
#pragma unroll
          for (int b = 0; b < max_batch; ++b)
            if (b < batch) salient[b] += level * tail_x[b * ks + k];
        }
#pragma unroll
        for (int b = 0; b < max_batch; ++b) {
          if (b >= batch) break;  // uniform across the warp
          const float sum = __shfl_sync(0xffffffffu, warp_reduce(reduce_storage[warp]).Sum(salient[b]), 0);
          __syncwarp();  // reduce_storage is reused by the next column
          if (lane == b) mine = salient_scale[local] * sum;
        }
      }
    }
    if (lane < batch) {
      float total = 0.0f;
#pragma unroll
      for (int w = 0; w < Warps; ++w) total += red[w][local / 16][local % 16][lane];
      y[lane * y_stride + r] = from_float<Out>(row_scale[local] * total + mine);
    }
  }
}

}  // namespace cuda::gemv::detail
SAGEPTQ_NAMESPACE_END
