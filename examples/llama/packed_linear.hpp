#pragma once
// A linear layer whose weight is a packed (quantized) matrix of any sageptq format. The packed matrix is kept (it is
// what a quantized model file stores) together with its f32 decode: batches of up to cpu::max_batch rows
// (incremental decoding) run the library's CPU GEMV kernels on the packed weights where they implement the format
// (sage with column groups, q1_0, rtn); longer batches (whole evaluation windows) multiply the decoded weights with
// the dense engine's matmul. The two paths agree up to the kernels' stated rounding (cpu/gemv.hpp): float rounding,
// plus the int8 rounding of the activations on the avx512_vnni path.

#include <sageptq/cpu/gemv.hpp>
#include <sageptq/io/quantized_model.hpp>

#include <utility>
#include <variant>
#include <vector>

#include "linear.hpp"

namespace llama {

class packed_linear final : public linear_layer {
 public:
  explicit packed_linear(sageptq::io::packed_matrix packed)
      : packed_(std::move(packed)), decoded_(sageptq::io::decode_packed(packed_)) {
    std::tie(out_, in_) = sageptq::io::packed_shape(packed_);
  }

  [[nodiscard]] index_t in_features() const noexcept override { return in_; }
  [[nodiscard]] index_t out_features() const noexcept override { return out_; }
  [[nodiscard]] const sageptq::io::packed_matrix& packed() const noexcept { return packed_; }
  [[nodiscard]] matrix_view<const float> decoded() const noexcept {
    return sageptq::make_matrix_view(decoded_.data(), out_, in_);
  }

  void forward(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const override {
    if (x.rows() <= sageptq::cpu::max_batch && gemv(x, y, exec)) return;
    matmul_xwt(x, decoded(), y, exec);
  }

  /// The packed path alone: false when the kernels do not implement this matrix or batch (y is then unspecified).
  bool gemv(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const {
    return std::visit(
        [&](const auto& p) {
          if constexpr (requires { sageptq::cpu::can_implement(p.view(), index_t{1}); }) {
            return sageptq::cpu::can_implement(p.view(), x.rows()).ok() &&
                   sageptq::cpu::gemv(p.view(), x, y, exec).ok();
          } else {
            return false;
          }
        },
        packed_);
  }

 private:
  sageptq::io::packed_matrix packed_;
  std::vector<float> decoded_;
  index_t out_ = 0, in_ = 0;
};

}  // namespace llama
