#pragma once
/// @file common.cuh
/// What the GEMV kernels of every format share: the batch and fusion limits, the 16-bit operand type of each
/// activation type, conversions, and how a block of a fused launch finds its matrix. Threading: none (device helpers).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "../../core/numeric.hpp"
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

template <class T>
__device__ __forceinline__ T bits_as(std::uint16_t bits) {
  if constexpr (std::is_same_v<T, __half>)
    return __ushort_as_half(bits);
  else
    return __ushort_as_bfloat16(bits);
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

/// Up to max_fused matrices of one format that share x (q/k/v, gate/up) run in one launch (one fold launch and one
/// GEMV launch for the binary formats); a kernel's N is the capacity of its problem list (1 for a single matrix: the
/// index is then a constant).
inline constexpr int max_fused = 3;

/// The matrix a block belongs to: the last one whose first block is at or before blockIdx.x (uniform per block).
template <int N>
__device__ __forceinline__ int problem_of_block(const int (&first_block)[N], int count) {
  int m = 0;
#pragma unroll
  for (int i = 1; i < N; ++i)
    if (i < count && static_cast<int>(blockIdx.x) >= first_block[i]) m = i;
  return m;
}

}  // namespace cuda::gemv::detail
SAGEPTQ_NAMESPACE_END
