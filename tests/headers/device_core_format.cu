// The device pass of core/ and format/. nvcc compiles an inline __host__ __device__ function for the device only
// when device code uses it, so this kernel touches what a GEMV kernel will: views, fp16/bf16 conversion, both
// packed formats and the status names. Compiled for sm_80 and sm_90 by sageptq_cuda_check; never launched.

#include "core_format_headers.hpp"  // every core/ and format/ header (generated)

#include <sageptq/cuda/config.cuh>

#include <type_traits>

namespace sq = SAGEPTQ_NS_QUALIFIER;

static_assert(std::is_trivially_copyable_v<sq::matrix_view<float, sq::device_space>>);
static_assert(std::is_trivially_copyable_v<sq::format::q1_0_view<sq::device_space>>);
static_assert(std::is_trivially_copyable_v<sq::format::rtn_view<sq::device_space>>);

SAGEPTQ_KERNEL void sageptq_exercise_device_paths(sq::matrix_view<float, sq::device_space> out,
                                                  sq::format::q1_0_view<sq::device_space> signs,
                                                  sq::format::rtn_view<sq::device_space> codes) {
  const sq::index_t r = blockIdx.x;
  const sq::index_t c = threadIdx.x;
  if (r >= out.rows() || c >= out.cols()) return;
  const float x = signs(r, c) + codes(r, c) + sq::fp16::from_bits(0x3c00).to_float();
  const float y = sq::round_to_fp16(x) + sq::round_to_bf16(x) + sq::bf16(x).to_float();
  const char* name = sq::to_string(sq::status::device_error);
  out.transposed()(c, r) = sq::is_finite(y) ? y + static_cast<float>(name[0]) : 0.0f;
  out.row(r)(c) += static_cast<float>(sq::format::words_for_bits(c) + sq::format::q1_0::words_per_row(c));
}
