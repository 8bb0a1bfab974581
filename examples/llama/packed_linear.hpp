#pragma once
// Linear layers whose weight is packed (quantized) in any sageptq format. packed_linear holds one packed matrix;
// column_parts_linear holds a weight stored as column parts (input-channel blocks, each packed in its own format, as
// sageptq/io/quantized_model.hpp stores them). Both keep the f32 decode (their base, decoded_linear): batches of up
// to cpu::max_batch rows (incremental decoding) run the library's CPU GEMV kernels on the packed weights where they
// implement the format (sage with column groups, q1_0, rtn); longer batches (whole evaluation windows) multiply the
// decoded weights with the dense engine's matmul. The two paths agree up to the kernels' stated rounding
// (cpu/gemv.hpp): float rounding, plus the int8 rounding of the activations on the avx512_vnni path; column parts
// add one float rounding per part (their outputs are summed in column order).

#include <sageptq/cpu/gemv.hpp>
#include <sageptq/io/quantized_model.hpp>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "linear.hpp"

namespace llama {

/// y = W x on the packed weights with the library's CPU kernels: false when they do not implement this matrix or
/// batch, or refuse x (y is then unspecified). x may have any row stride.
inline bool packed_gemv(const sageptq::io::packed_matrix& w, matrix_view<const float> x, matrix_view<float> y,
                        const sageptq::thread_executor& exec) {
  return std::visit(
      [&](const auto& p) {
        if constexpr (requires { sageptq::cpu::can_implement(p.view(), index_t{1}); }) {
          return sageptq::cpu::can_implement(p.view(), x.rows()).ok() && sageptq::cpu::gemv(p.view(), x, y, exec).ok();
        } else {
          return false;
        }
      },
      w);
}

/// Whether the kernels implement `w` for batches of `batch` rows.
inline bool packed_gemv_implemented(const sageptq::io::packed_matrix& w, index_t batch) {
  return std::visit(
      [&](const auto& p) {
        if constexpr (requires { sageptq::cpu::can_implement(p.view(), index_t{1}); })
          return sageptq::cpu::can_implement(p.view(), batch).ok();
        else
          return false;
      },
      w);
}

/// What the packed layers share: the f32 decode of the weight, and forward's choice between the packed GEMV (short
/// batches, where the kernels implement the format) and the decoded matmul.
class decoded_linear : public linear_layer {
 public:
  [[nodiscard]] index_t in_features() const noexcept final { return in_; }
  [[nodiscard]] index_t out_features() const noexcept final { return out_; }
  [[nodiscard]] matrix_view<const float> decoded() const noexcept {
    return sageptq::make_matrix_view(decoded_.data(), out_, in_);
  }

  void forward(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const final {
    if (x.rows() <= sageptq::cpu::max_batch && gemv(x, y, exec)) return;
    matmul_xwt(x, decoded(), y, exec);
  }

  /// The packed path alone: false when the kernels do not implement this weight or batch (y is then unspecified).
  virtual bool gemv(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const = 0;

 protected:
  decoded_linear(std::vector<float> decoded, index_t rows, index_t cols)
      : decoded_(std::move(decoded)), out_(rows), in_(cols) {}

 private:
  std::vector<float> decoded_;  ///< rows x cols, row-major
  index_t out_ = 0, in_ = 0;
};

class packed_linear final : public decoded_linear {
 public:
  explicit packed_linear(sageptq::io::packed_matrix packed)
      : decoded_linear(sageptq::io::decode_packed(packed), sageptq::io::packed_shape(packed).first,
                       sageptq::io::packed_shape(packed).second),
        packed_(std::move(packed)) {}

  [[nodiscard]] const sageptq::io::packed_matrix& packed() const noexcept { return packed_; }

  bool gemv(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const override {
    return packed_gemv(packed_, x, y, exec);
  }

 private:
  sageptq::io::packed_matrix packed_;
};

/// Columns [begin, begin + its packed width) of a weight.
struct column_part {
  index_t begin = 0;
  sageptq::io::packed_matrix packed;
};

/// A linear layer whose weight is column parts side by side: y = sum over parts of W_part x[:, begin, end).
class column_parts_linear final : public decoded_linear {
 public:
  /// The layer of `parts` in column order. invalid_argument unless there is at least one part, every part has the
  /// first's rows, and the parts tile the columns from 0 without gap or overlap.
  static sageptq::result<column_parts_linear> create(std::vector<column_part> parts) {
    if (parts.empty()) return sageptq::fail(sageptq::status::invalid_argument, "column_parts_linear: no parts");
    const index_t rows = sageptq::io::packed_shape(parts.front().packed).first;
    index_t next = 0;
    for (const column_part& p : parts) {
      const auto [part_rows, part_cols] = sageptq::io::packed_shape(p.packed);
      if (part_rows != rows)
        return sageptq::fail(sageptq::status::invalid_argument,
                             "column_parts_linear: parts of " + std::to_string(rows) + " and " +
                                 std::to_string(part_rows) + " rows");
      if (p.begin != next)
        return sageptq::fail(sageptq::status::invalid_argument,
                             "column_parts_linear: a part begins at column " + std::to_string(p.begin) +
                                 ", not at the previous part's end " + std::to_string(next));
      next += part_cols;
    }
    return column_parts_linear(std::move(parts), rows, next);
  }

  [[nodiscard]] std::span<const column_part> parts() const noexcept { return parts_; }

  /// Every part's GEMV on its columns of x, the first part's output written to y and the others added in column
  /// order. false when the kernels do not implement a part or this batch (y is then unspecified).
  bool gemv(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const override {
    if (!std::all_of(parts_.begin(), parts_.end(),
                     [&](const column_part& p) { return packed_gemv_implemented(p.packed, x.rows()); }))
      return false;
    std::vector<float> scratch(parts_.size() > 1 ? static_cast<std::size_t>(x.rows() * out_features()) : 0);
    const matrix_view<float> partial = sageptq::make_matrix_view(scratch.data(), x.rows(), out_features());
    for (std::size_t i = 0; i < parts_.size(); ++i) {
      const column_part& p = parts_[i];
      const index_t width = sageptq::io::packed_shape(p.packed).second;
      const matrix_view<const float> xp = sageptq::make_matrix_view(x.data + p.begin, x.rows(), width, x.stride[0]);
      if (!packed_gemv(p.packed, xp, i == 0 ? y : partial, exec)) return false;
      if (i == 0) continue;
      for (index_t r = 0; r < x.rows(); ++r)
        for (index_t c = 0; c < out_features(); ++c) y(r, c) += partial(r, c);
    }
    return true;
  }

 private:
  column_parts_linear(std::vector<column_part> parts, index_t rows, index_t cols)
      : decoded_linear(decode_side_by_side(parts, rows, cols), rows, cols), parts_(std::move(parts)) {}

  /// The parts' decodes side by side: the decoded weight.
  static std::vector<float> decode_side_by_side(std::span<const column_part> parts, index_t rows, index_t cols) {
    std::vector<float> decoded(static_cast<std::size_t>(rows * cols));
    for (const column_part& p : parts) {
      const index_t width = sageptq::io::packed_shape(p.packed).second;
      const std::vector<float> part = sageptq::io::decode_packed(p.packed);
      for (index_t r = 0; r < rows; ++r)
        std::copy_n(part.begin() + r * width, width, decoded.begin() + r * cols + p.begin);
    }
    return decoded;
  }

  std::vector<column_part> parts_;
};

/// The layer of a weight as a quantized model file stores it (quantized_model::find_parts): a packed_linear for one
/// whole tensor, a column_parts_linear for column parts in column order. invalid_argument for no tensor, a whole
/// tensor among others, or parts (of one weight) whose column ranges do not tile it.
inline sageptq::result<std::unique_ptr<linear_layer>> make_packed_linear(
    std::span<const sageptq::io::quantized_tensor* const> tensors) {
  if (tensors.empty()) return sageptq::fail(sageptq::status::invalid_argument, "make_packed_linear: no tensors");
  if (tensors.size() == 1 && !tensors.front()->columns)
    return std::unique_ptr<linear_layer>(std::make_unique<packed_linear>(tensors.front()->packed));
  std::vector<column_part> parts;
  for (const sageptq::io::quantized_tensor* t : tensors) {
    const index_t width = sageptq::io::packed_shape(t->packed).second;
    if (!t->columns || t->name != tensors.front()->name || t->columns->end - t->columns->begin != width ||
        t->columns->of != tensors.front()->columns->of)
      return sageptq::fail(sageptq::status::invalid_argument,
                           "make_packed_linear: \"" + t->name + "\" is not a column part of one weight with its packed width");
    parts.push_back({t->columns->begin, t->packed});
  }
  auto layer = column_parts_linear::create(std::move(parts));
  if (!layer.ok()) return layer.as_outcome();
  if (layer->in_features() != tensors.front()->columns->of)
    return sageptq::fail(sageptq::status::invalid_argument,
                         "make_packed_linear: the parts of \"" + tensors.front()->name + "\" cover " +
                             std::to_string(layer->in_features()) + " of " +
                             std::to_string(tensors.front()->columns->of) + " columns");
  return std::unique_ptr<linear_layer>(std::make_unique<column_parts_linear>(std::move(layer).value()));
}

}  // namespace llama
