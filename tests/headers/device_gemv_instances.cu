// Every public CUDA GEMV kernel instantiated, so the nvcc compile check (sm_80 and sm_90, spills fail on sm_90) and
// its kept ptxas -v report cover them all: both formats x activations {fp16, bf16, f32} x outputs {f32, fp16, bf16}
// x both arch policies. Batch is a run-time argument; run() reaches every kernel variant a batch in [1, 8] selects
// (bit_decode for small fp16 batches, sign_decode with one or two row tiles otherwise). Compiled, never launched.

#include <sageptq/cuda/gemv/gemv.cuh>

namespace gemv = SAGEPTQ_NS_QUALIFIER::cuda::gemv;

#define SAGEPTQ_INSTANTIATE_OUT(Act, Policy)                \
  template class gemv::sage_gemv<Act, float, Policy>;         \
  template class gemv::sage_gemv<Act, __half, Policy>;        \
  template class gemv::sage_gemv<Act, __nv_bfloat16, Policy>; \
  template class gemv::q1_0_gemv<Act, float, Policy>;         \
  template class gemv::q1_0_gemv<Act, __half, Policy>;        \
  template class gemv::q1_0_gemv<Act, __nv_bfloat16, Policy>;

#define SAGEPTQ_INSTANTIATE(Policy)                     \
  SAGEPTQ_INSTANTIATE_OUT(__half, Policy)               \
  SAGEPTQ_INSTANTIATE_OUT(__nv_bfloat16, Policy)        \
  SAGEPTQ_INSTANTIATE_OUT(float, Policy)

SAGEPTQ_INSTANTIATE(gemv::sm80_policy)
SAGEPTQ_INSTANTIATE(gemv::sm90_policy)
