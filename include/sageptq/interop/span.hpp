#pragma once
/// @file span.hpp
/// Opt-in adaptors for standard containers (include explicitly; core never includes this file).
///
///  - std::span<T, N>, std::vector<T>, std::array<T, N> become tensor_like rank-1 host tensors through
///    tensor_traits, so `sageptq::view(v)` works on them directly (a vector has no shape beyond its length).
///  - `interop::as_matrix(range, rows, cols [, row_stride])` views any contiguous range as a row-major matrix:
///    the 2-D adaptor for std::vector/std::span storage. Raw pointers use make_matrix_view (core/tensor_view.hpp).
/// Element types keep their constness: a view of a const vector is read-only.

#include <array>
#include <cstddef>
#include <iterator>
#include <ranges>
#include <span>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN

namespace interop::detail {
/// Traits shared by every contiguous standard container: rank 1, unit stride.
template <class Element, class Container>
struct contiguous_traits {
  using element_type = Element;
  using space = host_space;
  static constexpr int rank = 1;
  static element_type* data(const Container& c) noexcept { return std::data(c); }
  static index_t extent(const Container& c, int) noexcept { return static_cast<index_t>(std::size(c)); }
  static index_t stride(const Container&, int) noexcept { return 1; }
};
}  // namespace interop::detail

/// A span views mutable elements even when the span object itself is const.
template <class T, std::size_t N>
struct tensor_traits<std::span<T, N>> : interop::detail::contiguous_traits<T, std::span<T, N>> {};

/// vector<bool> is packed bits, not an array of bools: it stays unsupported.
template <class T, class Alloc>
  requires(!std::is_same_v<T, bool>)
struct tensor_traits<std::vector<T, Alloc>> : interop::detail::contiguous_traits<const T, std::vector<T, Alloc>> {};

template <class T, std::size_t N>
struct tensor_traits<std::array<T, N>> : interop::detail::contiguous_traits<const T, std::array<T, N>> {};

namespace interop {

/// Row-major `rows x cols` matrix view over a contiguous range (`row_stride` elements between rows, default `cols`).
/// The range must outlive the view (rvalue containers are rejected; rvalue spans are fine). The range must hold
/// the whole matrix: a shorter one is a precondition violation (SAGEPTQ_ASSERT).
template <std::ranges::contiguous_range Range>
  requires std::ranges::sized_range<Range> && std::ranges::borrowed_range<Range>
[[nodiscard]] constexpr auto as_matrix(Range&& range, index_t rows, index_t cols, index_t row_stride = -1) noexcept {
  using element = std::remove_reference_t<std::ranges::range_reference_t<Range>>;
  const index_t stride = row_stride < 0 ? cols : row_stride;
  SAGEPTQ_ASSERT(rows >= 0 && cols >= 0 && stride >= cols);
  SAGEPTQ_ASSERT(rows == 0 || cols == 0 ||
                 (rows - 1) * stride + cols <= static_cast<index_t>(std::ranges::size(range)));
  return matrix_view<element>{std::ranges::data(range), {rows, cols}, {stride, 1}};
}

/// Contiguous vector view over a range (mutable when the range is).
template <std::ranges::contiguous_range Range>
  requires std::ranges::sized_range<Range> && std::ranges::borrowed_range<Range>
[[nodiscard]] constexpr auto as_vector(Range&& range) noexcept {
  using element = std::remove_reference_t<std::ranges::range_reference_t<Range>>;
  return vector_view<element>{std::ranges::data(range), {static_cast<index_t>(std::ranges::size(range))}, {1}};
}

}  // namespace interop
SAGEPTQ_NAMESPACE_END
