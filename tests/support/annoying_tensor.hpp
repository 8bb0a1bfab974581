#pragma once
/// @file annoying_tensor.hpp
/// Hostile engine tensor types, defined only in the tests (Eigen's AnnoyingScalar idea): if the public API
/// works with these, it works with an engine's own tensors without wrapping or copying.
///
///  - 32-bit extents and strides, no default constructor;
///  - a layout nothing is optimised for: transposed (column-major), rows reversed (negative row stride),
///    every other element skipped and padding after each column;
///  - the padding holds NaN, so code that reads outside the logical matrix fails loudly (non_finite_input).
///
/// `annoying_tensor` plugs in through sageptq::tensor_traits, `hooked_tensor` through the ADL hook
/// sageptq_to_view() returning an int32-indexed strided_view.

#include <cstdint>
#include <limits>
#include <vector>

#include <sageptq/core/tensor_traits.hpp>
#include <sageptq/core/tensor_view.hpp>

namespace engine {

/// Owns a buffer holding a logical rows x cols matrix in the hostile layout; the tensors below view it.
template <class T>
class annoying_storage {
 public:
  annoying_storage(const std::vector<T>& row_major, std::int32_t rows, std::int32_t cols)
      : rows_(rows), cols_(cols), buffer_(static_cast<std::size_t>(col_stride() * cols + 1),
                                          T(std::numeric_limits<float>::quiet_NaN())) {
    for (std::int32_t r = 0; r < rows; ++r)
      for (std::int32_t c = 0; c < cols; ++c)
        buffer_[static_cast<std::size_t>(offset(r, c))] = row_major[static_cast<std::size_t>(r * cols + c)];
  }
  annoying_storage(const annoying_storage&) = delete;  // tensors point into the buffer
  annoying_storage& operator=(const annoying_storage&) = delete;

  [[nodiscard]] std::int32_t rows() const noexcept { return rows_; }
  [[nodiscard]] std::int32_t cols() const noexcept { return cols_; }
  [[nodiscard]] std::int32_t row_stride() const noexcept { return -2; }
  [[nodiscard]] std::int32_t col_stride() const noexcept { return 2 * rows_ + 3; }
  /// Address of element (0, 0): the last row of the buffer's first column, since rows run backwards.
  [[nodiscard]] const T* origin() const noexcept { return buffer_.data() + offset(0, 0); }

 private:
  [[nodiscard]] std::int32_t offset(std::int32_t r, std::int32_t c) const noexcept {
    return (rows_ - 1 - r) * 2 + c * col_stride();
  }

  std::int32_t rows_, cols_;
  std::vector<T> buffer_;
};

/// Seen through sageptq::tensor_traits (specialised below).
template <class T>
class annoying_tensor {
 public:
  explicit annoying_tensor(const annoying_storage<T>& s) noexcept : storage_(&s) {}
  [[nodiscard]] const annoying_storage<T>& storage() const noexcept { return *storage_; }

 private:
  const annoying_storage<T>* storage_;
};

/// Seen through the ADL hook below.
template <class T>
class hooked_tensor {
 public:
  explicit hooked_tensor(const annoying_storage<T>& s) noexcept : storage_(&s) {}

  friend sageptq::strided_view<const T, 2, sageptq::host_space, std::int32_t> sageptq_to_view(
      const hooked_tensor& t) noexcept {
    const annoying_storage<T>& s = *t.storage_;
    return {s.origin(), {s.rows(), s.cols()}, {s.row_stride(), s.col_stride()}};
  }

 private:
  const annoying_storage<T>* storage_;
};

}  // namespace engine

template <class T>
struct sageptq::tensor_traits<engine::annoying_tensor<T>> {
  using element_type = const T;
  using space = sageptq::host_space;
  static constexpr int rank = 2;
  static const T* data(const engine::annoying_tensor<T>& t) noexcept { return t.storage().origin(); }
  static std::int32_t extent(const engine::annoying_tensor<T>& t, int dim) noexcept {
    return dim == 0 ? t.storage().rows() : t.storage().cols();
  }
  static std::int32_t stride(const engine::annoying_tensor<T>& t, int dim) noexcept {
    return dim == 0 ? t.storage().row_stride() : t.storage().col_stride();
  }
};
