#pragma once
/// @file byte_io.hpp
/// Little-endian byte streams for the serialized formats: values are written and read by shifts, so the bytes do not
/// depend on the host's endianness. The reader never reads past its buffer; every read reports success.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "../config.hpp"
#include "../core/numeric.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

/// Bytes of one stored element (the unsigned integer or 16-bit float types of the formats).
template <class T>
inline constexpr std::size_t element_bytes = sizeof(T);

namespace detail {
template <class T>
constexpr std::uint64_t raw_bits(const T& v) noexcept {
  if constexpr (requires { v.bits; })
    return v.bits;
  else
    return static_cast<std::uint64_t>(v);
}
template <class T>
constexpr T from_raw_bits(std::uint64_t u) noexcept {
  if constexpr (requires { T::from_bits(std::uint16_t{}); })
    return T::from_bits(static_cast<std::uint16_t>(u));
  else
    return static_cast<T>(u);
}
}  // namespace detail

/// FNV-1a 64 of `bytes`, continuing from `hash` (the offset basis starts a fresh hash).
constexpr std::uint64_t fnv1a64(std::span<const std::uint8_t> bytes,
                                std::uint64_t hash = 0xcbf29ce484222325ull) noexcept {
  for (std::uint8_t b : bytes) hash = (hash ^ b) * 0x100000001b3ull;
  return hash;
}

class byte_writer {
 public:
  explicit byte_writer(std::vector<std::uint8_t>& out) noexcept : out_(out) {}

  /// Append the low `bytes` bytes of v, least significant first.
  void put(std::uint64_t v, std::size_t bytes) {
    for (std::size_t i = 0; i < bytes; ++i) out_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  template <class T>
  void put_array(const std::vector<T>& values) {
    for (const T& v : values) put(detail::raw_bits(v), element_bytes<T>);
  }
  /// Zero bytes up to the next multiple of `alignment`.
  void pad_to(std::size_t alignment) {
    while (out_.size() % alignment != 0) out_.push_back(0);
  }
  [[nodiscard]] std::size_t size() const noexcept { return out_.size(); }

 private:
  std::vector<std::uint8_t>& out_;
};

class byte_reader {
 public:
  explicit byte_reader(std::span<const std::uint8_t> in) noexcept : in_(in) {}

  [[nodiscard]] bool get(std::uint64_t& v, std::size_t bytes) noexcept {
    if (in_.size() - pos_ < bytes) return false;
    v = 0;
    for (std::size_t i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(in_[pos_ + i]) << (8 * i);
    pos_ += bytes;
    return true;
  }
  template <class T>
  [[nodiscard]] bool get_array(std::vector<T>& values) noexcept {
    if ((in_.size() - pos_) / element_bytes<T> < values.size()) return false;
    for (T& v : values) {
      std::uint64_t u = 0;
      (void)get(u, element_bytes<T>);
      v = detail::from_raw_bits<T>(u);
    }
    return true;
  }
  /// Skip to the next multiple of `alignment`; false if the buffer ends first or a skipped byte is not zero.
  [[nodiscard]] bool skip_zero_padding(std::size_t alignment) noexcept {
    while (pos_ % alignment != 0) {
      if (pos_ >= in_.size() || in_[pos_] != 0) return false;
      ++pos_;
    }
    return true;
  }
  [[nodiscard]] std::size_t position() const noexcept { return pos_; }
  [[nodiscard]] std::size_t remaining() const noexcept { return in_.size() - pos_; }

 private:
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

}  // namespace format
SAGEPTQ_NAMESPACE_END
