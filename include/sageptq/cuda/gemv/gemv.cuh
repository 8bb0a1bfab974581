#pragma once
/// @file gemv.cuh
/// Host API of the packed-weight GEMV on CUDA, in the CUTLASS manner:
///
///     using op = cuda::gemv::sage_gemv<__half, float>;          // activations, output; sm90_policy by default
///     op::arguments args{weights, x, x_stride, y, y_stride, batch};
///     if (auto ok = op::can_implement(args); !ok) ...;
///     std::size_t bytes = op::workspace_size(args);              // caller allocates (device memory, 16-byte aligned)
///     outcome done = op::run(args, workspace, stream);           // two launches: fold x, then the GEMV
///
/// y (batch x rows, row stride y_stride) = W (rows x cols) x (batch x cols, row stride x_stride), batch in [1, 8].
/// Formats: sage_gemv (sage's default format), q1_0_gemv, rtn_gemv; fused_gemv<Op> runs up to 3 matrices of one of
/// them that share x (q/k/v, gate/up) in the same launches.
/// Activations: __half, __nv_bfloat16 or float (the binary formats fold it to fp16); output: float, __half or
/// __nv_bfloat16.
/// Numerics of the binary formats: x' = beta * x and the salient activations are rounded once to the 16-bit operand
/// type (fp16, or bf16 for bf16 activations), then tensor cores multiply exact binary weights (sage: +-1, or 0/1 with
/// the sum of x' taken out for fp16 at batch <= policy::bit_decode_max_batch; q1_0: +-d, d rounded to bf16 for bf16
/// activations) and exact salient levels q - floor(zero), and accumulate in fp32: |y - y_exact| <= (u16 + 2 (K + 8)
/// 2^-24) sum_j |w_j x_j| + u_out |y|, u16 = 2^-11 (fp16) or 2^-8 (bf16).
/// sage at batch <= policy::planes_max_batch (the sm90 default: every batch) instead quantizes x' to
/// policy::plane_bits-bit integers per 512 stored columns (binary_planes.cuh: d = max|x'| / (2^(bits-1) - 1)) and
/// multiplies them exactly on binary tensor cores: the bound above plus |alpha_r| sum_j d_block(j) (1/2 + Q 2^-20)
/// for the binarized columns (the salient tail keeps the 16-bit operand rounding). sm90_fp16_policy keeps the fp16
/// numerics at every batch.
/// rtn: fp32 products of the exact levels times the scale with x as given, |y - y_exact| <= (K + 8) 2^-24
/// sum_j |w_j x_j| + u_out |y| (rtn_fma.cuh).
/// run() never allocates and never synchronizes; errors come back as outcome (status::device_error carries the
/// cudaError_t name and text). Threading: host calls are reentrant; work is ordered on `stream`.
/// Stream contract of the sage planes path (programmatic dependent launch, 2026-11-27d): its fold kernel may start
/// while the kernel enqueued before run() on `stream` still runs, and reads the packed weights' permutation and group
/// table before waiting for that kernel; it reads x and writes the workspace only after it has completed (and the
/// GEMV lets the next call's fold start early on the same terms). So the kernel enqueued right before run() may
/// write x, y or the workspace, or read anything, but must not write the packed weights of this call.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "../../format/q1_0.hpp"
#include "../../format/rtn.hpp"
#include "../../format/sage.hpp"
#include "../config.cuh"
#include "binary_mma.cuh"
#include "binary_planes.cuh"
#include "policy.cuh"
#include "rtn_fma.cuh"

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda::gemv {

inline constexpr index_t max_batch = detail::max_batch;
inline constexpr int max_fused = detail::max_fused;

namespace detail {

template <class T>
inline constexpr bool is_activation_v =
    std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, float>;
template <class T>
inline constexpr bool is_output_v = is_activation_v<T>;

inline std::size_t round_up_16(std::size_t n) { return (n + 15) / 16 * 16; }

/// One matrix of a call, as the launch code sees it: its weights (Rows for the binary formats, the rtn view) and its
/// output. A fused call is a list of up to max_fused of them sharing x, batch and the activation type.
template <class Weights, class Out>
struct problem {
  Weights weights{};
  Out* y = nullptr;
  index_t y_stride = 0;
};

inline outcome check_common(index_t rows, const void* x, index_t x_cols, index_t x_stride, const void* y,
                            index_t y_stride, index_t batch) {
  auto bad = [](status code, const std::string& why) { return fail(code, "cuda::gemv: " + why); };
  if (batch < 1 || batch > max_batch) return bad(status::invalid_argument, "batch must be in [1, 8]");
  if (x == nullptr || y == nullptr) return bad(status::invalid_argument, "x and y must be device pointers");
  if (rows < 1 || rows > 0x7fffffff) return bad(status::invalid_shape, "rows must be in [1, 2^31)");
  if (x_stride < x_cols || y_stride < rows)
    return bad(status::invalid_layout, "a row stride of x or y is shorter than its row");
  return {};
}

/// Launch configuration with programmatic dependent launch allowed (where `programmatic`): the kernel may start while
/// the previous one on the stream runs, and orders itself with griddepcontrol.wait (ignored where unsupported).
struct launch_config {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attribute[1]{};
  launch_config(unsigned blocks, unsigned threads, cudaStream_t stream, bool programmatic) {
    config.gridDim = dim3(blocks);
    config.blockDim = dim3(threads);
    config.stream = stream;
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = programmatic ? 1 : 0;
  }
};

/// The device a call runs on, queried once per run() (its SM count chooses tiles and launch modes).
struct device_target {
  int device = 0;
  int sms = 0;
  static cudaError_t current(device_target& d) {
    if (const cudaError_t e = cudaGetDevice(&d.device); e != cudaSuccess) return e;
    return cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, d.device);
  }
};

/// Blocks of 16 * tiles rows that cover `rows` rows (every GEMV launch's grid, summed over its matrices).
inline int tile_blocks(index_t rows, int tiles) { return static_cast<int>((rows + 16 * tiles - 1) / (16 * tiles)); }

/// The launch logic of every binary format (Rows is sage_rows or q1_0_rows), for a list of 1..N matrices of equal
/// width: one fold launch (one x' per matrix, or a single one where Rows::shared_fold), then one GEMV launch whose
/// blocks cover every matrix's rows.
template <class Rows, class Act, class Out, class Policy>
struct binary_gemv {
  static_assert(is_activation_v<Act>, "sageptq: activations must be __half, __nv_bfloat16 or float");
  static_assert(is_output_v<Out>, "sageptq: output must be float, __half or __nv_bfloat16");
  using problem_type = problem<Rows, Out>;

  static outcome check(const Rows& rows, const void* x, index_t x_cols, index_t x_stride, const void* y,
                       index_t y_stride, index_t batch) {
    if (auto ok = check_common(rows.rows(), x, x_cols, x_stride, y, y_stride, batch); !ok) return ok;
    if (reinterpret_cast<std::uintptr_t>(rows.w.signs) % 16 != 0)
      return fail(status::invalid_layout, "cuda::gemv: sign words must be 16-byte aligned");
    return {};
  }

  /// sage through activation planes on binary tensor cores (binary_planes.cuh) at this batch, else the fp16 kernels.
  static constexpr bool planes_capable = std::is_same_v<Rows, sage_rows> && Policy::planes_max_batch > 0;
  static bool use_planes(index_t batch) { return planes_capable && batch <= Policy::planes_max_batch; }
  static constexpr int plane_bits = Policy::plane_bits;

  /// Workspace, per fold: x' pairs (fp16 path) or the activation planes and their block scales (planes path), then
  /// the salient activations (16-bit), then the fold kernel's per-block sums (two each).
  static std::size_t pair_bytes(const Rows& rows, index_t batch, bool planes) {
    if (planes) return static_cast<std::size_t>(batch * plane_words(rows.row_words(), plane_bits)) * 4;
    return round_up_16(static_cast<std::size_t>(batch * pair_words(rows.row_words())) * 4);
  }
  static std::size_t scale_bytes(const Rows& rows, index_t batch, bool planes) {
    return planes ? round_up_16(static_cast<std::size_t>(batch * plane_blocks(rows.row_words())) * 4) : 0;
  }
  static std::size_t tail_bytes(const Rows& rows, index_t batch) {
    return round_up_16(static_cast<std::size_t>(batch * tail_padded(rows.tail_cols())) * 2);
  }
  static int fold_blocks(const Rows& rows, bool planes) {
    if (planes)  // a block per activation block, then a thread per salient activation
      return static_cast<int>(plane_blocks(rows.row_words()) +
                              (tail_padded(rows.tail_cols()) + plane_block_cols - 1) / plane_block_cols);
    const index_t work = pair_words(rows.row_words()) + tail_padded(rows.tail_cols());  // per batch column
    return static_cast<int>((work + Policy::fold_threads - 1) / Policy::fold_threads);
  }
  /// The fold's grid x, common to the list: the largest of its matrices'.
  static int fold_blocks(const problem_type* ps, int count, bool planes) {
    int n = 0;
    for (int i = 0; i < count; ++i) n = std::max(n, fold_blocks(ps[i].weights, planes));
    return n;
  }
  static int folds(int count) { return Rows::shared_fold ? std::min(count, 1) : count; }
  static std::size_t segment_bytes(const Rows& rows, index_t batch, int n_sums, bool planes) {
    return pair_bytes(rows, batch, planes) + scale_bytes(rows, batch, planes) + tail_bytes(rows, batch) +
           round_up_16(static_cast<std::size_t>(2 * batch * n_sums) * 4);
  }
  static std::size_t workspace_size(const problem_type* ps, int count, index_t batch) {
    const bool planes = use_planes(batch);
    const int n_sums = fold_blocks(ps, count, planes);
    std::size_t bytes = 0;
    for (int i = 0; i < folds(count); ++i) bytes += segment_bytes(ps[i].weights, batch, n_sums, planes);
    return bytes;
  }
  /// Where the fold output that matrix i reads lies in the workspace (pairs: x' pairs or activation planes).
  struct segment {
    std::uint32_t* pairs;
    float* scales;
    std::uint16_t* tail;
    float* sums;
  };
  static segment segment_of(void* workspace, const problem_type* ps, int count, int i, index_t batch) {
    const bool planes = use_planes(batch);
    const int n_sums = fold_blocks(ps, count, planes), f = Rows::shared_fold ? 0 : i;
    auto* bytes = static_cast<char*>(workspace);
    for (int j = 0; j < f; ++j) bytes += segment_bytes(ps[j].weights, batch, n_sums, planes);
    const Rows& rows = ps[f].weights;
    char* scales = bytes + pair_bytes(rows, batch, planes);
    char* tail = scales + scale_bytes(rows, batch, planes);
    return {reinterpret_cast<std::uint32_t*>(bytes), reinterpret_cast<float*>(scales),
            reinterpret_cast<std::uint16_t*>(tail), reinterpret_cast<float*>(tail + tail_bytes(rows, batch))};
  }

  /// Largest row_tiles (1 or 2, at most the policy's) that still gives ~0.9 blocks per SM.
  static constexpr int max_tiles = Policy::max_row_tiles < 2 ? Policy::max_row_tiles : 2;
  /// Blocks per SM the registers must allow; per-vector scales spilled at 3 (80 registers), so they ask for 2 at most.
  static constexpr int min_blocks = Rows::unit_vector_scale || Policy::min_blocks < 2 ? Policy::min_blocks : 2;
  static int row_tiles(index_t n_rows, int sms) {
    int tiles = max_tiles;
    while (tiles > 1 && tile_blocks(n_rows, tiles) * 10 < 9 * sms) tiles /= 2;
    return tiles;
  }
  /// bit_decode (no IMAD.SHL in the decode; one tile: its 10 accumulators per tile leave no registers for two) where
  /// the operands allow it, the batch is small (a tile re-reads x' from L1/L2, which costs more than the decode saves
  /// from policy.bit_decode_max_batch columns on) and each warp has enough K steps to amortize its block.
  static constexpr bool bit_capable = std::is_same_v<typename operand<Act>::type, __half> && Rows::unit_vector_scale;
  static bool use_bit_decode(const Rows& rows, index_t batch) {
    const index_t steps = (rows.row_words() / 4 + 3) / 4;  // per block, split over its warps
    return bit_capable && batch <= Policy::bit_decode_max_batch &&
           steps >= static_cast<index_t>(Policy::bit_decode_min_steps) * Policy::warps;
  }

  template <class Decode, int Tiles, int N>
  static cudaError_t launch_kernel(const problem_type* ps, int count, void* workspace, int batch, cudaStream_t stream,
                                   bool programmatic) {
    // The GEMV may start while fold_kernel runs (PDL): it streams weights and waits (griddepcontrol.wait) before
    // reading x'.
    gemv_problems<Rows, Out, N> p{};
    int blocks = 0;
    for (int i = 0; i < count; ++i) {
      const segment s = segment_of(workspace, ps, count, i, batch);
      p.rows[i] = ps[i].weights;
      p.pairs[i] = s.pairs;
      p.tail[i] = s.tail;
      p.sums[i] = s.sums;
      p.y[i] = ps[i].y;
      p.y_stride[i] = ps[i].y_stride;
      p.first_block[i] = blocks;
      blocks += tile_blocks(ps[i].weights.rows(), Tiles);
    }
    p.count = count;
    launch_config launch(static_cast<unsigned>(blocks), Policy::warps * 32, stream, programmatic);
    return cudaLaunchKernelEx(&launch.config,
                              binary_gemv_kernel<Rows, Act, Out, Decode, Policy::warps, Tiles, min_blocks, N>, p,
                              fold_blocks(ps, count, false), batch);
  }

  template <int Batch, int Tiles, int N>
  static cudaError_t launch_planes_kernel(const problem_type* ps, int count, void* workspace, int batch,
                                          const device_target& gpu, cudaStream_t stream, bool programmatic) {
    plane_gemv_problems<Rows, Out, N> p{};
    int blocks = 0;
    for (int i = 0; i < count; ++i) {
      const segment s = segment_of(workspace, ps, count, i, batch);
      p.rows[i] = ps[i].weights;
      p.planes[i] = s.pairs;
      p.scales[i] = s.scales;
      p.tail[i] = s.tail;
      p.sums[i] = s.sums;
      p.y[i] = ps[i].y;
      p.y_stride[i] = ps[i].y_stride;
      p.first_block[i] = blocks;
      blocks += tile_blocks(ps[i].weights.rows(), Tiles);
    }
    p.count = count;
    constexpr int stages = Tiles == 1 ? Policy::planes_stages_one_tile : Policy::planes_stages_two_tiles;
    constexpr int ring = plane_ring_bytes<Policy::warps, Tiles, stages>;
    const auto kernel =
        plane_gemv_kernel<Rows, Act, Out, plane_bits, Batch, Policy::warps, Tiles, stages,
                          Batch == 1 && Tiles == 1 ? Policy::planes_min_blocks_batch1 : Policy::planes_min_blocks, N>;
    // The ring is dynamic shared memory past the 48 KB default: raised once per device and instance (idempotent, so
    // a race between threads only repeats it); the driver sizes the carveout for the blocks per SM.
    static std::atomic<std::uint64_t> raised{0};
    const std::uint64_t bit = gpu.device < 64 ? std::uint64_t{1} << gpu.device : 0;
    if (bit == 0 || (raised.load(std::memory_order_relaxed) & bit) == 0) {
      if (const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ring);
          e != cudaSuccess)
        return e;
      raised.fetch_or(bit, std::memory_order_relaxed);
    }
    launch_config launch(static_cast<unsigned>(blocks), Policy::warps * 32, stream, programmatic);
    launch.config.dynamicSmemBytes = ring;
    // Where the GEMV lets the next call's fold launch (binary_planes.cuh): after its wait where the grid is at most
    // one block per SM, else at its start. 2026-11-27d, H100 run() batch 1 back to back: 4096 x 14336 (128 blocks)
    // 8.65 us at the wait vs 8.79 at the start; 8192 x 28672 (256 blocks) 19.21 vs 18.54.
    const bool trigger_at_wait = blocks <= gpu.sms;
    return cudaLaunchKernelEx(&launch.config, kernel, p, fold_blocks(ps, count, true), batch, trigger_at_wait);
  }
  /// Row tiles and blocks of the planes GEMV launch (launch_planes: fused lists, N > 1, run one tile).
  template <int N>
  static int planes_tiles(index_t batch, index_t rows, int sms) {
    return N == 1 && batch >= Policy::planes_two_tiles_min_batch && row_tiles(rows, sms) == 2 ? 2 : 1;
  }
  template <int N>
  static int planes_blocks(const problem_type* ps, int count, index_t batch, int sms) {
    index_t rows = 0;
    for (int i = 0; i < count; ++i) rows += ps[i].weights.rows();
    const int tiles = planes_tiles<N>(batch, rows, sms);
    int blocks = 0;
    for (int i = 0; i < count; ++i) blocks += tile_blocks(ps[i].weights.rows(), tiles);
    return blocks;
  }
  /// The planes kernel for this batch: instances for batch 1, 2, 4 and 8 (a batch runs in the next one up), two
  /// row tiles from policy.planes_two_tiles_min_batch on where the grid still covers the SMs; fused lists run one
  /// tile (their problem list costs registers: two tiles spilled at batch 4).
  template <int N>
  static cudaError_t launch_planes(const problem_type* ps, int count, void* workspace, int batch, index_t rows,
                                   const device_target& gpu, cudaStream_t stream, bool programmatic) {
    const bool two = planes_tiles<N>(batch, rows, gpu.sms) == 2;
    auto with_tiles = [&]<int Batch>() {
      if constexpr (N == 1 && Batch >= Policy::planes_two_tiles_min_batch)
        if (two) return launch_planes_kernel<Batch, 2, N>(ps, count, workspace, batch, gpu, stream, programmatic);
      return launch_planes_kernel<Batch, 1, N>(ps, count, workspace, batch, gpu, stream, programmatic);
    };
    if (batch <= 1) return with_tiles.template operator()<1>();
    if (batch <= 2) return with_tiles.template operator()<2>();
    if (batch <= 4) return with_tiles.template operator()<4>();
    return with_tiles.template operator()<8>();
  }

  /// The GEMV launch alone, on x' already folded into `workspace` (run() = fold_kernel + this).
  template <int N>
  static cudaError_t launch_gemv(const problem_type* ps, int count, void* workspace, int batch,
                                 const device_target& gpu, cudaStream_t stream, bool programmatic = true) {
    index_t rows = 0;
    bool bit = true;
    for (int i = 0; i < count; ++i) {
      rows += ps[i].weights.rows();
      bit = bit && use_bit_decode(ps[i].weights, batch);
    }
    if constexpr (planes_capable)
      if (use_planes(batch)) return launch_planes<N>(ps, count, workspace, batch, rows, gpu, stream, programmatic);
    if constexpr (bit_capable && Policy::bit_decode_max_batch > 0)
      if (bit) return launch_kernel<bit_decode, 1, N>(ps, count, workspace, batch, stream, programmatic);
    if (row_tiles(rows, gpu.sms) == 2)
      return launch_kernel<sign_decode, max_tiles, N>(ps, count, workspace, batch, stream, programmatic);
    return launch_kernel<sign_decode, 1, N>(ps, count, workspace, batch, stream, programmatic);
  }

  template <int N>
  static outcome run(const problem_type* ps, int count, const Act* x, index_t x_stride, index_t batch,
                     void* workspace, cudaStream_t stream, bool programmatic = true) {
    if (workspace == nullptr || reinterpret_cast<std::uintptr_t>(workspace) % 16 != 0)
      return fail(status::invalid_argument, "cuda::gemv: workspace must be a 16-byte aligned device pointer");
    const bool planes = use_planes(batch);
    const dim3 blocks(static_cast<unsigned>(fold_blocks(ps, count, planes)), static_cast<unsigned>(batch),
                      static_cast<unsigned>(folds(count)));
    device_target gpu;
    SAGEPTQ_CUDA_TRY(device_target::current(gpu));
    if constexpr (planes_capable) {
      if (planes) {
        plane_fold_problems<Rows, N> f{};
        for (int i = 0; i < folds(count); ++i) {
          const segment s = segment_of(workspace, ps, count, i, batch);
          f.rows[i] = ps[i].weights;
          f.planes[i] = s.pairs;
          f.scales[i] = s.scales;
          f.tail[i] = s.tail;
          f.sums[i] = s.sums;
        }
        // Programmatic dependent launch: the fold's weight-metadata loads overlap the previous kernel on the
        // stream; it reads x and writes the workspace only after griddepcontrol.wait (binary_planes.cuh).
        // PDL where the GEMV is one wave of at most one block per SM (2026-11-27d, H100, run() batch 1 back to
        // back: 4096 x 14336, 128 blocks: 9.77 us without it, 7.70 with it; 8192 x 28672, 256 blocks: 17.84 us
        // without it, 19.49 with it: there the fold's waiting blocks hold SM space the GEMVs need).
        const bool fold_pdl = programmatic && planes_blocks<N>(ps, count, batch, gpu.sms) <= gpu.sms;
        launch_config launch(blocks.x, plane_block_cols, stream, fold_pdl);
        launch.config.gridDim = blocks;
        SAGEPTQ_CUDA_TRY(
            cudaLaunchKernelEx(&launch.config, plane_fold_kernel<Rows, Act, plane_bits, N>, f, x, x_stride));
      }
    }
    if (!planes) {
      fold_problems<Rows, N> f{};
      for (int i = 0; i < folds(count); ++i) {
        const segment s = segment_of(workspace, ps, count, i, batch);
        f.rows[i] = ps[i].weights;
        f.pairs[i] = s.pairs;
        f.tail[i] = s.tail;
        f.sums[i] = s.sums;
      }
      fold_kernel<Rows, Act, Policy::fold_threads, N><<<blocks, Policy::fold_threads, 0, stream>>>(f, x, x_stride);
    }
    SAGEPTQ_CUDA_TRY(cudaGetLastError());
    SAGEPTQ_CUDA_TRY(launch_gemv<N>(ps, count, workspace, static_cast<int>(batch), gpu, stream, programmatic));
    return {};
  }
};

/// The launch logic of the rtn format: one launch, no workspace; the kernel is chosen by the code width.
template <class Act, class Out, class Policy>
struct rtn_gemv_impl {
  static_assert(is_activation_v<Act>, "sageptq: activations must be __half, __nv_bfloat16 or float");
  static_assert(is_output_v<Out>, "sageptq: output must be float, __half or __nv_bfloat16");
  using problem_type = problem<format::rtn_view<device_space>, Out>;
  static constexpr int block_rows = Policy::rtn_warps * Policy::rtn_rows_per_warp;

  static std::size_t workspace_size(const problem_type*, int, index_t) { return 0; }

  template <int N, int Bits>
  static cudaError_t launch(const problem_type* ps, int count, const Act* x, index_t x_stride, int batch,
                            cudaStream_t stream) {
    rtn_problems<Out, N> p{};
    int blocks = 0;
    for (int i = 0; i < count; ++i) {
      p.w[i] = ps[i].weights;
      p.y[i] = ps[i].y;
      p.y_stride[i] = ps[i].y_stride;
      p.first_block[i] = blocks;
      blocks += static_cast<int>((ps[i].weights.rows + block_rows - 1) / block_rows);
    }
    p.count = count;
    rtn_gemv_kernel<Act, Out, Bits, Policy::rtn_warps, Policy::rtn_rows_per_warp, N>
        <<<static_cast<unsigned>(blocks), Policy::rtn_warps * 32, 0, stream>>>(p, x, x_stride, batch);
    return cudaGetLastError();
  }

  template <int N>
  static outcome run(const problem_type* ps, int count, const Act* x, index_t x_stride, index_t batch, void*,
                     cudaStream_t stream) {
    const int bits = ps[0].weights.layout.bits;  // can_implement: every matrix of a list has the same width
    cudaError_t error = cudaErrorInvalidValue;
    [&]<int... B>(std::integer_sequence<int, B...>) {
      ((bits == B + 1 ? (error = launch<N, B + 1>(ps, count, x, x_stride, static_cast<int>(batch), stream)) : error),
       ...);
    }(std::make_integer_sequence<int, 8>{});
    SAGEPTQ_CUDA_TRY(error);
    return {};
  }
};

}  // namespace detail

/// Arguments of one call y = W x of any format's GEMV (`Weights`: the format's device view).
template <class Weights, class Act, class Out>
struct gemv_arguments {
  Weights weights;
  const Act* x = nullptr;  ///< batch x cols, x_stride elements between activation rows
  index_t x_stride = 0;
  Out* y = nullptr;        ///< batch x rows, y_stride elements between output rows
  index_t y_stride = 0;
  index_t batch = 1;
};

template <class Op>
class fused_gemv;

/// GEMV over the sage default format (1 plane, factorized scales, column groups, salient tail).
template <class Act, class Out, class Policy = sm90_policy>
class sage_gemv {
  using impl = detail::binary_gemv<detail::sage_rows, Act, Out, Policy>;
  friend class fused_gemv<sage_gemv>;

 public:
  using weights_type = format::sage_view<device_space>;
  using activation_type = Act;
  using output_type = Out;
  using arguments = gemv_arguments<weights_type, Act, Out>;

  static outcome can_implement(const arguments& a) {
    const auto& s = a.weights.shape;
    if (s.planes != 1 || s.scale_mode != format::sage_scale_mode::factorized ||
        s.group_mode != format::sage_group_mode::column)
      return fail(status::unsupported, "cuda::gemv: sage kernels implement one plane, factorized scales and "
                                       "column groups only");
    if (s.sign_row_words() % 4 != 0)  // the kernels load sign rows as 16-byte vectors
      return fail(status::unsupported, "cuda::gemv: sage sign rows must be a multiple of 16 bytes (word_rows "
                                       "matrices of other widths are CPU-only)");
    return impl::check(detail::sage_rows{a.weights}, a.x, s.cols, a.x_stride, a.y, a.y_stride, a.batch);
  }
  static std::size_t workspace_size(const arguments& a) {
    const auto p = problem(a.weights, a.y, a.y_stride);
    return impl::workspace_size(&p, 1, a.batch);
  }
  static outcome run(const arguments& a, void* workspace, cudaStream_t stream = nullptr) {
    if (auto ok = can_implement(a); !ok) return ok;
    const auto p = problem(a.weights, a.y, a.y_stride);
    return impl::template run<1>(&p, 1, a.x, a.x_stride, a.batch, workspace, stream);
  }

 private:
  static typename impl::problem_type problem(const weights_type& w, Out* y, index_t y_stride) {
    return {detail::sage_rows{w}, y, y_stride};
  }
  static index_t cols(const weights_type& w) { return w.shape.cols; }
  static outcome can_fuse(const weights_type&, const weights_type&) { return {}; }
};

/// GEMV over q1_0 (one fp16 scale per 128 columns of a row).
template <class Act, class Out, class Policy = sm90_policy>
class q1_0_gemv {
  using impl = detail::binary_gemv<detail::q1_0_rows, Act, Out, Policy>;
  friend class fused_gemv<q1_0_gemv>;

 public:
  using weights_type = format::q1_0_view<device_space>;
  using activation_type = Act;
  using output_type = Out;
  using arguments = gemv_arguments<weights_type, Act, Out>;

  static outcome can_implement(const arguments& a) {
    return impl::check(detail::q1_0_rows{a.weights}, a.x, a.weights.cols, a.x_stride, a.y, a.y_stride, a.batch);
  }
  static std::size_t workspace_size(const arguments& a) {
    const auto p = problem(a.weights, a.y, a.y_stride);
    return impl::workspace_size(&p, 1, a.batch);
  }
  static outcome run(const arguments& a, void* workspace, cudaStream_t stream = nullptr) {
    if (auto ok = can_implement(a); !ok) return ok;
    const auto p = problem(a.weights, a.y, a.y_stride);
    return impl::template run<1>(&p, 1, a.x, a.x_stride, a.batch, workspace, stream);
  }

 private:
  static typename impl::problem_type problem(const weights_type& w, Out* y, index_t y_stride) {
    return {detail::q1_0_rows{w}, y, y_stride};
  }
  static index_t cols(const weights_type& w) { return w.cols; }
  static outcome can_fuse(const weights_type&, const weights_type&) { return {}; }
};

/// GEMV over rtn (b-bit codes, 1 <= b <= 8, an fp16 scale and for asymmetric grids a zero per group), on the FMA
/// pipes (rtn_fma.cuh). Needs groups of whole 32-code units (group_size a multiple of 32) or one group per row
/// (group_size >= cols), and x 16-byte aligned with a row stride of a multiple of 16 bytes. One launch; no workspace
/// (workspace_size() is 0 and run() accepts a null workspace).
template <class Act, class Out, class Policy = sm90_policy>
class rtn_gemv {
  using impl = detail::rtn_gemv_impl<Act, Out, Policy>;
  friend class fused_gemv<rtn_gemv>;

 public:
  using weights_type = format::rtn_view<device_space>;
  using activation_type = Act;
  using output_type = Out;
  using arguments = gemv_arguments<weights_type, Act, Out>;

  static outcome can_implement(const arguments& a) {
    const auto& w = a.weights;
    const auto& l = w.layout;
    if (l.bits < 1 || l.bits > 8) return fail(status::unsupported, "cuda::gemv: rtn codes must have 1 to 8 bits");
    if (l.group_size < 1 || (l.group_size % 32 != 0 && l.group_size < w.cols))
      return fail(status::unsupported, "cuda::gemv: rtn groups must be a multiple of 32 columns or a whole row");
    if (w.codes == nullptr || w.scales == nullptr || (!l.symmetric && w.zeros == nullptr))
      return fail(status::invalid_argument, "cuda::gemv: rtn codes, scales and (asymmetric) zeros must be device "
                                            "pointers");
    if (w.cols < 1) return fail(status::invalid_shape, "cuda::gemv: cols must be positive");
    if (reinterpret_cast<std::uintptr_t>(a.x) % 16 != 0 || (a.x_stride * sizeof(Act)) % 16 != 0)
      return fail(status::invalid_layout, "cuda::gemv: rtn activations must be 16-byte aligned, with a row stride "
                                          "of a multiple of 16 bytes");
    return detail::check_common(w.rows, a.x, w.cols, a.x_stride, a.y, a.y_stride, a.batch);
  }
  static std::size_t workspace_size(const arguments&) { return 0; }
  static outcome run(const arguments& a, void* workspace, cudaStream_t stream = nullptr) {
    if (auto ok = can_implement(a); !ok) return ok;
    const auto p = problem(a.weights, a.y, a.y_stride);
    return impl::template run<1>(&p, 1, a.x, a.x_stride, a.batch, workspace, stream);
  }

 private:
  static typename impl::problem_type problem(const weights_type& w, Out* y, index_t y_stride) {
    return {w, y, y_stride};
  }
  static index_t cols(const weights_type& w) { return w.cols; }
  static outcome can_fuse(const weights_type& first, const weights_type& other) {
    if (other.layout.bits != first.layout.bits)
      return fail(status::unsupported, "cuda::gemv: fused rtn matrices must have the same code width");
    return {};
  }
};

/// Up to max_fused matrices of one format (Op = sage_gemv, q1_0_gemv or rtn_gemv) that share their input, e.g.
/// q/k/v or gate/up, in one call: x is folded once per matrix in one launch (once for all where the format's x' does
/// not depend on the matrix: q1_0) and one GEMV launch covers every matrix's rows, so the launches and the tail of
/// small matrices are paid once. Each matrix keeps its own rows and output; all have the same cols.
///
///     using op = cuda::gemv::fused_gemv<cuda::gemv::sage_gemv<__half, __half>>;
///     op::arguments args{{wq, wk, wv}, {yq, yk, yv}, {nq, nk, nv}, 3, x, x_stride, batch};
template <class Op>
class fused_gemv {
 public:
  using weights_type = typename Op::weights_type;
  using activation_type = typename Op::activation_type;
  using output_type = typename Op::output_type;
  struct arguments {
    std::array<weights_type, max_fused> weights{};
    std::array<output_type*, max_fused> y{};    ///< y[i]: batch x rows_i, y_stride[i] elements between rows
    std::array<index_t, max_fused> y_stride{};
    int count = 0;                              ///< matrices used, 1..max_fused
    const activation_type* x = nullptr;         ///< batch x cols, shared
    index_t x_stride = 0;
    index_t batch = 1;
  };

  static outcome can_implement(const arguments& a) {
    if (a.count < 1 || a.count > max_fused)
      return fail(status::invalid_argument, "cuda::gemv: a fused call takes 1 to " + std::to_string(max_fused) +
                                                " matrices");
    for (int i = 0; i < a.count; ++i) {
      const auto k = static_cast<std::size_t>(i);
      if (Op::cols(a.weights[k]) != Op::cols(a.weights[0]))
        return fail(status::invalid_shape, "cuda::gemv: fused matrices share x, so they must have the same cols");
      if (auto ok = Op::can_implement(single(a, i)); !ok) return ok;
      if (auto ok = Op::can_fuse(a.weights[0], a.weights[k]); !ok) return ok;
    }
    return {};
  }
  static std::size_t workspace_size(const arguments& a) {
    const auto ps = problems(a);
    return Op::impl::workspace_size(ps.data(), count(a), a.batch);
  }
  static outcome run(const arguments& a, void* workspace, cudaStream_t stream = nullptr) {
    if (auto ok = can_implement(a); !ok) return ok;
    const auto ps = problems(a);
    return Op::impl::template run<max_fused>(ps.data(), a.count, a.x, a.x_stride, a.batch, workspace, stream);
  }

 private:
  static int count(const arguments& a) { return std::clamp(a.count, 0, max_fused); }
  static typename Op::arguments single(const arguments& a, int i) {
    return {a.weights[static_cast<std::size_t>(i)], a.x, a.x_stride, a.y[static_cast<std::size_t>(i)],
            a.y_stride[static_cast<std::size_t>(i)], a.batch};
  }
  static auto problems(const arguments& a) {
    std::array<typename Op::impl::problem_type, max_fused> ps{};
    for (int i = 0; i < count(a); ++i) {
      const auto k = static_cast<std::size_t>(i);
      ps[k] = Op::problem(a.weights[k], a.y[k], a.y_stride[k]);
    }
    return ps;
  }
};

}  // namespace cuda::gemv
SAGEPTQ_NAMESPACE_END
