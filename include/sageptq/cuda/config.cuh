#pragma once
/// @file config.cuh
/// What every device header shares: the kernel attribute macro, an architecture guard, and the bridge from
/// cudaError_t to the library's error model (core/status.hpp). Host code calls these; nothing here launches work.

#include <cuda_runtime_api.h>

#include <cub/version.cuh>
#include <string>

#include "../config.hpp"
#include "../core/status.hpp"

static_assert(__cplusplus >= 202002L, "sageptq needs C++20: compile .cu files with -std=c++20");
// CUDA 12 is the first toolkit with sm_90 kernels that our launchers target, and it ships CUB 2.
static_assert(CUB_VERSION >= 200000, "sageptq needs CUB 2.0 or newer (CUDA 12+)");

/// Every sageptq __global__ is hidden: two shared objects built with different -arch lists must not share weak
/// kernel symbols, or one library launches the other's kernel (NVIDIA/cub#545, CCCL's _CCCL_KERNEL_ATTRIBUTES).
#if defined(_MSC_VER)
#define SAGEPTQ_KERNEL __global__
#else
#define SAGEPTQ_KERNEL __global__ __attribute__((visibility("hidden")))
#endif

/// The architecture of the current device pass (e.g. 900 for sm_90), 0 in host passes. Use it only inside function
/// bodies, so host and device passes see the same declarations and class layouts.
#if defined(__CUDA_ARCH__)
#define SAGEPTQ_CUDA_ARCH __CUDA_ARCH__
#else
#define SAGEPTQ_CUDA_ARCH 0
#endif

/// Return the failure from the enclosing function (which returns `outcome` or `result<T>`) when `call` fails.
#define SAGEPTQ_CUDA_TRY(call)                                                                \
  do {                                                                                        \
    if (auto sageptq_cuda_try_ = SAGEPTQ_NS_QUALIFIER::cuda::to_outcome((call), #call); !sageptq_cuda_try_) \
      return sageptq_cuda_try_;                                                               \
  } while (0)

SAGEPTQ_NAMESPACE_BEGIN
namespace cuda {

/// status::success for cudaSuccess; otherwise status::device_error with a message naming the call and carrying the
/// runtime's error name, number and text, e.g. "cudaMalloc(&p, n) failed: cudaErrorMemoryAllocation (2): out of
/// memory". Does not clear or read the sticky error state beyond `error` itself.
inline outcome to_outcome(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return {};
  return fail(status::device_error, std::string(what) + " failed: " + cudaGetErrorName(error) + " (" +
                                        std::to_string(static_cast<int>(error)) + "): " + cudaGetErrorString(error));
}

}  // namespace cuda
SAGEPTQ_NAMESPACE_END
