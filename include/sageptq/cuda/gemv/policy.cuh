#pragma once
/// @file policy.cuh
/// Per-architecture tuning knobs of the binary GEMV kernels (all compile-time). A block of `warps` warps owns
/// 16 * row_tiles rows and splits their columns across its warps; row_tiles is chosen at run time from
/// {1, 2, 4} up to max_row_tiles so the grid still covers the multiprocessors. Threading: none (types only).

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
};

/// H100: 132 SMs at ~3.35 TB/s; 8 warps x 2 row tiles (<= 128 registers) let 2 blocks share an SM, each thread
/// keeping two steps of sign vectors (2 x 64 bytes) in flight. Measured alternatives (bench/results/gemv.md):
/// 16 warps x 4 tiles and 3 blocks per SM were slower on the wide shapes.
struct sm90_policy {
  static constexpr int arch = 900;
  static constexpr int warps = 8;
  static constexpr int max_row_tiles = 2;
  static constexpr int min_blocks = 2;  ///< blocks per SM the register allocation must allow
  static constexpr int fold_threads = 256;
};

}  // namespace cuda::gemv
SAGEPTQ_NAMESPACE_END
