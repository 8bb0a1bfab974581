#pragma once
/// @file validate.hpp
/// Input checks shared by every stage entry point, so each error reads the same wherever it is raised.

#include <cstddef>
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

/// Scales stored as fp16 (`per_row` to a row; scale_at(i) the i-th, already rounded to fp16) must have fitted its
/// range: unsupported, naming the row of the first that rounded to Inf.
template <class ScaleAt>
outcome check_fp16_scales(std::size_t count, index_t per_row, ScaleAt scale_at, const char* what) {
  for (std::size_t i = 0; i < count; ++i)
    if (!is_finite(scale_at(i)))
      return fail(status::unsupported, std::string(what) + " of row " +
                                           std::to_string(static_cast<index_t>(i) / per_row) +
                                           " exceeds the fp16 range");
  return {};
}

SAGEPTQ_NAMESPACE_END
