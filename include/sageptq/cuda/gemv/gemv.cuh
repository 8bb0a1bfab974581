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
/// Activations: __half, __nv_bfloat16 or float (folded to fp16); output: float, __half or __nv_bfloat16.
/// Numerics: x' = beta * x and the salient activations are rounded once to the 16-bit operand type (fp16, or bf16 for
/// bf16 activations), then tensor cores multiply exact binary weights (sage: +-1, or 0/1 with the sum of x' taken out
/// for fp16 at batch <= policy::bit_decode_max_batch; q1_0: +-d, d rounded to bf16 for bf16 activations) and exact
/// salient levels q - floor(zero), and accumulate in fp32:
/// |y - y_exact| <= (u16 + 2 (K + 8) 2^-24) sum_j |w_j x_j| + u_out |y|, u16 = 2^-11 (fp16) or 2^-8 (bf16).
/// run() never allocates and never synchronizes; errors come back as outcome (status::device_error carries the
/// cudaError_t name and text). Threading: host calls are reentrant; work is ordered on `stream`.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "../../format/q1_0.hpp"
#include "../../format/sage.hpp"
#include "../config.cuh"
#include "binary_mma.cuh"
#include "policy.cuh"

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda::gemv {

inline constexpr index_t max_batch = detail::max_batch;

namespace detail {

template <class T>
inline constexpr bool is_activation_v =
    std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, float>;
template <class T>
inline constexpr bool is_output_v = is_activation_v<T>;

inline std::size_t round_up_16(std::size_t n) { return (n + 15) / 16 * 16; }

/// The common arguments and launch logic of every binary format; Rows is sage_rows or q1_0_rows.
template <class Rows, class Act, class Out, class Policy>
struct binary_gemv {
  static_assert(is_activation_v<Act>, "sageptq: activations must be __half, __nv_bfloat16 or float");
  static_assert(is_output_v<Out>, "sageptq: output must be float, __half or __nv_bfloat16");

  static outcome check(const Rows& rows, const void* x, index_t x_cols, index_t x_stride, const void* y,
                       index_t y_stride, index_t batch) {
    auto bad = [](status code, const std::string& why) { return fail(code, "cuda::gemv: " + why); };
    if (batch < 1 || batch > max_batch) return bad(status::invalid_argument, "batch must be in [1, 8]");
    if (x == nullptr || y == nullptr) return bad(status::invalid_argument, "x and y must be device pointers");
    if (rows.rows() < 1 || rows.rows() > 0x7fffffff) return bad(status::invalid_shape, "rows must be in [1, 2^31)");
    if (x_stride < x_cols || y_stride < rows.rows())
      return bad(status::invalid_layout, "a row stride of x or y is shorter than its row");
    if (reinterpret_cast<std::uintptr_t>(rows.w.signs) % 16 != 0)
      return bad(status::invalid_layout, "sign words must be 16-byte aligned");
    return {};
  }

  /// Workspace: x' pairs, then the salient activations (16-bit), then the fold kernel's per-block sums (two each).
  static std::size_t pair_bytes(const Rows& rows, index_t batch) {
    return round_up_16(static_cast<std::size_t>(batch * pair_words(rows.row_words())) * 4);
  }
  static std::size_t tail_bytes(const Rows& rows, index_t batch) {
    return round_up_16(static_cast<std::size_t>(batch * tail_padded(rows.tail_cols())) * 2);
  }
  static int fold_blocks(const Rows& rows) {
    const index_t work = pair_words(rows.row_words()) + tail_padded(rows.tail_cols());  // per batch column
    return static_cast<int>((work + Policy::fold_threads - 1) / Policy::fold_threads);
  }
  static std::size_t workspace_size(const Rows& rows, index_t batch) {
    return pair_bytes(rows, batch) + tail_bytes(rows, batch) +
           round_up_16(static_cast<std::size_t>(2 * batch * fold_blocks(rows)) * 4);
  }

  /// Largest row_tiles (1 or 2, at most the policy's) that still gives ~0.9 blocks per SM.
  static constexpr int max_tiles = Policy::max_row_tiles < 2 ? Policy::max_row_tiles : 2;
  /// Blocks per SM the registers must allow; per-vector scales spilled at 3 (80 registers), so they ask for 2 at most.
  static constexpr int min_blocks = Rows::unit_vector_scale || Policy::min_blocks < 2 ? Policy::min_blocks : 2;
  static int row_tiles(index_t n_rows, int sms) {
    int tiles = max_tiles;
    while (tiles > 1 && (n_rows + 16 * tiles - 1) / (16 * tiles) * 10 < 9 * static_cast<index_t>(sms)) tiles /= 2;
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

  template <class Decode, int Tiles>
  static cudaError_t launch_kernel(const Rows& rows, const void* workspace, Out* y, index_t y_stride, int batch,
                                   cudaStream_t stream, bool programmatic) {
    // Programmatic dependent launch: the GEMV may start while fold_kernel runs; it streams weights and waits
    // (griddepcontrol.wait) before reading x'. Ignored where unsupported (the launch then simply serializes).
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(static_cast<unsigned>((rows.rows() + 16 * Tiles - 1) / (16 * Tiles)));
    config.blockDim = dim3(Policy::warps * 32);
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = programmatic ? 1 : 0;
    const auto* bytes = static_cast<const char*>(workspace);
    const auto* pairs = reinterpret_cast<const std::uint32_t*>(bytes);
    const auto* tail = reinterpret_cast<const std::uint16_t*>(bytes + pair_bytes(rows, batch));
    const auto* sums = reinterpret_cast<const float*>(bytes + pair_bytes(rows, batch) + tail_bytes(rows, batch));
    return cudaLaunchKernelEx(&config, binary_gemv_kernel<Rows, Act, Out, Decode, Policy::warps, Tiles, min_blocks>,
                              rows, pairs, tail, sums, fold_blocks(rows), y, y_stride, batch);
  }

  /// The GEMV launch alone, on x' already folded into `workspace` (run() = fold_kernel + this).
  static cudaError_t launch_gemv(const Rows& rows, const void* workspace, Out* y, index_t y_stride, int batch, int sms,
                                 cudaStream_t stream, bool programmatic = true) {
    if constexpr (bit_capable && Policy::bit_decode_max_batch > 0)
      if (use_bit_decode(rows, batch))
        return launch_kernel<bit_decode, 1>(rows, workspace, y, y_stride, batch, stream, programmatic);
    if (row_tiles(rows.rows(), sms) == 2)
      return launch_kernel<sign_decode, max_tiles>(rows, workspace, y, y_stride, batch, stream, programmatic);
    return launch_kernel<sign_decode, 1>(rows, workspace, y, y_stride, batch, stream, programmatic);
  }

  static outcome run(const Rows& rows, const Act* x, index_t x_stride, Out* y, index_t y_stride, index_t batch,
                     void* workspace, cudaStream_t stream, bool programmatic = true) {
    if (workspace == nullptr || reinterpret_cast<std::uintptr_t>(workspace) % 16 != 0)
      return fail(status::invalid_argument, "cuda::gemv: workspace must be a 16-byte aligned device pointer");
    auto* bytes = static_cast<char*>(workspace);
    auto* pairs = reinterpret_cast<std::uint32_t*>(bytes);
    auto* tail = reinterpret_cast<std::uint16_t*>(bytes + pair_bytes(rows, batch));
    auto* sums = reinterpret_cast<float*>(bytes + pair_bytes(rows, batch) + tail_bytes(rows, batch));
    if (const int n = fold_blocks(rows); n > 0) {
      const dim3 blocks(static_cast<unsigned>(n), static_cast<unsigned>(batch));
      fold_kernel<Rows, Act, Policy::fold_threads><<<blocks, Policy::fold_threads, 0, stream>>>(rows, x, x_stride,
                                                                                                 pairs, tail, sums);
      SAGEPTQ_CUDA_TRY(cudaGetLastError());
    }
    int device = 0, sms = 0;
    SAGEPTQ_CUDA_TRY(cudaGetDevice(&device));
    SAGEPTQ_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    SAGEPTQ_CUDA_TRY(launch_gemv(rows, workspace, y, y_stride, static_cast<int>(batch), sms, stream, programmatic));
    return {};
  }
};

}  // namespace detail

/// GEMV over the sage default format (1 plane, factorized scales, column groups, salient tail).
template <class Act, class Out, class Policy = sm90_policy>
class sage_gemv {
  using impl = detail::binary_gemv<detail::sage_rows, Act, Out, Policy>;

 public:
  struct arguments {
    format::sage_view<device_space> weights;
    const Act* x = nullptr;  ///< batch x cols, x_stride elements between activation rows
    index_t x_stride = 0;
    Out* y = nullptr;        ///< batch x rows, y_stride elements between output rows
    index_t y_stride = 0;
    index_t batch = 1;
  };

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
    return impl::workspace_size(detail::sage_rows{a.weights}, a.batch);
  }
  static outcome run(const arguments& a, void* workspace, cudaStream_t stream = nullptr) {
    if (auto ok = can_implement(a); !ok) return ok;
    return impl::run(detail::sage_rows{a.weights}, a.x, a.x_stride, a.y, a.y_stride, a.batch, workspace, stream);
  }
};

/// GEMV over q1_0 (one fp16 scale per 128 columns of a row).
template <class Act, class Out, class Policy = sm90_policy>
class q1_0_gemv {
  using impl = detail::binary_gemv<detail::q1_0_rows, Act, Out, Policy>;

 public:
  struct arguments {
    format::q1_0_view<device_space> weights;
    const Act* x = nullptr;
    index_t x_stride = 0;
    Out* y = nullptr;
    index_t y_stride = 0;
    index_t batch = 1;
  };

  static outcome can_implement(const arguments& a) {
    return impl::check(detail::q1_0_rows{a.weights}, a.x, a.weights.cols, a.x_stride, a.y, a.y_stride, a.batch);
  }
  static std::size_t workspace_size(const arguments& a) {
    return impl::workspace_size(detail::q1_0_rows{a.weights}, a.batch);
  }
  static outcome run(const arguments& a, void* workspace, cudaStream_t stream = nullptr) {
    if (auto ok = can_implement(a); !ok) return ok;
    return impl::run(detail::q1_0_rows{a.weights}, a.x, a.x_stride, a.y, a.y_stride, a.batch, workspace, stream);
  }
};

}  // namespace cuda::gemv
SAGEPTQ_NAMESPACE_END
