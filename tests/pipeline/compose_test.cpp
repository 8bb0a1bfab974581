#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/pipeline/compose.hpp>
#include <sageptq/synthetic/layer.hpp>

using namespace sageptq;

namespace {

// A saliency metric the library does not have: squared weight, ignoring the Hessian.
struct squared_weight {
  [[nodiscard]] double score(const saliency::element& e) const noexcept {
    return static_cast<double>(e.w) * static_cast<double>(e.w);
  }
};

// A quantizer the library does not have: ternary {-a, 0, +a} per row with a = 0.7 * max|w| over the row's
// non-salient weights; salient columns are stored in fp16.
struct ternary_quantizer {
  std::vector<float> row_scale;
  std::vector<std::uint8_t> salient_column;
  std::span<const index_t> perm;
  index_t rows = 0, cols = 0;

  outcome prepare(matrix_view<const float> w0, const saliency::salient_set& salient,
                  const calib::hessian_factor& factor) {
    rows = w0.rows();
    cols = w0.cols();
    perm = factor.perm;
    salient_column.assign(static_cast<std::size_t>(cols), 0);
    for (index_t c : salient.indices) salient_column[static_cast<std::size_t>(c)] = 1;
    row_scale.assign(static_cast<std::size_t>(rows), 0.0f);
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c)
        if (!salient_column[static_cast<std::size_t>(c)])
          row_scale[static_cast<std::size_t>(r)] = std::max(row_scale[static_cast<std::size_t>(r)], std::fabs(w0(r, c)));
    for (float& a : row_scale) a = round_to_fp16(0.7f * a);
    return {};
  }
  template <executor Exec>
  outcome begin_block(const compensate::block_context&, const Exec&) {
    return {};
  }
  void quantize_column(index_t col, index_t row_begin, std::span<const float> w, std::span<float> q) const {
    const bool salient = salient_column[static_cast<std::size_t>(perm[static_cast<std::size_t>(col)])] != 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const float a = row_scale[static_cast<std::size_t>(row_begin) + i];
      q[i] = salient ? round_to_fp16(w[i]) : (std::fabs(w[i]) < 0.5f * a ? 0.0f : std::copysign(a, w[i]));
    }
  }
  [[nodiscard]] format::bit_breakdown bits() const {
    format::bit_breakdown b;
    index_t salient_cols = 0;
    for (auto s : salient_column) salient_cols += s;
    b.weights = static_cast<std::uint64_t>(rows * cols);
    b.code_bits = static_cast<std::uint64_t>(rows * (cols - salient_cols) * 2);
    b.salient_value_bits = static_cast<std::uint64_t>(rows * salient_cols * 16);
    b.salient_position_bits = static_cast<std::uint64_t>(cols);
    b.scale_bits = static_cast<std::uint64_t>(rows * 16);
    b.paper_bits = b.code_bits;
    return b;
  }
};

}  // namespace

TEST_CASE("quantize_matrix composes a metric and a quantizer defined outside the library") {
  synthetic::layer_config lc;
  lc.rows = 64;
  lc.cols = 200;
  lc.samples = 400;
  lc.outlier_channel_fraction = 0.02;
  lc.outlier_weight_gain = 8.0f;  // outlier channels stand clear of heavy-tailed ordinary ones
  const auto layer = synthetic::make_layer(lc);
  calib::hessian_accumulator acc(lc.cols);
  REQUIRE(acc.add_batch(layer.activation_view()).ok());
  auto factor = calib::prepare(acc);
  REQUIRE(factor.ok());

  pipeline::stages<squared_weight, ternary_quantizer> s;
  s.rule = saliency::split_rule::top(0.02);  // 4 of 200 columns
  auto with = pipeline::quantize_matrix(layer.weight_view(), *factor, s);
  REQUIRE(with.ok());

  // The custom metric found the outlier channels (their weights are 3x larger).
  std::vector<index_t> outliers = layer.outlier_channels;
  std::sort(outliers.begin(), outliers.end());
  CHECK(with->salient.indices == outliers);
  // The custom quantizer's values came through: salient columns in fp16, the rest ternary per row.
  for (index_t r = 0; r < lc.rows; ++r)
    for (index_t c = 0; c < lc.cols; ++c) {
      const float q = with->dequantized[static_cast<std::size_t>(r * lc.cols + c)];
      if (std::binary_search(outliers.begin(), outliers.end(), c))
        CHECK(q == round_to_fp16(q));
      else
        CHECK((q == 0.0f || std::fabs(q) == s.quantizer.row_scale[static_cast<std::size_t>(r)]));
    }
  CHECK(with->report.bits.full_bpw() == doctest::Approx((196.0 * 2 + 4 * 16 + 16) / 200 + 200.0 / (64 * 200)));

  s.compensate = false;
  auto without = pipeline::quantize_matrix(layer.weight_view(), *factor, s);
  REQUIRE(without.ok());
  CHECK(with->report.hessian_error < without->report.hessian_error);
}
