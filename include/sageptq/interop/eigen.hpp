#pragma once
/// @file eigen.hpp
/// Opt-in Eigen adaptors (include explicitly; core never includes Eigen).
///
///  - Every dense Eigen expression with direct memory access (Matrix and Array of either storage order, Map with
///    any InnerStride/OuterStride/Stride, Ref, Block, Transpose of those) is a tensor_like rank-2 host tensor, so
///    `sageptq::quant::quantize_rtn(eigen_matrix, cfg)` works without a copy. Vectors are n x 1 or 1 x n matrices,
///    as in Eigen. Expressions without storage (a + b, products) are rejected at compile time: evaluate them first.
///    `sageptq::view(m)` is read-only; `interop::mutable_view(m)` gives a writable view of a writable expression.
///  - `interop::as_eigen(view)` is the reverse: an Eigen::Map over a host strided_view of an arithmetic type,
///    with the view's strides (negative ones included: a map with dynamic strides addresses coefficients by plain
///    pointer arithmetic), for stages that compute with Eigen.

#include <array>
#include <type_traits>

#include <Eigen/Core>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN

namespace interop {

/// A dense Eigen expression that owns or references addressable storage (data() with inner/outer strides).
template <class T>
concept eigen_direct_access = std::is_base_of_v<Eigen::DenseBase<T>, T> &&
                              (static_cast<unsigned>(T::Flags) & Eigen::DirectAccessBit) != 0;

namespace detail {
/// {row stride, column stride} of a direct-access expression. Eigen addresses (i, j) as
/// data + i * innerStride + j * outerStride in column-major storage and the other way round in row-major storage;
/// vector-shaped blocks report the storage order that makes this hold (a column of a row-major matrix is
/// column-major with inner stride = the matrix's row stride).
template <class E>
std::array<index_t, 2> eigen_strides(const E& m) noexcept {
  const index_t inner = m.innerStride(), outer = m.outerStride();
  return E::IsRowMajor ? std::array<index_t, 2>{outer, inner} : std::array<index_t, 2>{inner, outer};
}
}  // namespace detail

/// What mutable_view() can write through: a non-const expression with writable storage, either an lvalue or a
/// temporary Block/Map/Ref (they refer to storage that outlives them; a temporary Matrix would not).
template <class Expr>
concept eigen_writable =
    eigen_direct_access<std::remove_cvref_t<Expr>> &&
    (static_cast<unsigned>(std::remove_cvref_t<Expr>::Flags) & Eigen::LvalueBit) != 0 &&
    !std::is_const_v<std::remove_reference_t<Expr>> &&
    (std::is_lvalue_reference_v<Expr> ||
     !std::is_base_of_v<Eigen::PlainObjectBase<std::remove_cvref_t<Expr>>, std::remove_cvref_t<Expr>>);

/// Writable view of an Eigen expression, e.g. `decode(packed, interop::mutable_view(m.block(0, 0, r, c)))`.
template <class Expr>
  requires eigen_writable<Expr>
[[nodiscard]] auto mutable_view(Expr&& m) noexcept {
  using scalar = typename std::remove_cvref_t<Expr>::Scalar;
  const auto stride = detail::eigen_strides(m);
  return matrix_view<scalar>{m.data(), {m.rows(), m.cols()}, {stride[0], stride[1]}};
}

/// Eigen::Map over a host view of an arithmetic element type, with the view's element strides.
/// The map is row-major (outer stride = row stride, inner stride = column stride) and const when the view is.
template <class T, class Index>
[[nodiscard]] auto as_eigen(const strided_view<T, 2, host_space, Index>& v) noexcept {
  static_assert(std::is_arithmetic_v<std::remove_cv_t<T>>,
                "sageptq: as_eigen() maps arithmetic element types only (convert fp16/bf16 to float first)");
  using plain = Eigen::Matrix<std::remove_cv_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using mapped = std::conditional_t<std::is_const_v<T>, const plain, plain>;
  using stride = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  return Eigen::Map<mapped, Eigen::Unaligned, stride>(v.data, v.rows(), v.cols(), stride(v.stride[0], v.stride[1]));
}

/// Eigen::Map over a host vector view, as a column vector with the view's stride.
template <class T, class Index>
[[nodiscard]] auto as_eigen(const strided_view<T, 1, host_space, Index>& v) noexcept {
  static_assert(std::is_arithmetic_v<std::remove_cv_t<T>>,
                "sageptq: as_eigen() maps arithmetic element types only (convert fp16/bf16 to float first)");
  using plain = Eigen::Matrix<std::remove_cv_t<T>, Eigen::Dynamic, 1>;
  using mapped = std::conditional_t<std::is_const_v<T>, const plain, plain>;
  using stride = Eigen::InnerStride<Eigen::Dynamic>;
  return Eigen::Map<mapped, Eigen::Unaligned, stride>(v.data, v.extent[0], stride(v.stride[0]));
}

}  // namespace interop

/// Read-only traits for every direct-access Eigen expression (see the file comment).
template <class T>
  requires interop::eigen_direct_access<T>
struct tensor_traits<T> {
  using element_type = const typename T::Scalar;
  using space = host_space;
  static constexpr int rank = 2;
  static element_type* data(const T& m) noexcept { return m.data(); }
  static index_t extent(const T& m, int dim) noexcept { return dim == 0 ? m.rows() : m.cols(); }
  static index_t stride(const T& m, int dim) noexcept { return interop::detail::eigen_strides(m)[dim]; }
};

SAGEPTQ_NAMESPACE_END
