#pragma once
/// @file config.hpp
/// Namespace, host/device and error-handling macros shared by every header. Standard library only.
///
/// Overridable before the first sageptq include:
///  - SAGEPTQ_WRAPPED_NAMESPACE: outer namespace so a vendor can embed two copies in one binary.
///  - SAGEPTQ_ASSERT_HANDLER(cond, file, line): called when an assertion fails (default: print + abort).
///  - SAGEPTQ_ASSERT(x): debug-only precondition check (compiled out by NDEBUG).
///  - SAGEPTQ_THROW(x): used only by host convenience layers; under -fno-exceptions it fails an assertion.

#include "version.hpp"

#if defined(SAGEPTQ_WRAPPED_NAMESPACE)
#define SAGEPTQ_NS_PREFIX namespace SAGEPTQ_WRAPPED_NAMESPACE {
#define SAGEPTQ_NS_POSTFIX }
#define SAGEPTQ_NS_QUALIFIER ::SAGEPTQ_WRAPPED_NAMESPACE::sageptq
#else
#define SAGEPTQ_NS_PREFIX
#define SAGEPTQ_NS_POSTFIX
#define SAGEPTQ_NS_QUALIFIER ::sageptq
#endif

// The inline namespace carries the ABI version: two minor versions linked into one binary cannot collide.
#define SAGEPTQ_ABI_NAMESPACE v0
#define SAGEPTQ_NAMESPACE_BEGIN SAGEPTQ_NS_PREFIX namespace sageptq { inline namespace SAGEPTQ_ABI_NAMESPACE {
#define SAGEPTQ_NAMESPACE_END } } SAGEPTQ_NS_POSTFIX

#if defined(__CUDACC__) || (defined(__clang__) && defined(__CUDA__))
#define SAGEPTQ_HOST_DEVICE __host__ __device__ inline
#define SAGEPTQ_DEVICE_COMPILER 1
#else
#define SAGEPTQ_HOST_DEVICE inline
#define SAGEPTQ_DEVICE_COMPILER 0
#endif

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
#define SAGEPTQ_HAS_EXCEPTIONS 1
#else
#define SAGEPTQ_HAS_EXCEPTIONS 0
#endif

#ifndef SAGEPTQ_ASSERT_HANDLER
#include <cstdio>
#include <cstdlib>
#define SAGEPTQ_ASSERT_HANDLER(cond, file, line) \
  (std::fprintf(stderr, "sageptq: assertion failed: %s (%s:%d)\n", cond, file, line), std::abort())
#endif

#ifndef SAGEPTQ_ASSERT
#if defined(NDEBUG) || (defined(__CUDA_ARCH__))
#define SAGEPTQ_ASSERT(x) ((void)0)
#else
#define SAGEPTQ_ASSERT(x) ((x) ? (void)0 : (void)SAGEPTQ_ASSERT_HANDLER(#x, __FILE__, __LINE__))
#endif
#endif

#ifndef SAGEPTQ_THROW
#if SAGEPTQ_HAS_EXCEPTIONS
#define SAGEPTQ_THROW(x) throw x
#else
// The thrown expression is not evaluated: error types exist only when exceptions do.
#define SAGEPTQ_THROW(x) SAGEPTQ_ASSERT_HANDLER("error raised with exceptions disabled", __FILE__, __LINE__)
#endif
#endif
