#pragma once
// Linear layers of the reference engine: y = W x for a batch of rows, behind a small interface so a packed
// (quantized) layer can replace the dense one. The dense product is a cache-blocked X·Wᵀ on the CPU; every output is
// one dot product with a fixed summation order, so results do not depend on the thread count or on the batch.

#include <sageptq/core/executor.hpp>
#include <sageptq/core/tensor_view.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <utility>
#include <vector>

namespace llama {

using sageptq::index_t;
using sageptq::matrix_view;

namespace detail {

// Eight independent partial sums per dot product, as a GCC/Clang vector so the products map to SIMD lanes (the
// compiler may not reorder a scalar float sum itself).
inline constexpr int lanes = 8;
typedef float lane_vector __attribute__((vector_size(lanes * sizeof(float))));

/// y(r, c) = x_r · w_c for an R x C tile. Lane l sums the products k ≡ l (mod lanes), then the lanes are added
/// pairwise and the tail last: the same order for every tile shape.
/// (The unroll pragmas keep the accumulators in registers at -O2, which does not fully unroll these loops itself.)
template <int R, int C>
void dot_tile(const float* const* x, const float* const* w, index_t k, float* y, index_t y_stride) {
  lane_vector acc[R][C] = {};
  index_t i = 0;
  for (; i + lanes <= k; i += lanes) {
    lane_vector xv[R], wv[C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) std::memcpy(&xv[r], x[r] + i, sizeof xv[r]);  // unaligned loads
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) std::memcpy(&wv[c], w[c] + i, sizeof wv[c]);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] += xv[r] * wv[c];
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const lane_vector& a = acc[r][c];
      float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
      for (index_t j = i; j < k; ++j) s += x[r][j] * w[c][j];
      y[r * y_stride + c] = s;
    }
}

template <int R>
void dot_row_tile(const float* const* x, const float* const* w, index_t cols, index_t k, float* y, index_t y_stride) {
  switch (cols) {
    case 4: return dot_tile<R, 4>(x, w, k, y, y_stride);
    case 3: return dot_tile<R, 3>(x, w, k, y, y_stride);
    case 2: return dot_tile<R, 2>(x, w, k, y, y_stride);
    default: return dot_tile<R, 1>(x, w, k, y, y_stride);
  }
}

}  // namespace detail

/// y = x · wᵀ: x is rows x k, w is n x k (a Hugging Face weight, one output per row), y is rows x n.
/// Rows of x and w must be contiguous. Work is split into blocks of 64 x 64 outputs.
template <class Executor>
void matmul_xwt(matrix_view<const float> x, matrix_view<const float> w, matrix_view<float> y, const Executor& exec) {
  SAGEPTQ_ASSERT(x.cols() == w.cols() && y.rows() == x.rows() && y.cols() == w.rows());
  SAGEPTQ_ASSERT(x.stride[1] == 1 && w.stride[1] == 1 && y.stride[1] == 1);
  constexpr index_t block = 64, tile = 4;
  const index_t m = x.rows(), n = w.rows(), k = x.cols();
  const index_t row_blocks = (m + block - 1) / block, col_blocks = (n + block - 1) / block;
  exec.parallel_for(row_blocks * col_blocks, [&](index_t task) {
    const index_t r_end = std::min(m, (task / col_blocks + 1) * block);
    const index_t c_end = std::min(n, (task % col_blocks + 1) * block);
    for (index_t r0 = task / col_blocks * block; r0 < r_end; r0 += tile) {
      const index_t rows = std::min(tile, r_end - r0);
      const float* xr[tile] = {};
      for (index_t r = 0; r < rows; ++r) xr[r] = x.data + (r0 + r) * x.stride[0];
      for (index_t c0 = task % col_blocks * block; c0 < c_end; c0 += tile) {
        const index_t cols = std::min(tile, c_end - c0);
        const float* wr[tile] = {};
        for (index_t c = 0; c < cols; ++c) wr[c] = w.data + (c0 + c) * w.stride[0];
        float* out = y.data + r0 * y.stride[0] + c0;
        switch (rows) {
          case 4: detail::dot_row_tile<4>(xr, wr, cols, k, out, y.stride[0]); break;
          case 3: detail::dot_row_tile<3>(xr, wr, cols, k, out, y.stride[0]); break;
          case 2: detail::dot_row_tile<2>(xr, wr, cols, k, out, y.stride[0]); break;
          default: detail::dot_row_tile<1>(xr, wr, cols, k, out, y.stride[0]); break;
        }
      }
    }
  });
}

/// A linear layer without bias: y = x · Wᵀ for every row of x.
class linear_layer {
 public:
  virtual ~linear_layer() = default;
  [[nodiscard]] virtual index_t in_features() const noexcept = 0;
  [[nodiscard]] virtual index_t out_features() const noexcept = 0;
  /// x is rows x in_features, y is rows x out_features; rows of both contiguous.
  virtual void forward(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const = 0;
};

/// The f32 layer: W (out_features x in_features, row-major) as the checkpoint stores it.
class dense_linear final : public linear_layer {
 public:
  dense_linear(index_t out_features, index_t in_features, std::vector<float> weight)
      : out_(out_features), in_(in_features), weight_(std::move(weight)) {
    SAGEPTQ_ASSERT(static_cast<index_t>(weight_.size()) == out_ * in_);
  }
  [[nodiscard]] index_t in_features() const noexcept override { return in_; }
  [[nodiscard]] index_t out_features() const noexcept override { return out_; }
  void forward(matrix_view<const float> x, matrix_view<float> y, const sageptq::thread_executor& exec) const override {
    matmul_xwt(x, weight(), y, exec);
  }
  /// The weight, for calibration and quantization.
  [[nodiscard]] matrix_view<const float> weight() const noexcept {
    return sageptq::make_matrix_view(weight_.data(), out_, in_);
  }

 private:
  index_t out_, in_;
  std::vector<float> weight_;
};

}  // namespace llama
