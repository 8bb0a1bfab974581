#pragma once
/// @file decode.hpp
/// The element-wise decode shared by the formats whose view reads one weight at a time (`view(r, c)`): the scalar
/// reference every kernel of those formats is tested against.

#include <type_traits>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format::detail {

template <class Space, class View>
void decode_by_element(const View& packed, matrix_view<float> out) {
  static_assert(std::is_same_v<Space, host_space>, "sageptq: decode() runs on host memory");
  SAGEPTQ_ASSERT(out.rows() == packed.rows && out.cols() == packed.cols);
  for (index_t r = 0; r < packed.rows; ++r)
    for (index_t c = 0; c < packed.cols; ++c) out(r, c) = packed(r, c);
}

}  // namespace format::detail
SAGEPTQ_NAMESPACE_END
