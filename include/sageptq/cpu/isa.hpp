#pragma once
/// @file isa.hpp
/// Which SIMD path the CPU kernels take: detected at run time (__builtin_cpu_supports), so the library builds without
/// -march flags and the same binary runs everywhere; the environment variable
/// SAGEPTQ_CPU_ISA=scalar|avx2|avx512|avx512_vnni forces one path, so tests exercise all of them on one machine.
/// scalar, avx2 and avx512 multiply fp32 activations; avx512_vnni quantizes them to int8 per block of 256 (sage) or
/// 128 (q1_0) columns (cpu/int8_activations.hpp) and accumulates exactly in int32. Threading: none; reads the
/// environment per call.

#include <cstdlib>
#include <string>
#include <string_view>

#include "../config.hpp"
#include "../core/status.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SAGEPTQ_CPU_X86 1
#else
#define SAGEPTQ_CPU_X86 0
#endif

SAGEPTQ_NAMESPACE_BEGIN
namespace cpu {

enum class isa : int { scalar = 0, avx2 = 1, avx512 = 2, avx512_vnni = 3 };

inline constexpr isa all_isas[] = {isa::scalar, isa::avx2, isa::avx512, isa::avx512_vnni};

constexpr const char* to_string(isa path) noexcept {
  switch (path) {
    case isa::scalar: return "scalar";
    case isa::avx2: return "avx2";
    case isa::avx512: return "avx512";
    case isa::avx512_vnni: return "avx512_vnni";
  }
  return "unknown";
}

/// True when this CPU runs `path` (AVX2 needs FMA too; AVX-512 needs F, BW, VL and DQ; avx512_vnni also VNNI).
inline bool supported(isa path) noexcept {
#if SAGEPTQ_CPU_X86
  __builtin_cpu_init();
  switch (path) {
    case isa::scalar: return true;
    case isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case isa::avx512_vnni: return supported(isa::avx512) && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return path == isa::scalar;
#endif
}

/// The fastest supported path.
inline isa best_isa() noexcept {
  for (isa path : {isa::avx512_vnni, isa::avx512, isa::avx2})
    if (supported(path)) return path;
  return isa::scalar;
}

/// best_isa(), or the path SAGEPTQ_CPU_ISA names: invalid_argument for an unknown name, unsupported for a path this
/// CPU lacks (a forced path never silently falls back: a test that asked for AVX-512 must run AVX-512).
inline result<isa> active_isa() {
  const char* forced = std::getenv("SAGEPTQ_CPU_ISA");
  if (forced == nullptr || *forced == '\0') return best_isa();
  for (isa path : all_isas) {
    if (std::string_view(forced) != to_string(path)) continue;
    if (!supported(path))
      return fail(status::unsupported, std::string("SAGEPTQ_CPU_ISA=") + forced + " but this CPU lacks it");
    return path;
  }
  return fail(status::invalid_argument,
              std::string("SAGEPTQ_CPU_ISA=") + forced + " is not one of scalar, avx2, avx512, avx512_vnni");
}

}  // namespace cpu
SAGEPTQ_NAMESPACE_END
