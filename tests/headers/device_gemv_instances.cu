// Every public CUDA GEMV kernel instantiated, so the nvcc compile check (sm_80 and sm_90, spills fail on sm_90) and
// its kept ptxas -v report cover them all: the formats (sage, q1_0, rtn) alone and fused (up to 3 matrices sharing x)
// x activations {fp16, bf16, f32} x outputs {f32, fp16, bf16} x both arch policies. Batch is a run-time argument;
// run() reaches every kernel variant a batch in [1, 8] selects (sage on sm_90: activation planes with one or two row
// tiles; otherwise bit_decode for small fp16 batches, sign_decode with one or two row tiles; rtn: one kernel per code
// width 1..8). Compiled, never launched.

#include <sageptq/cuda/gemv/gemv.cuh>

namespace gemv = SAGEPTQ_NS_QUALIFIER::cuda::gemv;

#define SAGEPTQ_INSTANTIATE_FORMAT(Format, Act, Out, Policy) \
  template class gemv::Format<Act, Out, Policy>;             \
  template class gemv::fused_gemv<gemv::Format<Act, Out, Policy>>;

#define SAGEPTQ_INSTANTIATE_ONE(Act, Out, Policy)          \
  SAGEPTQ_INSTANTIATE_FORMAT(sage_gemv, Act, Out, Policy) \
  SAGEPTQ_INSTANTIATE_FORMAT(q1_0_gemv, Act, Out, Policy) \
  SAGEPTQ_INSTANTIATE_FORMAT(rtn_gemv, Act, Out, Policy)

#define SAGEPTQ_INSTANTIATE_OUT(Act, Policy)            \
  SAGEPTQ_INSTANTIATE_ONE(Act, float, Policy)           \
  SAGEPTQ_INSTANTIATE_ONE(Act, __half, Policy)          \
  SAGEPTQ_INSTANTIATE_ONE(Act, __nv_bfloat16, Policy)

#define SAGEPTQ_INSTANTIATE(Policy)              \
  SAGEPTQ_INSTANTIATE_OUT(__half, Policy)        \
  SAGEPTQ_INSTANTIATE_OUT(__nv_bfloat16, Policy) \
  SAGEPTQ_INSTANTIATE_OUT(float, Policy)

SAGEPTQ_INSTANTIATE(gemv::sm80_policy)
SAGEPTQ_INSTANTIATE(gemv::sm90_policy)

// sm90_fp16_policy differs from sm90_policy only for sage (fp16 operands instead of activation planes).
#define SAGEPTQ_INSTANTIATE_SAGE_OUT(Act)                                     \
  SAGEPTQ_INSTANTIATE_FORMAT(sage_gemv, Act, float, gemv::sm90_fp16_policy)  \
  SAGEPTQ_INSTANTIATE_FORMAT(sage_gemv, Act, __half, gemv::sm90_fp16_policy) \
  SAGEPTQ_INSTANTIATE_FORMAT(sage_gemv, Act, __nv_bfloat16, gemv::sm90_fp16_policy)
SAGEPTQ_INSTANTIATE_SAGE_OUT(__half)
SAGEPTQ_INSTANTIATE_SAGE_OUT(__nv_bfloat16)
SAGEPTQ_INSTANTIATE_SAGE_OUT(float)
