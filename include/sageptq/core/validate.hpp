#pragma once
/// @file validate.hpp
/// Input checks shared by every stage entry point, so each error reads the same wherever it is raised.

#include <string>

#include "../config.hpp"
#include "numeric.hpp"
#include "status.hpp"
#include "tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN

/// A matrix must be non-empty and hold only finite values.
template <class T, class S>
outcome check_finite_matrix(const strided_view<T, 2, S>& m, const char* what) {
  if (m.rows() <= 0 || m.cols() <= 0)
    return fail(status::invalid_shape, std::string(what) + " is empty (" + std::to_string(m.rows()) + " x " +
                                           std::to_string(m.cols()) + ")");
  for (index_t r = 0; r < m.rows(); ++r)
    for (index_t c = 0; c < m.cols(); ++c)
      if (!is_finite(to_float(m(r, c))))
        return fail(status::non_finite_input, std::string(what) + " has a non-finite value at (" + std::to_string(r) +
                                                  ", " + std::to_string(c) + ")");
  return {};
}

SAGEPTQ_NAMESPACE_END
