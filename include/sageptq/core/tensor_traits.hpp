#pragma once
/// @file tensor_traits.hpp
/// How an engine passes its own tensor type to sageptq without wrapping or copying.
///
/// Two ways, pick one per type (providing both is a compile error):
///
/// 1. ADL hook (easiest): in the engine's namespace,
///      sageptq::strided_view<const float, 2> sageptq_to_view(const engine::Tensor& t);
///
/// 2. Traits (non-intrusive, full control): specialize sageptq::tensor_traits<engine::Tensor> with
///      using element_type = const float;   // const for read-only
///      using space = sageptq::host_space;
///      static constexpr int rank = 2;
///      static element_type* data(const engine::Tensor&);
///      static auto extent(const engine::Tensor&, int dim);   // any integral type
///      static auto stride(const engine::Tensor&, int dim);   // in elements
///
/// `sageptq::view(t)` normalises either into a strided_view with 64-bit indices; every stage takes `tensor_like`
/// arguments through it (the Eigen::Ref idea: our code is instantiated on one view type, not on every tensor type).

#include <concepts>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN

/// Specialize for an engine tensor type (see the file comment). The primary template marks "not specialized".
template <class Tensor>
struct tensor_traits {
  using sageptq_not_specialized = void;
};

namespace detail {

template <class T>
concept has_tensor_traits = !requires { typename tensor_traits<T>::sageptq_not_specialized; } && requires(const T& t) {
  typename tensor_traits<T>::element_type;
  typename tensor_traits<T>::space;
  { tensor_traits<T>::rank } -> std::convertible_to<int>;
  tensor_traits<T>::data(t);
  tensor_traits<T>::extent(t, 0);
  tensor_traits<T>::stride(t, 0);
};

template <class T>
concept has_view_hook = requires(const T& t) {
  { sageptq_to_view(t) };
};

template <class T, int R, class S, class I>
SAGEPTQ_HOST_DEVICE constexpr strided_view<T, R, S, index_t> widen(const strided_view<T, R, S, I>& v) noexcept {
  strided_view<T, R, S, index_t> out{v.data, {}, {}};
  for (int d = 0; d < R; ++d) {
    out.extent[d] = static_cast<index_t>(v.extent[d]);
    out.stride[d] = static_cast<index_t>(v.stride[d]);
  }
  return out;
}

}  // namespace detail

/// Normalise any tensor_like value to a strided_view with 64-bit indices.
template <class Tensor>
  requires is_strided_view_v<Tensor> || detail::has_view_hook<Tensor> || detail::has_tensor_traits<Tensor>
constexpr auto view(const Tensor& t) {
  if constexpr (is_strided_view_v<Tensor>) {
    return detail::widen(t);
  } else {
    static_assert(!(detail::has_view_hook<Tensor> && detail::has_tensor_traits<Tensor>),
                  "sageptq: this type provides both sageptq_to_view() and tensor_traits<>; keep one");
    if constexpr (detail::has_view_hook<Tensor>) {
      auto v = sageptq_to_view(t);
      static_assert(is_strided_view_v<decltype(v)>, "sageptq: sageptq_to_view() must return a sageptq::strided_view");
      return detail::widen(v);
    } else {
      using traits = tensor_traits<Tensor>;
      constexpr int rank = traits::rank;
      strided_view<typename traits::element_type, rank, typename traits::space, index_t> v{traits::data(t), {}, {}};
      for (int d = 0; d < rank; ++d) {
        v.extent[d] = static_cast<index_t>(traits::extent(t, d));
        v.stride[d] = static_cast<index_t>(traits::stride(t, d));
      }
      return v;
    }
  }
}

/// Anything `view()` accepts.
template <class T>
concept tensor_like = requires(const T& t) { sageptq::view(t); };

template <class T>
using view_type_t = decltype(sageptq::view(std::declval<const T&>()));

/// A host matrix whose elements convert to `float` (any arithmetic or sageptq storage type).
template <class T>
concept host_matrix_like = tensor_like<T> && view_type_t<T>::rank == 2 &&
                           std::is_same_v<typename view_type_t<T>::space, host_space>;

/// A host vector.
template <class T>
concept host_vector_like = tensor_like<T> && view_type_t<T>::rank == 1 &&
                           std::is_same_v<typename view_type_t<T>::space, host_space>;

SAGEPTQ_NAMESPACE_END
