#pragma once
/// @file binary_planes.cuh
/// Device side of the sage GEMV on *binary* tensor cores: the raw sign words are the A operand of
/// mma.m16n8k256.b1.and.popc (4096 weights per instruction, no decode), and the activations are bit planes.
///
/// Why: bench/mma_throughput_cuda.cu measured BMMA.168256.AND.POPC native on the H100 at the issue rate of
/// HMMA.16816 (0.67 mma per SM per clock), i.e. 16x the weights per tensor instruction, and it needs no LOP3 per
/// register; the fp16 kernel (binary_mma.cuh) was bound by its 4 LOP3 per HMMA on the ALU pipe. (xor.popc and the s4
/// shapes are emulated there, 6x and 50x slower: not used.)
///
/// Numerics (the "activation planes" mode). x' = beta * x (float, stored order, zero past the binarized columns) is
/// quantized per block of plane_block_cols = 512 stored columns: m = max |x'|, d = m / Q, q = round_half_even(x' *
/// (Q / m)), Q = 2^(Bits-1) - 1 (Bits = 16: close to fp16 operands; 8: the CPU VNNI path's grid), so |x' - d q| <=
/// d (1/2 + Q 2^-20). Bit p of q's two's complement is plane p (weight 2^p, the top one -2^(Bits-1)). With b the
/// sign bits (s = 2 b - 1), per block sum_j s_j q_j = 2 P - S, P = sum_p w_p popc(b & plane_p) (exact in int32) and
/// S = sum_j q_j (from the fold), so y = alpha sum_blocks d (2 P - S) in fp32 (+ the salient tail, as in
/// binary_mma.cuh): against the exact GEMV on the dequantized x^ = d q the error is an fp32 accumulation error,
/// and x^ itself adds at most |alpha| sum_j d_block(j) (1/2 + Q 2^-20).
///
/// Layouts (workspace, per batch column): planes[block][plane][16 words] (the 512 columns of a block = one K step of
/// a warp: 4 lanes x 16-byte sign vectors), the block scales d[block], the salient activations and the fold's block
/// sums as in binary_mma.cuh. mma operands of thread (g = lane / 4, c = lane % 4) for word pair (2q, 2q + 1) of its
/// sign vector: A = words 2q, 2q + 1 of rows g and g + 8 (k blocks c and 4 + c of the mma), B = the same two words of
/// plane 8 h + g (batch column n = g of the mma is a plane), so D column 2c + i is plane 8 h + 2c + i.
/// Threading: one launch of plane_fold_kernel, then one of plane_gemv_kernel, on the caller's stream, linked by
/// programmatic dependent launch (the fold also to the kernel before it where gemv.cuh's rule allows; each kernel
/// writes memory only after its griddepcontrol.wait).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "../config.cuh"
#include "binary_mma.cuh"
#include "common.cuh"

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda::gemv::detail {

inline constexpr int plane_block_cols = 512;  ///< one scale d per this many stored columns: one warp K step
inline constexpr int plane_block_words = plane_block_cols / 32;

/// The largest |q| of Bits-bit activation planes.
template <int Bits>
inline constexpr int plane_max_q = (1 << (Bits - 1)) - 1;

/// Activation blocks of a sign row (= K steps of the GEMV; the last one zero-padded).
__host__ __device__ inline index_t plane_blocks(index_t row_words) {
  return (row_words + plane_block_words - 1) / plane_block_words;
}
/// 32-bit words of the planes of one batch column.
__host__ __device__ inline index_t plane_words(index_t row_words, int bits) {
  return plane_blocks(row_words) * bits * plane_block_words;
}

/// What plane_fold_kernel writes for matrix z (grid z).
template <class Rows, int N>
struct plane_fold_problems {
  Rows rows[N];
  std::uint32_t* planes[N];
  float* scales[N];
  std::uint16_t* tail[N];
  float* sums[N];
};

/// Waits for the kernel before this one on the stream (programmatic dependent launch: a no-op without it).
__device__ __forceinline__ void grid_dependency_wait() {
#if SAGEPTQ_CUDA_ARCH >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// x' of batch column blockIdx.y as activation planes: block x < plane_blocks quantizes activation block x, a
/// thread per column (the gathers of x run in parallel), warp w building word w of each plane with one __ballot_sync
/// per plane; blocks past those round the salient activations to the operand type, a thread each. Per block:
/// sums[0][b][x] = d S, sums[1][b][x] = the tail sum T (binary_mma.cuh's layout, added by the GEMV in a fixed order:
/// deterministic). Grid x is the largest of the matrices' (each matrix splits it by its own block count).
/// Launched with programmatic dependent launch (run()): everything that reads only the packed weights (the source
/// column, the group table and the group scale) runs before griddepcontrol.wait, so it overlaps the previous
/// kernel on the stream; x is read and the workspace written after it (the previous kernel may write x or read the
/// workspace, but must not write the packed weights: run()'s contract).
template <class Rows, class Act, int Bits, int N>
__launch_bounds__(plane_block_cols) SAGEPTQ_KERNEL
    void plane_fold_kernel(const __grid_constant__ plane_fold_problems<Rows, N> p, const Act* __restrict__ x,
                           index_t x_stride) {
#if SAGEPTQ_CUDA_ARCH >= 900
  asm volatile("griddepcontrol.launch_dependents;");  // let the GEMV start streaming weights now
#endif
  static_assert(Bits == 8 || Bits == 16, "activation planes come in halves of 8 (the mma's n)");
  using T = typename operand<Act>::type;
  constexpr int warps = plane_block_cols / 32;
  const int z = N == 1 ? 0 : static_cast<int>(blockIdx.z);
  const Rows& rows = p.rows[z];
  const index_t blocks = plane_blocks(rows.row_words()), b = blockIdx.y;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const Act* row = x + b * x_stride;
  __shared__ float warp_max[warps];
  __shared__ int warp_sum[warps];
  float scaled_sum = 0.0f, tail_sum = 0.0f;
  __shared__ std::uint32_t group_offset[plane_block_cols];
  __shared__ float group_scale[plane_block_cols];
  if (const index_t block = blockIdx.x; block < blocks) {  // uniform per block
    const index_t j = block * plane_block_cols + threadIdx.x;
    // The weights' part of the fold (group table staged in shared memory, source column) before griddepcontrol.wait,
    // so it overlaps the previous kernel: one round trip to the cold weight metadata instead of the binary search's
    // dependent loads and then the scale's (2026-11-27c), all of it before the wait (2026-11-27d).
    const auto groups = rows.stage_groups(group_offset, group_scale);
    const index_t column = rows.fold_column(j);
    __syncthreads();
    const float scale = rows.fold_scale(j, groups);
    grid_dependency_wait();
    const float v = column < 0 ? 0.0f : scale * to_float(row[column]);  // fold_value's operations: the same bits
    float m = fabsf(v);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    if (lane == 0) warp_max[warp] = m;
    __syncthreads();
#pragma unroll
    for (int w = 0; w < warps; ++w) m = fmaxf(m, warp_max[w]);
    constexpr float q_max = static_cast<float>(plane_max_q<Bits>);
    const float inverse = m > 0.0f ? __fdiv_rn(q_max, m) : 0.0f, d = __fdiv_rn(m, q_max);
    const int q = __float2int_rn(__fmul_rn(v, inverse));
    std::uint32_t mine = 0;  // lane p < Bits: word `warp` of plane p
#pragma unroll
    for (int plane = 0; plane < Bits; ++plane) {
      const std::uint32_t word = __ballot_sync(0xffffffffu, (q >> plane) & 1);
      if (lane == plane) mine = word;
    }
    if (lane < Bits)
      p.planes[z][b * plane_words(rows.row_words(), Bits) + (block * Bits + lane) * plane_block_words + warp] = mine;
    int s = q;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) warp_sum[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      int total = 0;  // |S| < 2^24: exact in float
#pragma unroll
      for (int w = 0; w < warps; ++w) total += warp_sum[w];
      p.scales[z][b * blocks + block] = d;
      scaled_sum = d * static_cast<float>(total);
    }
  } else {
    const auto padded = static_cast<std::uint32_t>(tail_padded(rows.tail_cols())),
               tail_cols = static_cast<std::uint32_t>(rows.tail_cols());
    const auto k = static_cast<std::uint32_t>((block - blocks) * plane_block_cols + threadIdx.x);
    const index_t column = k < tail_cols ? rows.tail_column(k) : -1;  // the permutation read before the wait
    grid_dependency_wait();
    const float xk = column < 0 ? 0.0f : to_float(row[column]);
    if (k < padded) {
      const std::uint16_t v = operand_bits<T>(xk);
      p.tail[z][b * padded + k] = v;
      tail_sum = to_float(bits_as<T>(v));
    }
    using block_reduce = cub::BlockReduce<float, plane_block_cols>;
    __shared__ typename block_reduce::TempStorage storage;
    tail_sum = block_reduce(storage).Sum(tail_sum);  // valid in thread 0
  }
  if (threadIdx.x == 0) {
    p.sums[z][b * gridDim.x + blockIdx.x] = scaled_sum;
    p.sums[z][(gridDim.y + b) * gridDim.x + blockIdx.x] = tail_sum;
  }
}

/// A 32-bit shared-memory load that ptxas keeps as one (volatile: not merged into a 16-byte load, which would bring
/// back the register moves the caller avoids), in order with the cp.async asm around it.
__device__ __forceinline__ std::uint32_t load_shared_32(const std::uint32_t* p) {
  std::uint32_t v;
  asm volatile("ld.volatile.shared.b32 %0, [%1];"
               : "=r"(v)
               : "r"(static_cast<std::uint32_t>(__cvta_generic_to_shared(p))));
  return v;
}

/// d = a b + c on binary tensor cores: popcounts of (row of A) & (column of B) over 256 k, added to c.
__device__ __forceinline__ void mma_b1_and_popc(std::uint32_t (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                                std::uint32_t b1, const std::uint32_t (&c)[4]) {
  asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
}

/// level_pair for 4-bit codes: codes k and k + 1 (k even) are one byte of the row's stream; each goes into the
/// mantissa of the operand type's magic number m (fp16 1024, bf16 128: ulp 1), and (m + q) - (m + zero) is exact,
/// so the result has the bits of level_pair's (q - zero, rounded once: exactly). bias = level_bias_pair(zero).
template <class T>
__device__ __forceinline__ std::uint32_t level_bias_pair(float zero) {
  const std::uint32_t h = operand_bits<T>((std::is_same_v<T, __half> ? 1024.0f : 128.0f) + zero);
  return h | (h << 16);
}
template <class T>
__device__ __forceinline__ std::uint32_t level_pair4(const std::uint32_t* codes, index_t words, index_t k,
                                                     std::uint32_t bias) {
  const index_t w = k / 8;
  const std::uint32_t word = w < words ? codes[w] : 0u;
  const std::uint32_t byte = word >> (4 * (static_cast<std::uint32_t>(k) % 8));
  const std::uint32_t pair = (byte & 0x0fu) | ((byte & 0xf0u) << 12);
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __hsub2(__halves2half2(__ushort_as_half(static_cast<std::uint16_t>(0x6400u | (pair & 0xffffu))),
                                             __ushort_as_half(static_cast<std::uint16_t>(0x6400u | (pair >> 16)))),
                              *reinterpret_cast<const __half2*>(&bias));
    return *reinterpret_cast<const std::uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v =
        __hsub2(__halves2bfloat162(__ushort_as_bfloat16(static_cast<std::uint16_t>(0x4300u | (pair & 0xffffu))),
                                   __ushort_as_bfloat16(static_cast<std::uint16_t>(0x4300u | (pair >> 16)))),
                *reinterpret_cast<const __nv_bfloat162*>(&bias));
    return *reinterpret_cast<const std::uint32_t*>(&v);
  }
}

/// The GEMV's problem list (as gemv_problems in binary_mma.cuh, with the planes and block scales for x').
template <class Rows, class Out, int N>
struct plane_gemv_problems {
  Rows rows[N];
  const std::uint32_t* planes[N];
  const float* scales[N];
  const std::uint16_t* tail[N];
  const float* sums[N];
  Out* y[N];
  index_t y_stride[N];
  int first_block[N];
  int count;
};

/// Bytes of plane_gemv_kernel's sign ring (dynamic shared memory): Stages steps of 16 bytes per thread, row and tile.
template <int Warps, int Tiles, int Stages>
inline constexpr int plane_ring_bytes = Stages * Tiles * 2 * Warps * 32 * 16;

/// Batch: the largest batch this instance serves (1, 2, 4 or 8; `batch` <= Batch at run time). The block structure,
/// the sign ring, the staging and the epilogue are binary_gemv_kernel's; the main loop is 2 b1 mmas per word pair,
/// batch column and plane half, and a per-step (= per activation block) flush: the planes' popcounts weighted in
/// int32, summed over the 4 lanes of a row (exact: |P| < 2^24; a reduce-scatter, each lane ending with one row's P),
/// then d P added in fp32.
/// Stages: depth of the sign ring, in dynamic shared memory (plane_ring_bytes; the launch raises the 48 KB limit):
/// Stages - 1 steps of each warp are issued before griddepcontrol.wait, so with Stages - 1 >= the steps of a warp
/// (4096 x 14336: 4) the whole tile streams while plane_fold_kernel runs.
template <class Rows, class Act, class Out, int Bits, int Batch, int Warps, int Tiles, int Stages, int MinBlocks, int N>
__launch_bounds__(Warps * 32, MinBlocks) SAGEPTQ_KERNEL
    void plane_gemv_kernel(const __grid_constant__ plane_gemv_problems<Rows, Out, N> p, int n_sums, int batch,
                           bool trigger_at_wait) {
#if SAGEPTQ_CUDA_ARCH >= 900
  // The next call's plane_fold_kernel (launched with PDL) may start once every block has passed this: it reads only
  // the packed weights before its griddepcontrol.wait, which returns once this grid has completed, so it never
  // writes the workspace or reads x under this kernel. At the start where the grid is > 1 block per SM (the fold's
  // blocks then queue for SMs early); after the wait below where it is one wave of one block per SM (trigger_at_wait:
  // the next GEMV's blocks fit beside these and would stream their weights into this grid's critical path).
  if (!trigger_at_wait) asm volatile("griddepcontrol.launch_dependents;");
#endif
  using T = typename operand<Act>::type;
  static_assert(Rows::unit_vector_scale && Rows::has_tail, "activation planes implement sage rows");
  static_assert(Stages >= 2, "the ring needs a slot to read and one to fill");
  constexpr int block_rows = 16 * Tiles, stages = Stages, halves = Bits / 8;
  const int m = problem_of_block(p.first_block, p.count);
  const Rows& rows = p.rows[m];
  const std::uint16_t* __restrict__ tail = p.tail[m];
  const float* __restrict__ sums = p.sums[m];
  Out* __restrict__ y = p.y[m];
  const index_t y_stride = p.y_stride[m];
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32), g = lane / 4,
            c = lane % 4;
  const index_t n_rows = rows.rows(), row_words = rows.row_words(), vectors = row_words / 4;
  const index_t row0 = static_cast<index_t>(static_cast<int>(blockIdx.x) - p.first_block[m]) * block_rows;

  const std::uint32_t* sign_row[Tiles][2];
#pragma unroll
  for (int t = 0; t < Tiles; ++t)
#pragma unroll
    for (int h = 0; h < 2; ++h) sign_row[t][h] = rows.w.signs + min(row0 + 16 * t + g + 8 * h, n_rows - 1) * row_words;
  // Warp w takes K steps w, w + Warps, ...: at any time the block's warps read consecutive 64-byte pieces of each
  // row (whole 128-byte lines), not 8 separate streams per row.
  const index_t steps = plane_blocks(row_words), my_steps = steps > warp ? (steps - warp + Warps - 1) / Warps : 0;
  auto step_of = [&](index_t i) { return warp + i * Warps; };
  extern __shared__ uint4 plane_ring_memory[];
  auto& ring = *reinterpret_cast<uint4(*)[stages][Tiles][2][Warps * 32]>(plane_ring_memory);
  auto issue = [&](index_t i) {
    const auto v = static_cast<std::uint32_t>(4 * step_of(i) + c);
    const bool in_row = v < static_cast<std::uint32_t>(vectors);
    const int slot = static_cast<int>(static_cast<std::uint32_t>(i) % stages);
#pragma unroll
    for (int t = 0; t < Tiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        copy_async_16(&ring[slot][t][h][threadIdx.x], sign_row[t][h] + 4 * (in_row ? v : 0u), in_row ? 16 : 0);
  };
#pragma unroll
  for (int i = 0; i < stages - 1; ++i) {
    if (i < my_steps) issue(i);
    if (i < stages - 2) copy_async_commit();
  }

  __shared__ float row_alpha[block_rows], row_salient[block_rows], row_zero[block_rows], row_half[block_rows];
  __shared__ float x_sum[2][max_batch];  // sum_blocks d S and T of each batch column
  __shared__ std::uint32_t staged_codes[staged_code_words];
  const index_t block_end = min(row0 + block_rows, n_rows), my_row = row0 + threadIdx.x;
  const bool row_owner = my_row < block_end;  // block_rows <= threads
  float my_alpha = 0.0f, my_salient = 0.0f, my_zero = 0.0f;
  if (row_owner) my_alpha = rows.row_scale(my_row);
  const index_t ks = rows.tail_cols(), tail_stride = tail_padded(ks);
  const index_t code_words = rows.w.shape.salient_row_words();
  const std::uint32_t* codes = rows.w.salient_codes + row0 * code_words;
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
  grid_dependency_wait();  // the planes, scales and salient activations: plane_fold_kernel
#if SAGEPTQ_CUDA_ARCH >= 900
  if (trigger_at_wait) asm volatile("griddepcontrol.launch_dependents;");
#endif
  __shared__ float staged_sums[staged_sum_floats];
  __shared__ std::uint32_t staged_tail[staged_tail_words];
  const float* block_sums = sums;
  if (2 * batch * n_sums <= staged_sum_floats) {
    for (int i = threadIdx.x; i < 2 * batch * n_sums; i += blockDim.x) copy_async_4(&staged_sums[i], sums + i);
    block_sums = staged_sums;
  }
  const std::uint32_t* tail_pairs = reinterpret_cast<const std::uint32_t*>(tail);  // (x[k], x[k + 1]) per word
  if (batch * tail_stride / 2 <= staged_tail_words) {
    for (index_t i = threadIdx.x; i < batch * tail_stride / 2; i += blockDim.x)
      copy_async_4(&staged_tail[i], tail_pairs + i);
    tail_pairs = staged_tail;
  }
  copy_async_commit();

  // Plane words of (batch column b, half h) for this thread at a step: one 16-byte piece of the 512 bytes a warp
  // reads (coalesced).
  // 32-bit offsets (the workspace is far below 16 GB): fewer 64-bit multiplies per batch column.
  const auto column_vectors = static_cast<std::uint32_t>(plane_words(row_words, Bits) / 4);
  const uint4* my_planes = reinterpret_cast<const uint4*>(p.planes[m]) + (g * plane_block_words + 4 * c) / 4;
  const float* __restrict__ scales = p.scales[m];
  const auto n_steps = static_cast<std::uint32_t>(steps);
  auto plane_at = [&](int b, index_t step, int h) {
    return my_planes + (static_cast<std::uint32_t>(b) * column_vectors +
                        (static_cast<std::uint32_t>(step) * Bits + 8 * h) * (plane_block_words / 4));
  };

  // Weights of this thread's D columns 2c and 2c + 1 (planes 8 h + 2c + i); the top plane is the sign (negative).
  std::int32_t weight[halves][2];
#pragma unroll
  for (int h = 0; h < halves; ++h)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int plane = 8 * h + 2 * c + i;
      weight[h][i] = plane == Bits - 1 ? -(1 << plane) : 1 << plane;
    }
  // Sum over blocks of d P of one row per batch column: the 4 lanes of a row reduce-scatter their int32 partials
  // (2026-11-27e), lane c keeping row `mine_row` of tile `mine_tile` (two tiles: tile c & 1, row g + 8 (c >> 1); one:
  // row g + 8 (c & 1), lanes c and c ^ 2 alike). Was every lane summing every (tile, row) with two shuffles each.
  // At batch 1 every lane still sums every (tile, row) into acc_one, as before (2026-11-27e, H100: run() at 4096 x
  // 14336 was 7.97 us with the reduce-scatter against 7.80 without, the kernel alone the same).
  constexpr bool scatter = Batch > 1;
  float acc[Batch] = {};
  float acc_one[scatter ? 1 : Tiles][2] = {};
  const int mine_tile = Tiles == 2 ? (c & 1) : 0, mine_row = Tiles == 2 ? (c >> 1) : (c & 1);
  constexpr std::uint32_t zero[4] = {0, 0, 0, 0};
  // P of this lane's (tile, row) from its partials (Batch > 1): exact (integer sums in any order, |P| < 2^24); 3
  // shuffles per batch column and step at two tiles (were 8), 2 at one (were 4).
  auto scatter_total = [&](const std::int32_t(&partial)[Tiles][2]) {
    const bool odd = (c & 1) != 0;
    if constexpr (Tiles == 2) {
      const bool high = (c & 2) != 0;
      const std::int32_t k0 = (odd ? partial[1][0] : partial[0][0]) +
                              __shfl_xor_sync(0xffffffffu, odd ? partial[0][0] : partial[1][0], 1),
                         k1 = (odd ? partial[1][1] : partial[0][1]) +
                              __shfl_xor_sync(0xffffffffu, odd ? partial[0][1] : partial[1][1], 1);
      return (high ? k1 : k0) + __shfl_xor_sync(0xffffffffu, high ? k0 : k1, 2);
    } else {
      const std::int32_t k = (odd ? partial[0][1] : partial[0][0]) +
                             __shfl_xor_sync(0xffffffffu, odd ? partial[0][0] : partial[0][1], 1);
      return k + __shfl_xor_sync(0xffffffffu, k, 2);
    }
  };
  if constexpr (!scatter) {  // batch 1
    // The planes and scale of step i + 1 are loaded during step i, into registers, and step i's plane lines are
    // prefetched into L1 after its work (2026-11-27g; was an L1 prefetch of the planes as far ahead as the ring and
    // the scale loaded at its step, an L2 round trip under the next launch's weight stream in every step). H100 run()
    // at batch 1, same call: 7.75 -> 7.00 us at 4096 x 14336, 18.02 -> 17.23 at 8192 x 28672. The trailing prefetch
    // (of lines already loaded) is measured, not understood: without it 7.70 / 17.76, at the step's start 7.13 /
    // 17.22; two steps ahead 7.67 / 17.89; the scale prefetched into L1 as well 11.54 / 31.65.
    uint4 next_plane[halves];
    float next_d = 0.0f;
    auto load_step = [&](index_t i) {  // past the last step: its planes again, unused
      const index_t step = step_of(min(i, my_steps - 1));
#pragma unroll
      for (int h = 0; h < halves; ++h) next_plane[h] = __ldg(plane_at(0, step, h));
      next_d = __ldg(scales + static_cast<std::uint32_t>(step));
    };
    if (my_steps > 0) load_step(0);
    for (index_t i = 0; i < my_steps; ++i) {
      copy_async_wait<stages - 2>();  // this step's group has landed
      uint4 words[Tiles][2];
      const int slot = static_cast<int>(static_cast<std::uint32_t>(i) % stages);
#pragma unroll
      for (int t = 0; t < Tiles; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h) words[t][h] = ring[slot][t][h][threadIdx.x];
      if (i + stages - 1 < my_steps) issue(i + stages - 1);  // into the slot read one step ago
      copy_async_commit();
      // Past the row end the signs are zero-filled (A = 0) and the planes are zero: nothing to mask.
#pragma unroll
      for (int b = 0; b < Batch; ++b) {  // Batch == 1 here
        if (b >= batch) break;
        uint4 plane[halves];
#pragma unroll
        for (int h = 0; h < halves; ++h) plane[h] = next_plane[h];
        const float d = next_d;
        load_step(i + 1);
        std::int32_t partial[Tiles][2] = {};
#pragma unroll
        for (int h = 0; h < halves; ++h)
#pragma unroll
          for (int t = 0; t < Tiles; ++t) {
            const std::uint32_t a0[4] = {words[t][0].x, words[t][1].x, words[t][0].y, words[t][1].y},
                                a1[4] = {words[t][0].z, words[t][1].z, words[t][0].w, words[t][1].w};
            std::uint32_t count[4];
            mma_b1_and_popc(count, a0, plane[h].x, plane[h].y, zero);
            mma_b1_and_popc(count, a1, plane[h].z, plane[h].w, count);
            // counts <= 512, weights <= 2^15: |partial| < 2^26
            partial[t][0] += static_cast<std::int32_t>(count[0]) * weight[h][0] +
                             static_cast<std::int32_t>(count[1]) * weight[h][1];
            partial[t][1] += static_cast<std::int32_t>(count[2]) * weight[h][0] +
                             static_cast<std::int32_t>(count[3]) * weight[h][1];
          }
        // P of each (tile, row), summed over its 4 lanes in every lane (exact: integers, |P| < 2^24).
#pragma unroll
        for (int t = 0; t < Tiles; ++t)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            std::int32_t total = partial[t][r];
            total += __shfl_xor_sync(0xffffffffu, total, 1);
            total += __shfl_xor_sync(0xffffffffu, total, 2);
            acc_one[t][r] = fmaf(d, static_cast<float>(total), acc_one[t][r]);
          }
      }
#pragma unroll
      for (int h = 0; h < halves; ++h) prefetch_l1(plane_at(0, step_of(i), h));  // see above
    }
  } else {
    // Batch > 1 (2026-11-27f). (1) The mma A quads {row g, row g + 8, row g, row g + 8} of each tile and word pair
    // are read straight into their registers by 32-bit shared loads, once per step for every batch column: from
    // 16-byte loads ptxas rebuilt them with register moves before every mma (~29 per batch column and step at
    // batch 8). (2) The plane words and scale are software-pipelined one batch column ahead: column b + 1's (or the
    // next step's column 0's) loads go out before column b's mmas, into the other of two register sets (ping-pong,
    // no copies), so their L2 latency hides behind column b's work instead of stalling its first mma. (3) The
    // plane weights are applied as P = sum_h (n_0 + f_h n_1) 2^(8 h) 2^(2 c) (f_h = 2, or -2 for the top plane;
    // n_i: the popcount of D column 2c + i), the same integer as sum_h (n_0 w_h0 + n_1 w_h1) in 4 instead of ~6
    // integer instructions per row and tile (except at batch 2, below): the same P, so the same I2F and FFMA, the
    // same bits. (4) No L1 prefetch of the planes. ptxas -v (sm_90, bench build, two tiles, batch 2 /
    // 4 / 8): 93 / 104 / 106 registers (were 106 / 108 / 112), no spills.
    // One batch column's planes (half h at + 8 h plane_block_words / 4) and scale, at plane_at's addresses.
    auto load_column = [&](const uint4* column_planes, const float* column_scale, uint4(&plane)[halves], float& d) {
#pragma unroll
      for (int h = 0; h < halves; ++h) plane[h] = __ldg(column_planes + 8 * h * (plane_block_words / 4));
      d = __ldg(column_scale);
    };
    // Two integer-exact codings, chosen per instance by timings (2026-11-27f; the rest of the loop is the same, ptxas
    // schedules each instance differently): per-step base addresses (column b + 1's planes and scale from the step's
    // column 0) at batch 4, the per-plane weights (as at batch 1) at batch 2, neither at batch 8. H100 run(), 4096 /
    // 8192 rows: batch 4 11.92 / 24.80 us against 12.44 / 25.78 with neither, batch 2 8.75 / 20.26 against 9.02 /
    // 20.86, batch 8 19.18 / 36.19 against 19.25 / 36.18 (H200, the alternatives one at a time, gave the same picks).
    constexpr bool step_base = Batch == 4, plane_weights = Batch == 2;
    std::int32_t odd_factor[halves];
#pragma unroll
    for (int h = 0; h < halves; ++h) odd_factor[h] = 8 * h + 2 * c + 1 == Bits - 1 ? -2 : 2;
    const std::int32_t lane_weight = 1 << (2 * c);
    uint4 plane[2][halves];  // batch column b's in set b % 2
    float d[2] = {0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < halves; ++h) plane[1][h] = make_uint4(0, 0, 0, 0);
    if (my_steps > 0)
      load_column(plane_at(0, step_of(0), 0), scales + static_cast<std::uint32_t>(step_of(0)), plane[0], d[0]);
    for (index_t i = 0; i < my_steps; ++i) {
      copy_async_wait<stages - 2>();  // this step's group has landed
      const int slot = static_cast<int>(static_cast<std::uint32_t>(i) % stages);
      std::uint32_t a[Tiles][2][4];
#pragma unroll
      for (int t = 0; t < Tiles; ++t)
#pragma unroll
        for (int q = 0; q < 2; ++q)
#pragma unroll
          for (int r = 0; r < 4; ++r)
            a[t][q][r] = load_shared_32(reinterpret_cast<const std::uint32_t*>(&ring[slot][t][r % 2][threadIdx.x]) +
                                        2 * q + r / 2);
      if (i + stages - 1 < my_steps) issue(i + stages - 1);  // into the slot read one step ago
      copy_async_commit();
      const index_t step = step_of(i), next_step = step_of(min(i + 1, my_steps - 1));
      const uint4 *step_planes = plane_at(0, step, 0), *next_planes = plane_at(0, next_step, 0);
      const float *step_scales = scales + static_cast<std::uint32_t>(step),
                  *next_scales = scales + static_cast<std::uint32_t>(next_step);
      // Past the row end the signs are zero-filled (A = 0) and the planes are zero: nothing to mask.
#pragma unroll
      for (int b = 0; b < Batch; ++b) {
        if (b >= batch) break;
        const int now = b % 2, ahead = 1 - now;
        // Unpredicated (a predicated load must keep the old registers: more moves): after the last step this
        // reloads its column 0, unused.
        const bool more = b + 1 < batch;
        if constexpr (step_base) {
          load_column(more ? step_planes + static_cast<std::uint32_t>(b + 1) * column_vectors : next_planes,
                      more ? step_scales + static_cast<std::uint32_t>(b + 1) * n_steps : next_scales, plane[ahead],
                      d[ahead]);
        } else {
          load_column(plane_at(more ? b + 1 : 0, more ? step : next_step, 0),
                      scales + (static_cast<std::uint32_t>(more ? b + 1 : 0) * n_steps +
                                static_cast<std::uint32_t>(more ? step : next_step)), plane[ahead], d[ahead]);
        }
        std::uint32_t count[halves][Tiles][4];
#pragma unroll
        for (int h = 0; h < halves; ++h)
#pragma unroll
          for (int t = 0; t < Tiles; ++t) {
            mma_b1_and_popc(count[h][t], a[t][0], plane[now][h].x, plane[now][h].y, zero);
            mma_b1_and_popc(count[h][t], a[t][1], plane[now][h].z, plane[now][h].w, count[h][t]);
          }
        std::int32_t partial[Tiles][2];
        if constexpr (plane_weights) {
#pragma unroll
          for (int t = 0; t < Tiles; ++t)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              partial[t][r] = 0;
#pragma unroll
              for (int h = 0; h < halves; ++h)
                partial[t][r] += static_cast<std::int32_t>(count[h][t][2 * r]) * weight[h][0] +
                                 static_cast<std::int32_t>(count[h][t][2 * r + 1]) * weight[h][1];
            }
        } else {
#pragma unroll
          for (int t = 0; t < Tiles; ++t)
#pragma unroll
            for (int r = 0; r < 2; ++r) {  // counts <= 512: |sum| < 2^20, |partial| < 2^26
              std::int32_t sum = 0;
#pragma unroll
              for (int h = halves - 1; h >= 0; --h)
                sum = sum * 256 + static_cast<std::int32_t>(count[h][t][2 * r]) +
                      odd_factor[h] * static_cast<std::int32_t>(count[h][t][2 * r + 1]);
              partial[t][r] = sum * lane_weight;
            }
        }
        acc[b] = fmaf(d[now], static_cast<float>(scatter_total(partial)), acc[b]);
      }
      if (batch % 2 != 0) {  // the next step's column 0 went into set 1
#pragma unroll
        for (int h = 0; h < halves; ++h) plane[0][h] = plane[1][h];
        d[0] = d[1];
      }
    }
  }

  // Epilogue (binary_mma.cuh's): per-row scalars, the fold's sums, the salient tail on fp16/bf16 mmas, then the
  // warps' partial sums through shared memory in a fixed order.
  copy_async_wait<0>();
  if (row_owner) {
    row_alpha[threadIdx.x] = my_alpha;
    row_salient[threadIdx.x] = my_salient;
    row_zero[threadIdx.x] = floorf(my_zero);
    row_half[threadIdx.x] = my_zero - floorf(my_zero);
  }
  __syncthreads();
  using warp_reduce = cub::WarpReduce<float>;
  __shared__ typename warp_reduce::TempStorage reduce_storage[Warps];
  for (int job = warp; job < 2 * batch; job += Warps) {  // job b: sum d S of column b; batch + b: T of column b
    float partial = 0.0f;
    for (int i = lane; i < n_sums; i += 32) partial += block_sums[job * n_sums + i];
    const float total = warp_reduce(reduce_storage[warp]).Sum(partial);
    if (lane == 0) x_sum[job / batch][job % batch] = total;
    __syncwarp();
  }

  const index_t my_column = min(g, batch - 1);
  const bool my_batch = g < batch;
  float tail_acc[Tiles][4] = {};
  {
    const std::uint32_t* my_tail = tail_pairs + my_column * tail_stride / 2;
    const int bits = rows.w.shape.salient_bits;
    // Rows g and g + 8 of each tile (past the end: the block's last row, never stored): codes and zero, hoisted.
    const std::uint32_t* row_codes[Tiles][2];
    float zero_of[Tiles][2];
#pragma unroll
    for (int t = 0; t < Tiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int local = min(16 * t + g + 8 * h, static_cast<int>(block_end - row0) - 1);
        row_codes[t][h] = codes + static_cast<index_t>(local) * code_words;
        zero_of[t][h] = row_zero[local];
      }
    auto tail_loop = [&](auto pair_of) {
      for (index_t k0 = 16 * warp; k0 < tail_stride; k0 += 16 * Warps) {
        const std::uint32_t b0 = my_batch ? my_tail[(k0 + 2 * c) / 2] : 0u,
                            b1 = my_batch ? my_tail[(k0 + 2 * c + 8) / 2] : 0u;
#pragma unroll
        for (int t = 0; t < Tiles; ++t) {
          std::uint32_t a[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = pair_of(t, i % 2, k0 + 2 * c + 8 * (i / 2));
          mma_16816<T>(tail_acc[t], a, b0, b1);
        }
      }
    };
    if (bits == 4) {  // the default grid: a code pair is one byte (3 ALU instructions and a half2 subtraction)
      std::uint32_t bias[Tiles][2];
#pragma unroll
      for (int t = 0; t < Tiles; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h) bias[t][h] = level_bias_pair<T>(zero_of[t][h]);
      tail_loop([&](int t, int h, index_t k) { return level_pair4<T>(row_codes[t][h], code_words, k, bias[t][h]); });
    } else {
      tail_loop([&](int t, int h, index_t k) {
        return level_pair<T>(row_codes[t][h], code_words, k, bits, zero_of[t][h]);
      });
    }
  }

  auto* red = reinterpret_cast<float(*)[Tiles][16][max_batch]>(&ring[0][0][0][0]);
  auto* red_tail = red + Warps;
  static_assert(sizeof(ring) >= 2 * Warps * Tiles * 16 * max_batch * sizeof(float), "the ring holds the sums");
#pragma unroll
  for (int t = 0; t < Tiles; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i)  // tail accumulator i: row g + 8 (i / 2), batch column 2c + i % 2
      red_tail[warp][t][g + 8 * (i / 2)][2 * c + i % 2] = tail_acc[t][i];
  }
  if constexpr (!scatter) {
    if (c == 0)  // the 4 lanes of a row hold the same sums
#pragma unroll
      for (int t = 0; t < Tiles; ++t)
#pragma unroll
        for (int r = 0; r < 2; ++r) red[warp][t][g + 8 * r][0] = acc_one[t][r];
  } else if (Tiles == 2 || c < 2) {  // lane c's (tile, row); at one tile lanes c and c ^ 2 hold the same sums
#pragma unroll
    for (int b = 0; b < Batch; ++b) red[warp][mine_tile][g + 8 * mine_row][b] = acc[b];
  }
  __syncthreads();

  // A thread per (row, batch column) of the block (2026-11-27d: was a warp per row with `batch` lanes busy, up to 4
  // serial rounds at batch 1); each sums the warps in the same order as before: the same bits.
  for (int i = static_cast<int>(threadIdx.x); i < block_rows * batch; i += Warps * 32) {
    const int local = i % block_rows, column = i / block_rows;
    const index_t r = row0 + local;
    if (r >= n_rows) continue;
    float binary = 0.0f, salient = 0.0f;
#pragma unroll
    for (int w = 0; w < Warps; ++w) {
      binary += red[w][local / 16][local % 16][column];
      salient += red_tail[w][local / 16][local % 16][column];
    }
    y[column * y_stride + r] = from_float<Out>(row_alpha[local] * (2.0f * binary - x_sum[0][column]) +
                                               row_salient[local] * (salient - row_half[local] * x_sum[1][column]));
  }
}

}  // namespace cuda::gemv::detail
SAGEPTQ_NAMESPACE_END
