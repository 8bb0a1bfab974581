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
};

}  // namespace cuda::gemv
SAGEPTQ_NAMESPACE_END
