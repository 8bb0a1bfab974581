#pragma once
/// @file policy.cuh
/// Per-architecture tuning knobs of the binary GEMV kernels (all compile-time). A block of `warps` warps owns
/// 16 * row_tiles rows and splits their columns across its warps; row_tiles is chosen at run time from
/// {1, 2} up to max_row_tiles so the grid still covers the multiprocessors. The rtn kernel (FMA pipes) gives each of
/// its rtn_warps warps rtn_rows_per_warp rows. Threading: none (types only).

#include "../config.cuh"

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda::gemv {

/// A100-class: 64K registers and 164 KB shared memory per SM; fewer warps so two blocks fit.
struct sm80_policy {
  static constexpr int arch = 800;
  static constexpr int warps = 8;
  static constexpr int max_row_tiles = 2;
  static constexpr int min_blocks = 2;  ///< blocks per SM the register allocation must allow
  static constexpr int fold_threads = 256;
  /// bit_decode off: ptxas spills 16 bytes of it for sm_80 at 2 blocks per SM, and it was never timed on an A100.
  static constexpr int bit_decode_max_batch = 0;
  static constexpr int bit_decode_min_steps = 2;
  static constexpr int rtn_warps = 8;
  static constexpr int rtn_rows_per_warp = 2;
  /// Activation planes (binary_planes.cuh) off: b1 mma is native on the A100 too, but the path was never timed there.
  static constexpr int planes_max_batch = 0;
  static constexpr int plane_bits = 16;
  static constexpr int planes_min_blocks = 2;
  static constexpr int planes_min_blocks_batch1 = 2;
  static constexpr int planes_two_tiles_min_batch = 4;
  static constexpr int planes_stages_one_tile = 4;  ///< sign ring depth of the planes kernel (dynamic shared memory)
  static constexpr int planes_stages_two_tiles = 2;
};

/// H100: 132 SMs at ~3.35 TB/s; 8 warps x up to 2 row tiles (<= 128 registers) let 2 blocks share an SM; sign
/// vectors stream through a per-thread cp.async ring (4 steps deep at one tile: 64 KB in flight per SM). Measured
/// alternatives (bench/results/gemv.md): 16 warps x 4 tiles and 3 blocks per SM were slower on the wide shapes;
/// at batch 4, bit_decode (one tile: x' re-read per 16 rows) took 49 us at 8192 x 28672 against 35 us for
/// sign_decode with two tiles, hence bit_decode_max_batch = 2.
struct sm90_policy {
  static constexpr int arch = 900;
  static constexpr int warps = 8;
  static constexpr int max_row_tiles = 2;
  static constexpr int min_blocks = 2;  ///< blocks per SM the register allocation must allow
  static constexpr int fold_threads = 256;
  static constexpr int bit_decode_max_batch = 2;  ///< fp16 sage: bit_decode up to this batch, sign_decode above
  static constexpr int bit_decode_min_steps = 2;  ///< ... and from this many 512-column steps per warp (K >= ~8192)
  static constexpr int rtn_warps = 8;             ///< rtn: 16 rows per block (4096 rows: 256 blocks)
  static constexpr int rtn_rows_per_warp = 2;     ///< rows sharing each x load
  /// sage on binary tensor cores with x' as 16-bit activation planes (binary_planes.cuh) up to this batch; the fp16
  /// kernels above it (0: never). bench/mma_throughput_cuda.cu: b1 and.popc is native here at the HMMA.16816 issue
  /// rate (16x the weights per instruction, no decode), so the planes path replaces the ALU-bound fp16 decode at
  /// every batch (bench/results/gemv.md, 2026-11-27).
  static constexpr int planes_max_batch = 8;
  static constexpr int plane_bits = 16;          ///< 16: close to fp16 operands; 8: the CPU VNNI path's grid
  static constexpr int planes_min_blocks = 2;    ///< blocks per SM the planes kernel's registers must allow
  /// ... at batch 1: 4 (<= 64 registers; 68 unbounded), so 8192 rows (512 blocks) run in one wave on 132 SMs.
  static constexpr int planes_min_blocks_batch1 = 4;
  /// Two row tiles (32 rows share each plane load) from this batch on, where the grid still gives ~0.9 blocks per SM
  /// (binary_gemv::row_tiles: 4096 rows and more on 132 SMs): 2026-11-27, 8192 x 28672 batch 1: kernel 16.1 us with
  /// two tiles vs 18.7 with one; 2026-11-27c, 4096 x 14336 batch 1 run(): 10.3 us with two tiles vs 10.7 with one.
  static constexpr int planes_two_tiles_min_batch = 1;
  /// Depth of the planes kernel's sign ring (dynamic shared memory, 8 KB per stage and tile; Stages - 1 steps per
  /// warp go out before the wait for the fold): 5 at one tile (52 KB per block, 4 blocks per SM at batch 1), 4 at two
  /// tiles (75 KB, 2 per SM). 2026-11-27c (H100, run() at batch 1, two tiles): 2 stages (the static ring) 11.5 /
  /// 19.4 us at 4096 x 14336 / 8192 x 28672, 4: 10.4 / 18.6, 5: 10.3 / 19.1, 6: 10.6 / 19.5 (bench/results/gemv.md).
  static constexpr int planes_stages_one_tile = 5;
  static constexpr int planes_stages_two_tiles = 4;
};

/// sm90_policy with fp16 activation numerics for sage (the binary_mma.cuh kernels at every batch): for callers that
/// want x' rounded to fp16 rather than quantized to 16-bit planes, and the benchmark's "before" column.
struct sm90_fp16_policy : sm90_policy {
  static constexpr int planes_max_batch = 0;
};

}  // namespace cuda::gemv
SAGEPTQ_NAMESPACE_END
