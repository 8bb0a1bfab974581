#pragma once
/// @file dtype.hpp
/// Element types of the tensors sageptq reads and writes in safetensors files, with their on-disk names and sizes,
/// and the mapping from C++ element types. Standard library only.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "../config.hpp"
#include "../core/numeric.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {

enum class dtype : std::uint8_t {
  f32,   ///< "F32"
  f16,   ///< "F16" (IEEE binary16)
  bf16,  ///< "BF16"
  u8,    ///< "U8": byte tensors, used for packed weights
};

/// The safetensors name of a dtype.
constexpr std::string_view to_string(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::u8: return "U8";
  }
  return "?";
}

constexpr std::size_t dtype_size(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::f16:
    case dtype::bf16: return 2;
    case dtype::u8: return 1;
  }
  return 0;
}

/// The dtype with this safetensors name, or nothing for a name this build does not read.
constexpr std::optional<dtype> parse_dtype(std::string_view name) noexcept {
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::u8})
    if (to_string(t) == name) return t;
  return std::nullopt;
}

/// The dtype stored for a C++ element type (float, fp16, bf16, std::uint8_t).
template <class T>
inline constexpr dtype dtype_of = [] {
  using U = std::remove_cv_t<T>;
  static_assert(std::is_same_v<U, float> || std::is_same_v<U, fp16> || std::is_same_v<U, bf16> ||
                    std::is_same_v<U, std::uint8_t>,
                "sageptq: safetensors elements are float, fp16, bf16 or std::uint8_t");
  if constexpr (std::is_same_v<U, float>) return dtype::f32;
  else if constexpr (std::is_same_v<U, fp16>) return dtype::f16;
  else if constexpr (std::is_same_v<U, bf16>) return dtype::bf16;
  else return dtype::u8;
}();

}  // namespace io
SAGEPTQ_NAMESPACE_END
