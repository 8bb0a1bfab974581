#pragma once
/// @file tensor_view.hpp
/// `strided_view`: the non-owning, trivially copyable view every stage and kernel takes.
///
/// Strides are in elements (as in DLPack and std::layout_stride), may be negative or zero, and are never bytes.
/// The memory space is a type parameter. The view is an aggregate, usable as a CUDA kernel argument.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "memory_space.hpp"

SAGEPTQ_NAMESPACE_BEGIN

using index_t = std::int64_t;

template <class T, int Rank, class Space = host_space, class Index = index_t>
struct strided_view {
  static_assert(Rank >= 1 && Rank <= 4, "sageptq: strided_view supports ranks 1 to 4");
  static_assert(std::is_integral_v<Index> && std::is_signed_v<Index>, "sageptq: index type must be signed integral");

  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using index_type = Index;
  using space = Space;
  static constexpr int rank = Rank;

  T* data = nullptr;
  Index extent[Rank] = {};
  Index stride[Rank] = {};

  template <class... I>
  SAGEPTQ_HOST_DEVICE constexpr T& operator()(I... i) const noexcept {
    static_assert(sizeof...(I) == Rank, "sageptq: wrong number of indices");
    Index idx[] = {static_cast<Index>(i)...};
    Index off = 0;
    for (int d = 0; d < Rank; ++d) off += idx[d] * stride[d];
    return data[off];
  }

  SAGEPTQ_HOST_DEVICE constexpr Index size() const noexcept {
    Index n = 1;
    for (int d = 0; d < Rank; ++d) n *= extent[d];
    return n;
  }
  SAGEPTQ_HOST_DEVICE constexpr bool empty() const noexcept { return size() == 0; }

  /// Matrix helpers (rank 2): rows = extent[0], cols = extent[1].
  SAGEPTQ_HOST_DEVICE constexpr Index rows() const noexcept { return extent[0]; }
  SAGEPTQ_HOST_DEVICE constexpr Index cols() const noexcept {
    static_assert(Rank == 2, "sageptq: cols() needs a rank-2 view");
    return extent[1];
  }

  /// True when elements are laid out densely in row-major (C) order.
  SAGEPTQ_HOST_DEVICE constexpr bool is_row_major_contiguous() const noexcept {
    Index expected = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (extent[d] != 1 && stride[d] != expected) return false;
      expected *= extent[d];
    }
    return true;
  }

  /// Row i of a matrix as a rank-1 view.
  SAGEPTQ_HOST_DEVICE constexpr strided_view<T, 1, Space, Index> row(Index i) const noexcept {
    static_assert(Rank == 2, "sageptq: row() needs a rank-2 view");
    return {data + i * stride[0], {extent[1]}, {stride[1]}};
  }
  /// Column j of a matrix as a rank-1 view.
  SAGEPTQ_HOST_DEVICE constexpr strided_view<T, 1, Space, Index> col(Index j) const noexcept {
    static_assert(Rank == 2, "sageptq: col() needs a rank-2 view");
    return {data + j * stride[1], {extent[0]}, {stride[0]}};
  }
  /// Sub-matrix [r0, r0+nr) x [c0, c0+nc).
  SAGEPTQ_HOST_DEVICE constexpr strided_view block(Index r0, Index c0, Index nr, Index nc) const noexcept {
    static_assert(Rank == 2, "sageptq: block() needs a rank-2 view");
    return {data + r0 * stride[0] + c0 * stride[1], {nr, nc}, {stride[0], stride[1]}};
  }
  /// Transposed matrix (no copy).
  SAGEPTQ_HOST_DEVICE constexpr strided_view transposed() const noexcept {
    static_assert(Rank == 2, "sageptq: transposed() needs a rank-2 view");
    return {data, {extent[1], extent[0]}, {stride[1], stride[0]}};
  }

  /// Implicit conversion to a view of const elements. U is deduced from the target type (U == T), so a view of
  /// const elements declares no conversion to itself.
  template <class U, std::enable_if_t<std::is_same_v<U, T> && !std::is_const_v<U>, int> = 0>
  SAGEPTQ_HOST_DEVICE constexpr operator strided_view<const U, Rank, Space, Index>() const noexcept {
    strided_view<const T, Rank, Space, Index> v{data, {}, {}};
    for (int d = 0; d < Rank; ++d) {
      v.extent[d] = extent[d];
      v.stride[d] = stride[d];
    }
    return v;
  }
};

template <class T, class Space = host_space>
using matrix_view = strided_view<T, 2, Space>;
template <class T, class Space = host_space>
using vector_view = strided_view<T, 1, Space>;

/// Row-major matrix view over `data` with `row_stride` elements between rows (defaults to `cols`).
template <class Space = host_space, class T>
SAGEPTQ_HOST_DEVICE constexpr matrix_view<T, Space> make_matrix_view(T* data, index_t rows, index_t cols,
                                                                     index_t row_stride = -1) noexcept {
  return {data, {rows, cols}, {row_stride < 0 ? cols : row_stride, 1}};
}

/// Contiguous vector view over `data`.
template <class Space = host_space, class T>
SAGEPTQ_HOST_DEVICE constexpr vector_view<T, Space> make_vector_view(T* data, index_t n) noexcept {
  return {data, {n}, {1}};
}

template <class T>
struct is_strided_view : std::false_type {};
template <class T, int R, class S, class I>
struct is_strided_view<strided_view<T, R, S, I>> : std::true_type {};
template <class T>
inline constexpr bool is_strided_view_v = is_strided_view<std::remove_cv_t<T>>::value;

static_assert(std::is_trivially_copyable_v<matrix_view<float>>, "views must be trivially copyable");

SAGEPTQ_NAMESPACE_END
