#pragma once
/// @file binary_mma.cuh
/// Device side of the binary GEMV: y[b][r] = alpha_r * sum_j s_rj x'[b][j] (+ the salient tail), on tensor cores.
///
/// Why tensor cores at batch 1: a binary weight is exact in fp16/bf16, so the decode is the whole cost: sign bits
/// become mma operands with one LOP3 per register (bit_decode; a shift and a LOP3 for sign_decode), and a single
/// mma.m16n8k16 then applies 256 weights to all 8 activation columns at once, so batch 1..8 cost the same
/// instructions.
///
/// Layouts. The sum over k is order-free, so the kernel picks the k order that makes decoding cheap:
///  - A (16 rows x 16 k): thread (g = lane / 4, c = lane % 4) owns a 16-byte sign vector (128 columns) of rows g and
///    g + 8; for word pair (2q, 2q + 1) of it and slot s, k pair {2c, 2c+1} takes bits (s, s + 16) of word 2q and
///    k pair {2c+8, 2c+9} the same bits of word 2q + 1.
///  - B (16 k x 8 batch): the fold kernel stores the matching x' pairs side by side, so the B fragment of thread
///    (g, c) is one 8-byte piece of batch column g (loaded 64 bytes at a time).
/// A block of Warps warps owns 16 * Tiles rows; warps split the 16-byte vectors of those rows, then the salient tail
/// (16 codes per mma: levels q - floor(z), exact in fp16/bf16, times the tail activations rounded to the operand
/// type), reduce through shared memory, and finish their rows (scales, the sums S and T, output conversion).
/// Threading: one launch of fold_kernel, then one of binary_gemv_kernel, on the caller's stream.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <type_traits>

#include "../../format/q1_0.hpp"
#include "../../format/sage.hpp"
#include "../config.cuh"
#include "common.cuh"

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda::gemv::detail {

/// The sage default format as the kernels see it: 1 plane, factorized scales, column groups.
struct sage_rows {
  format::sage_view<device_space> w;
  static constexpr bool has_tail = true;
  static constexpr bool unit_vector_scale = true;  ///< A = +-1: alpha is applied to the row's sum
  static constexpr bool shared_fold = false;       ///< x' = beta x in stored order depends on the matrix
  __host__ __device__ index_t rows() const { return w.shape.rows; }
  __host__ __device__ index_t row_words() const { return w.shape.sign_row_words(); }
  __host__ __device__ index_t tail_cols() const { return w.shape.salient_cols; }
  /// The column-group table (offsets, scales as float) a fold block copied to shared memory; empty: read the weights.
  struct staged_groups {
    const std::uint32_t* offsets = nullptr;
    const float* scales = nullptr;
  };
  /// Copies the table, a thread per group, where the block has at least as many threads (the caller syncs the
  /// block before fold_scale reads it).
  __device__ staged_groups stage_groups(std::uint32_t* offsets, float* scales) const {
    const auto groups = static_cast<unsigned>(w.shape.groups);
    if (groups > blockDim.x) return {};
    if (threadIdx.x < groups) {
      offsets[threadIdx.x] = w.group_offsets[threadIdx.x];
      scales[threadIdx.x] = to_float(w.group_scales[threadIdx.x]);
    }
    return {offsets, scales};
  }
  /// x'_j = fold_scale(j) x[fold_column(j)] for stored column j, in two parts that read only the weights, so a fold
  /// can load them before the kernel that writes x has finished. fold_column is -1 in the row padding (x'_j = 0).
  __device__ index_t fold_column(index_t j) const { return j < w.shape.binarized_cols() ? w.source_column(j) : -1; }
  __device__ float fold_scale(index_t j, const staged_groups& t) const {
    const int groups = static_cast<int>(w.shape.groups);
    if (t.scales == nullptr) return to_float(w.group_scales[format::find_column_group(w.group_offsets, groups, j)]);
    return t.scales[format::find_column_group(t.offsets, groups, j)];
  }
  /// Source column of salient activation k.
  __device__ index_t tail_column(index_t k) const { return w.source_column(w.shape.binarized_cols() + k); }
  __device__ float vector_scale(index_t, index_t) const { return 1.0f; }
  __device__ float row_scale(index_t r) const { return to_float(w.row_scales[r]); }
  __device__ float salient_scale(index_t r) const { return to_float(w.salient_scales[r]); }
  /// The grid's zero point: an integer, or (2^b - 1) / 2 for symmetric grids.
  __device__ float salient_zero(index_t r) const {
    return w.shape.salient_symmetric ? 0.5f * static_cast<float>(w.shape.salient_max_code())
                                     : static_cast<float>(w.salient_zeros[r]);
  }
};

/// q1_0: the scale d of each 128-column group is exactly one 16-byte sign vector, so it goes into A.
struct q1_0_rows {
  format::q1_0_view<device_space> w;
  static constexpr bool has_tail = false;
  static constexpr bool unit_vector_scale = false;
  static constexpr bool shared_fold = true;  ///< x' = x: matrices of equal width share one fold
  __host__ __device__ index_t rows() const { return w.rows; }
  __host__ __device__ index_t row_words() const { return w.words_per_row(); }
  __host__ __device__ index_t tail_cols() const { return 0; }
  struct staged_groups {};  ///< no groups: x' = x
  __device__ staged_groups stage_groups(std::uint32_t*, float*) const { return {}; }
  __device__ index_t fold_column(index_t j) const { return j < w.cols ? j : -1; }
  __device__ float fold_scale(index_t, staged_groups) const { return 1.0f; }
  __device__ float vector_scale(index_t r, index_t v) const { return to_float(w.scales[r * w.groups_per_row() + v]); }
  __device__ float row_scale(index_t) const { return 1.0f; }
  __device__ float salient_scale(index_t) const { return 0.0f; }
  __device__ float salient_zero(index_t) const { return 0.0f; }
};

/// x' of stored column j (0 in the row padding) from one activation row: a Rows' fold in one step.
template <class Rows, class Act>
__device__ float fold_value(const Rows& rows, const Act* x, index_t j) {
  const index_t column = rows.fold_column(j);
  return column < 0 ? 0.0f : rows.fold_scale(j, {}) * to_float(x[column]);
}
/// Salient activation k (the tail) from one activation row.
template <class Rows, class Act>
__device__ float tail_value(const Rows& rows, const Act* x, index_t k) {
  return to_float(x[rows.tail_column(k)]);
}

/// How sign words become mma A operands. Slot s (0..15) of a word is its bits (s, s + 16): the half2 of k pair
/// (2c, 2c + 1) or (2c + 8, 2c + 9) of one mma, whose x' pair the fold kernel stores at the same slot.
///  - sign_decode: +-scale per weight, one shift and one LOP3 per register; any operand type, and the only one that
///    can carry a per-vector scale (q1_0's d). Two accumulator chains (even and odd slots).
///  - bit_decode (fp16 operands, unit vector scale): bit b -> b * 2^(m-24), an fp16 subnormal (exact), with m = s for
///    s < 10 (the word itself) and m = s - 6 for s >= 10 (the word shifted right by 6): one LOP3 per register plus one
///    shift per word, no IMAD.SHL. The mma sums b x' exactly into one accumulator per m, so
///    sum_k s_k x'_k = 2 P - S with P = sum_m 2^(24-m) acc_m and S = sum_k x'_k (summed by the fold kernel).
struct sign_decode {
  static constexpr int classes = 2;
  static constexpr bool needs_sum = false;
  __device__ static constexpr int class_of(int s) { return s % 2; }
  __device__ static std::uint32_t shifted(std::uint32_t) { return 0; }
  __device__ static std::uint32_t operand(std::uint32_t word, std::uint32_t, int s, std::uint32_t minus_s2) {
    return ((word << (15 - s)) & 0x80008000u) ^ minus_s2;  // bit 1 -> +s: the XOR flips -s
  }
  __device__ static float combine(const float (&acc)[classes][4], int i) { return acc[0][i] + acc[1][i]; }
};

struct bit_decode {
  static constexpr int classes = 10;
  static constexpr bool needs_sum = true;
  __device__ static constexpr int class_of(int s) { return s < 10 ? s : s - 6; }
  __device__ static std::uint32_t shifted(std::uint32_t word) { return word >> 6; }
  __device__ static std::uint32_t operand(std::uint32_t word, std::uint32_t shifted, int s, std::uint32_t) {
    return (s < 10 ? word : shifted) & (0x00010001u << class_of(s));
  }
  /// 2 P (the accumulators of class m hold 2^(m-24) P_m); powers of two, so only the sum rounds.
  __device__ static float combine(const float (&acc)[classes][4], int i) {
    float total = 0.0f;
#pragma unroll
    for (int m = 0; m < classes; ++m) total += acc[m][i] * __int_as_float((127 + 25 - m) << 23);
    return total;
  }
};

/// Workspace layout of one batch column, written by fold_kernel:
///  - x' pairs: per word pair (2j, 2j + 1) and slot s the x' pairs of slot s of both words (8 bytes: the mma's b0
///    and b1), so pairs[(16 j + s) * 2 + h] = (x'[32 w + s], x'[32 w + s + 16]), w = 2 j + h;
///  - the salient activations in the operand type, zero-padded to whole mmas (16 codes).
__host__ __device__ inline index_t pair_words(index_t row_words) { return row_words * 16; }
__host__ __device__ inline index_t tail_padded(index_t tail_cols) { return (tail_cols + 15) / 16 * 16; }

/// What fold_kernel writes for matrix z (grid z): x' pairs, salient activations and block sums of that matrix.
template <class Rows, int N>
struct fold_problems {
  Rows rows[N];
  std::uint32_t* pairs[N];
  std::uint16_t* tail[N];
  float* sums[N];
};

/// x'[b] and the salient activations in the workspace layout, and per block the sums of the rounded values it wrote
/// (sums[0][b][block]: x', bit_decode's S; sums[1][b][block]: tail, T), which the GEMV adds in a fixed order
/// (deterministic). Grid: x over the pairs (then the tail) of one batch column, y over batch columns, z over the
/// matrices whose x' differs (sage: beta and the permutation are per matrix); 32-bit indices. Blocks past a
/// matrix's work (its grid x is the largest of the list) write zero sums.
template <class Rows, class Act, int Threads, int N>
__launch_bounds__(Threads) SAGEPTQ_KERNEL
    void fold_kernel(const __grid_constant__ fold_problems<Rows, N> p, const Act* __restrict__ x, index_t x_stride) {
#if SAGEPTQ_CUDA_ARCH >= 900
  asm volatile("griddepcontrol.launch_dependents;");  // let the GEMV start streaming weights now
#endif
  using T = typename operand<Act>::type;
  const Rows& rows = p.rows[N == 1 ? 0 : blockIdx.z];
  std::uint32_t* __restrict__ pairs = p.pairs[N == 1 ? 0 : blockIdx.z];
  std::uint16_t* __restrict__ tail = p.tail[N == 1 ? 0 : blockIdx.z];
  float* __restrict__ sums = p.sums[N == 1 ? 0 : blockIdx.z];
  const auto per_batch = static_cast<std::uint32_t>(pair_words(rows.row_words()));
  const auto tail_cols = static_cast<std::uint32_t>(rows.tail_cols()),
             padded = static_cast<std::uint32_t>(tail_padded(rows.tail_cols()));
  const std::uint32_t i = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  const Act* row = x + b * x_stride;
  float pair_sum = 0.0f, tail_sum = 0.0f;
  if (i < per_batch) {
    const index_t w = 2 * (i / 32) + i % 2, s = (i / 2) % 16;
    const std::uint16_t lo = operand_bits<T>(fold_value(rows, row, 32 * w + s)),
                        hi = operand_bits<T>(fold_value(rows, row, 32 * w + s + 16));
    pairs[b * static_cast<index_t>(per_batch) + i] = lo | (std::uint32_t{hi} << 16);
    pair_sum = to_float(bits_as<T>(lo)) + to_float(bits_as<T>(hi));
  } else if constexpr (Rows::has_tail) {
    if (const std::uint32_t k = i - per_batch; i < per_batch + padded) {
      const std::uint16_t v = operand_bits<T>(k < tail_cols ? tail_value(rows, row, k) : 0.0f);
      tail[b * padded + k] = v;
      tail_sum = to_float(bits_as<T>(v));
    }
  }
  using block_reduce = cub::BlockReduce<float, Threads>;
  __shared__ typename block_reduce::TempStorage storage;
  const float pair_total = block_reduce(storage).Sum(pair_sum);
  __syncthreads();  // storage is reused
  const float tail_total = block_reduce(storage).Sum(tail_sum);
  if (threadIdx.x == 0) {
    sums[b * gridDim.x + blockIdx.x] = pair_total;
    sums[(gridDim.y + b) * gridDim.x + blockIdx.x] = tail_total;
  }
}

/// cp.async of 16 bytes into shared memory, through L2 only (sign words are read once); src_bytes 0 writes zeros.
/// Each thread reads back only what it copied itself, so cp.async.wait_group alone orders it: no block barrier.
__device__ __forceinline__ void copy_async_16(void* to, const void* from, int src_bytes) {
  const auto shared = static_cast<std::uint32_t>(__cvta_generic_to_shared(to));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared), "l"(from), "r"(src_bytes) : "memory");
}
/// 4 bytes through L1 (small staging copies).
__device__ __forceinline__ void copy_async_4(void* to, const void* from) {
  const auto shared = static_cast<std::uint32_t>(__cvta_generic_to_shared(to));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(shared), "l"(from) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
}
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

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

/// Salient codes k and k + 1 of a row's bit stream (k even, so the 2 b-bit field never spans more than two words)
/// as the operand pair (q_k - zero, q_k+1 - zero): integers of magnitude <= 255, exact in fp16 and bf16.
template <class T>
__device__ __forceinline__ std::uint32_t level_pair(const std::uint32_t* codes, index_t words, index_t k, int bits,
                                                    float zero) {
  const index_t bit = k * bits, w = bit / 32;
  const std::uint32_t lo = w < words ? codes[w] : 0u, hi = w + 1 < words ? codes[w + 1] : 0u;
  const std::uint32_t field = __funnelshift_r(lo, hi, static_cast<std::uint32_t>(bit % 32)), mask = (1u << bits) - 1u;
  const float q0 = static_cast<float>(field & mask), q1 = static_cast<float>((field >> bits) & mask);
  return operand_bits<T>(q0 - zero) | (std::uint32_t{operand_bits<T>(q1 - zero)} << 16);
}

/// Shared-memory staging limits: the salient codes of a block's rows, the fold kernel's sums and the salient
/// activations are copied once per block, during the main loop, when they fit (the common case: 1% salient columns),
/// else the epilogue reads them from global memory.
inline constexpr int staged_code_words = 1024;
inline constexpr int staged_sum_floats = 512;
inline constexpr int staged_tail_words = 1024;

/// Depth of the per-thread cp.async ring of sign vectors: 32 KB per block at one tile (4 steps in flight, 64 KB per
/// SM at 2 blocks), 2 steps at two tiles. After the main loop the ring holds the partial sums.
template <int Tiles>
inline constexpr int ring_stages = Tiles == 1 ? 4 : 2;

/// The GEMV's problem list: matrix m owns blocks first_block[m] .. first_block[m + 1] - 1 (first_block[0] = 0) and
/// reads its fold output; n_sums (the fold's grid x) is common to all.
template <class Rows, class Out, int N>
struct gemv_problems {
  Rows rows[N];
  const std::uint32_t* pairs[N];
  const std::uint16_t* tail[N];
  const float* sums[N];
  Out* y[N];
  index_t y_stride[N];
  int first_block[N];
  int count;
};

template <class Rows, class Act, class Out, class Decode, int Warps, int Tiles, int MinBlocks, int N>
__launch_bounds__(Warps * 32, MinBlocks) SAGEPTQ_KERNEL
    void binary_gemv_kernel(const __grid_constant__ gemv_problems<Rows, Out, N> p, int n_sums, int batch) {
  using T = typename operand<Act>::type;
  using decode = Decode;
  static_assert(std::is_same_v<Decode, sign_decode> || (std::is_same_v<T, __half> && Rows::unit_vector_scale),
                "bit_decode needs fp16 operands and no per-vector scale");
  constexpr int block_rows = 16 * Tiles, stages = ring_stages<Tiles>;
  const int m = problem_of_block(p.first_block, p.count);
  const Rows& rows = p.rows[m];
  const std::uint32_t* __restrict__ pairs = p.pairs[m];
  const std::uint16_t* __restrict__ tail = p.tail[m];
  const float* __restrict__ sums = p.sums[m];
  Out* __restrict__ y = p.y[m];
  const index_t y_stride = p.y_stride[m];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
  const index_t n_rows = rows.rows(), row_words = rows.row_words(), vectors = row_words / 4;
  const index_t row0 = static_cast<index_t>(static_cast<int>(blockIdx.x) - p.first_block[m]) * block_rows;

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
  // Sign vectors stream through a ring in shared memory (each thread its own slots: [stage][tile][row][thread]);
  // per-vector scales (q1_0) come one step ahead in registers.
  __shared__ uint4 ring[stages][Tiles][2][Warps * 32];
  // 32-bit vector offsets from each row's start; a vector past the row end reads the row's first one as zeros.
  auto issue = [&](index_t step) {
    const auto v = static_cast<std::uint32_t>(4 * step + c);
    const bool in_row = v < static_cast<std::uint32_t>(vectors);
    const int slot = static_cast<int>(static_cast<std::uint32_t>(step - first) % stages);
#pragma unroll
    for (int t = 0; t < Tiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        copy_async_16(&ring[slot][t][h][threadIdx.x], sign_row[t][h] + 4 * (in_row ? v : 0u), in_row ? 16 : 0);
  };
  std::uint32_t minus_s[Tiles][2];
  auto load_scales = [&](index_t step, std::uint32_t (&scale)[Tiles][2]) {
    const index_t v = 4 * step + c;
#pragma unroll
    for (int t = 0; t < Tiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        if constexpr (Rows::unit_vector_scale)
          scale[t][h] = minus_pair<T>(1.0f);
        else
          scale[t][h] = minus_pair<T>(v < vectors ? rows.vector_scale(row_of[t][h], v) : 0.0f);
  };
  // The weights do not depend on the fold kernel: start streaming them before waiting for it (PDL). One commit group
  // per step, empty ones included, so wait_group counts steps; the last prologue group also carries the salient
  // codes, the fold kernel's sums and the salient activations, so nothing before the main loop waits on memory.
#pragma unroll
  for (int i = 0; i < stages - 1; ++i) {
    if (first + i < last) issue(first + i);
    if (i < stages - 2) copy_async_commit();
  }
  if (first < last) load_scales(first, minus_s);

  // Per-row scalars of this block: loaded into registers now, stored to shared memory after the main loop.
  __shared__ float row_alpha[block_rows], row_salient[block_rows], row_zero[block_rows], row_half[block_rows];
  __shared__ float x_sum[2][max_batch];  // S and T of each batch column
  __shared__ std::uint32_t staged_codes[Rows::has_tail ? staged_code_words : 1];
  const index_t block_end = min(row0 + block_rows, n_rows), my_row = row0 + threadIdx.x;
  const bool row_owner = my_row < block_end;  // block_rows <= threads
  float my_alpha = 0.0f, my_salient = 0.0f, my_zero = 0.0f;
  if (row_owner) my_alpha = rows.row_scale(my_row);
  const index_t ks = rows.tail_cols(), tail_stride = tail_padded(ks);
  index_t code_words = 0;
  const std::uint32_t* codes = nullptr;
  if constexpr (Rows::has_tail) {
    code_words = rows.w.shape.salient_row_words();
    codes = rows.w.salient_codes + row0 * code_words;
    if (ks > 0) {
      if (row_owner) {
        my_salient = rows.salient_scale(my_row);
        my_zero = rows.salient_zero(my_row);
      }
      if ((block_end - row0) * code_words <= staged_code_words) {
        for (index_t i = threadIdx.x; i < (block_end - row0) * code_words; i += blockDim.x)
          copy_async_4(&staged_codes[i], codes + i);
        codes = staged_codes;
      }
    }
  }
#if SAGEPTQ_CUDA_ARCH >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");  // x' and the salient activations are written by fold_kernel
#endif
  // The fold kernel's sums and the salient activations, for the epilogue, in the same group.
  __shared__ float staged_sums[staged_sum_floats];
  __shared__ std::uint32_t staged_tail[Rows::has_tail ? staged_tail_words : 1];
  const float* block_sums = sums;
  if (2 * batch * n_sums <= staged_sum_floats) {
    for (int i = threadIdx.x; i < 2 * batch * n_sums; i += blockDim.x) copy_async_4(&staged_sums[i], sums + i);
    block_sums = staged_sums;
  }
  const std::uint32_t* tail_pairs = reinterpret_cast<const std::uint32_t*>(tail);  // (x[k], x[k + 1]) per word
  if constexpr (Rows::has_tail) {
    if (batch * tail_stride / 2 <= staged_tail_words) {
      for (index_t i = threadIdx.x; i < batch * tail_stride / 2; i += blockDim.x)
        copy_async_4(&staged_tail[i], tail_pairs + i);
      tail_pairs = staged_tail;
    }
  }
  copy_async_commit();

  // x' of batch column g (lanes past the batch load nothing and multiply zeros). A step's x' of one thread is 256
  // contiguous bytes; they are prefetched into L1 as far ahead as the sign ring, so the loads in the loop hit L1.
  const index_t my_column = min(g, batch - 1);
  const uint4* my_pairs = reinterpret_cast<const uint4*>(pairs + my_column * pair_words(row_words));
  const bool my_batch = g < batch;
  auto prefetch_x = [&](index_t step) {
    const index_t v = 4 * step + c;
    if (my_batch && step < last && v < vectors) {
      prefetch_l1(my_pairs + 16 * v);
      prefetch_l1(my_pairs + 16 * v + 8);
    }
  };
#pragma unroll
  for (int i = 0; i < stages - 1; ++i) prefetch_x(first + i);

  float acc[Tiles][decode::classes][4] = {};
  for (index_t step = first; step < last; ++step) {
    copy_async_wait<stages - 2>();  // this step's group has landed
    uint4 words[Tiles][2];
    const int slot = static_cast<int>(static_cast<std::uint32_t>(step - first) % stages);
#pragma unroll
    for (int t = 0; t < Tiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h) words[t][h] = ring[slot][t][h][threadIdx.x];
    if (step + stages - 1 < last) issue(step + stages - 1);  // into the slot read one step ago
    copy_async_commit();
    prefetch_x(step + stages - 1);
    std::uint32_t next_s[Tiles][2];
    if (!Rows::unit_vector_scale && step + 1 < last) load_scales(step + 1, next_s);
    // Past the last vector the signs are zero-filled: bit_decode makes A = 0 of them, sign_decode gets a zero scale,
    // so B may be any finite values there (the loads read the last vector again). Lanes past the batch load nothing:
    // letting them load too (their outputs are never stored) cost 1.6x at batch 1, in L1 wavefronts.
    const index_t v = 4 * step + c, v_read = min(v, vectors - 1);
    std::uint32_t minus[Tiles][2];
#pragma unroll
    for (int t = 0; t < Tiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h) minus[t][h] = v < vectors ? minus_s[t][h] : 0u;
#pragma unroll
    for (int q = 0; q < 2; ++q) {  // word pair (2q, 2q + 1) of the vector
      std::uint32_t shifted[Tiles][2][2];
#pragma unroll
      for (int t = 0; t < Tiles; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int u = 0; u < 2; ++u) shifted[t][h][u] = decode::shifted((&words[t][h].x)[2 * q + u]);
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // slots 8 half .. 8 half + 7: 64 bytes of x', loads issued first
        uint4 b[4];
        const uint4* from = my_pairs + (2 * v_read + q) * 8 + 4 * half;
#pragma unroll
        for (int k = 0; k < 4; ++k) b[k] = my_batch ? __ldg(from + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int s = 8 * half + i;
          const std::uint32_t b0 = (&b[i / 2].x)[2 * (i % 2)], b1 = (&b[i / 2].x)[2 * (i % 2) + 1];
#pragma unroll
          for (int t = 0; t < Tiles; ++t) {
            const std::uint32_t w00 = (&words[t][0].x)[2 * q], w01 = (&words[t][0].x)[2 * q + 1];
            const std::uint32_t w10 = (&words[t][1].x)[2 * q], w11 = (&words[t][1].x)[2 * q + 1];
            const std::uint32_t a[4] = {decode::operand(w00, shifted[t][0][0], s, minus[t][0]),
                                        decode::operand(w10, shifted[t][1][0], s, minus[t][1]),
                                        decode::operand(w01, shifted[t][0][1], s, minus[t][0]),
                                        decode::operand(w11, shifted[t][1][1], s, minus[t][1])};
            mma_16816<T>(acc[t][decode::class_of(s)], a, b0, b1);
          }
        }
      }
    }
    if (!Rows::unit_vector_scale && step + 1 < last)
#pragma unroll
      for (int t = 0; t < Tiles; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h) minus_s[t][h] = next_s[t][h];
  }

  // Epilogue. Per-row scalars to shared memory (the zero split into an integer, which the tail's levels subtract
  // exactly, and a half for symmetric grids); S and T of each batch column from the fold kernel's block sums.
  copy_async_wait<0>();  // the staged codes, sums and activations (and no copy may outlive the block)
  if (row_owner) {
    row_alpha[threadIdx.x] = my_alpha;
    row_salient[threadIdx.x] = my_salient;
    row_zero[threadIdx.x] = floorf(my_zero);
    row_half[threadIdx.x] = my_zero - floorf(my_zero);
  }
  __syncthreads();  // the ring is free; the scalars and every thread's staged copies are visible
  using warp_reduce = cub::WarpReduce<float>;
  __shared__ typename warp_reduce::TempStorage reduce_storage[Warps];
  for (int job = warp; job < 2 * batch; job += Warps) {  // job b: S of column b; batch + b: T of column b
    float partial = 0.0f;
    for (int i = lane; i < n_sums; i += 32) partial += block_sums[job * n_sums + i];
    const float total = warp_reduce(reduce_storage[warp]).Sum(partial);
    if (lane == 0) x_sum[job / batch][job % batch] = total;
    __syncwarp();  // reduce_storage is reused by the next job
  }

  // The salient tail: 16 codes of 16 rows per mma, warps taking turns.
  float tail_acc[Tiles][4] = {};
  if constexpr (Rows::has_tail) {
    const std::uint32_t* my_tail = tail_pairs + my_column * tail_stride / 2;
    const int bits = rows.w.shape.salient_bits;
    for (index_t k0 = 16 * warp; k0 < tail_stride; k0 += 16 * Warps) {
      const std::uint32_t b0 = my_batch ? my_tail[(k0 + 2 * c) / 2] : 0u,
                          b1 = my_batch ? my_tail[(k0 + 2 * c + 8) / 2] : 0u;
#pragma unroll
      for (int t = 0; t < Tiles; ++t) {
        std::uint32_t a[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // a0: row g, k0 + 2c; a1: row g + 8; a2, a3: k0 + 2c + 8
          // Rows past the end read the block's last row (their sums are never stored).
          const int local = min(16 * t + g + 8 * (i % 2), static_cast<int>(block_end - row0) - 1);
          a[i] = level_pair<T>(codes + static_cast<index_t>(local) * code_words, code_words, k0 + 2 * c + 8 * (i / 2),
                               bits, row_zero[local]);
        }
        mma_16816<T>(tail_acc[t], a, b0, b1);
      }
    }
  }

  // Partial sums per warp, in the ring's memory: [warp][tile][row][batch column], binary then salient.
  auto* red = reinterpret_cast<float(*)[Tiles][16][max_batch]>(&ring[0][0][0][0]);
  auto* red_tail = red + Warps;
  static_assert(sizeof(ring) >= 2 * Warps * Tiles * 16 * max_batch * sizeof(float), "the ring holds the sums");
#pragma unroll
  for (int t = 0; t < Tiles; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // accumulator i: row g + 8 (i / 2), batch column 2c + i % 2
      red[warp][t][g + 8 * (i / 2)][2 * c + i % 2] = decode::combine(acc[t], i);
      red_tail[warp][t][g + 8 * (i / 2)][2 * c + i % 2] = tail_acc[t][i];
    }
  __syncthreads();

  // Warp w finishes the block's rows w, w + Warps, ...: lane b owns batch column b.
  for (int local = warp; local < block_rows; local += Warps) {
    const index_t r = row0 + local;
    if (r >= n_rows || lane >= batch) continue;
    float binary = 0.0f, salient = 0.0f;
#pragma unroll
    for (int w = 0; w < Warps; ++w) {
      binary += red[w][local / 16][local % 16][lane];
      salient += red_tail[w][local / 16][local % 16][lane];
    }
    if constexpr (decode::needs_sum) binary -= x_sum[0][lane];
    y[lane * y_stride + r] =
        from_float<Out>(row_alpha[local] * binary + row_salient[local] * (salient - row_half[local] * x_sum[1][lane]));
  }
}

}  // namespace cuda::gemv::detail
SAGEPTQ_NAMESPACE_END
