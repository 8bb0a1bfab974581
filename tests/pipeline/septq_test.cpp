// pipeline/septq.hpp: quantize_septq against compensate::septq (the algorithm it packs), its kept weights against
// SEPTQ's own mask, exact fp16 kept values, honest bits, error vs GPTQ on the same grid, bad input, thread counts.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/pipeline/gptq.hpp>
#include <sageptq/pipeline/septq.hpp>
#include <sageptq/synthetic/layer.hpp>

#include "support/calibrated_layer.hpp"

using namespace sageptq;

namespace {

using problem = sageptq_test::calibrated_problem;
using sageptq_test::make_calibrated_problem;
using sageptq_test::same_bits;

}  // namespace

TEST_CASE("quantize_septq packs compensate::septq's output exactly; kept weights are SEPTQ's mask, in exact fp16") {
  const index_t rows = 40, cols = 256;
  const problem p = make_calibrated_problem(rows, cols, 31);
  for (int bits : {2, 3}) {
    pipeline::septq_config cfg;
    cfg.bits = bits;
    auto out = pipeline::quantize_septq(p.layer.weight_view(), p.factor, cfg);
    REQUIRE(out.ok());
    auto reference = compensate::septq(p.layer.weight_view(), p.factor,
                                       {bits, 0.01, 128, compensate::kept_precision::fp16});
    REQUIRE(reference.ok());
    CHECK(same_bits(out->dequantized, reference->quantized.compensated.q));
    std::vector<float> decoded(out->dequantized.size());
    format::decode(out->packed.view(), make_matrix_view(decoded.data(), rows, cols));
    CHECK(same_bits(decoded, out->dequantized));

    // The kept positions are SEPTQ's top-1 % of its static scores, and nothing else.
    auto scores = compensate::importance_scores(p.layer.weight_view(), p.factor, compensate::septq_grid(bits));
    REQUIRE(scores.ok());
    auto mask = compensate::top_fraction_mask(*scores, 0.01);
    REQUIRE(mask.ok());
    const format::sparse_view kept = out->packed.kept.view();
    int mismatches = 0;
    index_t kept_count = 0;
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) {
        const auto i = static_cast<std::size_t>(r * cols + c);
        const index_t k = kept.find(r, c);
        mismatches += (k >= 0) != ((*mask)[i] != 0);
        if (k < 0) continue;
        ++kept_count;
        const float v = out->dequantized[i];
        mismatches += round_to_fp16(v) != v || kept.values[k].to_float() != v;
      }
    CHECK(mismatches == 0);
    CHECK(kept_count == reference->kept);
    CHECK(kept_count >= rows * cols / 100);
    CHECK(out->report.salient_fraction == doctest::Approx(static_cast<double>(kept_count) / (rows * cols)));

    const format::bit_breakdown& b = out->report.bits;
    const std::uint64_t bytes = out->packed.dense.codes.size() * 4 + out->packed.dense.scales.size() * 2 +
                                out->packed.dense.zeros.size() + out->packed.kept.row_offsets.size() * 4 +
                                out->packed.kept.columns.size() * 2 + out->packed.kept.values.size() * 2;
    CHECK(b.full_bits() == 8 * bytes);
    CHECK(b.weights == static_cast<std::uint64_t>(rows * cols));
    CHECK(b.code_bits == static_cast<std::uint64_t>(rows * cols * bits));
    CHECK(b.scale_bits == static_cast<std::uint64_t>(rows * 24));
    CHECK(b.salient_value_bits == 16u * static_cast<std::uint64_t>(kept_count));
    CHECK(b.salient_position_bits == 32u * (rows + 1) + 16u * static_cast<std::uint64_t>(kept_count));
    CHECK(b.paper_bpw() == static_cast<double>(bits));
    CHECK(out->report.method == "septq");
  }
}

TEST_CASE("SEPTQ's kept weights lower the Hessian-weighted error of GPTQ with the same grid") {
  for (std::uint64_t seed = 40; seed < 43; ++seed) {
    const problem p = make_calibrated_problem(32, 256, seed);
    for (int bits : {2, 3}) {
      pipeline::septq_config s;
      s.bits = bits;
      auto septq = pipeline::quantize_septq(p.layer.weight_view(), p.factor, s);
      pipeline::gptq_config g;
      g.bits = bits;
      auto gptq = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, g);
      REQUIRE(septq.ok());
      REQUIRE(gptq.ok());
      CAPTURE(seed);
      CAPTURE(bits);
      CHECK(septq->report.hessian_error < gptq->report.hessian_error);
      CHECK(septq->report.bits.full_bits() > gptq->report.bits.full_bits());  // what the kept weights cost
    }
  }
}

TEST_CASE("quantize_septq rejects bad input with a clear status") {
  problem p = make_calibrated_problem(8, 64, 7);
  pipeline::septq_config cfg;
  cfg.keep_fraction = 1.0;
  CHECK(pipeline::quantize_septq(p.layer.weight_view(), p.factor, cfg).code() == status::invalid_argument);
  cfg.keep_fraction = 0.01;
  cfg.bits = 0;
  CHECK(pipeline::quantize_septq(p.layer.weight_view(), p.factor, cfg).code() == status::invalid_argument);
  cfg.bits = 2;
  const problem narrow = make_calibrated_problem(8, 32, 7);
  CHECK(pipeline::quantize_septq(p.layer.weight_view(), narrow.factor, cfg).code() == status::invalid_shape);
  p.layer.weights[3] = std::numeric_limits<float>::infinity();
  CHECK(pipeline::quantize_septq(p.layer.weight_view(), p.factor, cfg).code() == status::non_finite_input);
}

TEST_CASE("quantize_septq with nothing kept is GPTQ with SEPTQ's grid and an empty overlay") {
  const problem p = make_calibrated_problem(16, 128, 8);
  pipeline::septq_config s;
  s.keep_fraction = 0;
  auto septq = pipeline::quantize_septq(p.layer.weight_view(), p.factor, s);
  pipeline::gptq_config g;
  g.bits = 2;
  auto gptq = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, g);
  REQUIRE(septq.ok());
  REQUIRE(gptq.ok());
  CHECK(septq->packed.kept.kept() == 0);
  CHECK(septq->report.salient_fraction == 0.0);
  CHECK(same_bits(septq->dequantized, gptq->dequantized));
}

TEST_CASE("quantize_septq packs identical bytes for every thread count") {
  const problem p = make_calibrated_problem(136, 256, 9);  // two row chunks, two column blocks
  pipeline::septq_config cfg;
  auto one = pipeline::quantize_septq(p.layer.weight_view(), p.factor, cfg);
  auto three = pipeline::quantize_septq(p.layer.weight_view(), p.factor, cfg, thread_executor(3));
  REQUIRE(one.ok());
  REQUIRE(three.ok());
  CHECK(one->packed.dense.codes == three->packed.dense.codes);
  CHECK(one->packed.dense.scales == three->packed.dense.scales);
  CHECK(one->packed.dense.zeros == three->packed.dense.zeros);
  CHECK(one->packed.kept.row_offsets == three->packed.kept.row_offsets);
  CHECK(one->packed.kept.columns == three->packed.kept.columns);
  CHECK(one->packed.kept.values == three->packed.kept.values);
  CHECK(same_bits(one->dequantized, three->dequantized));
}
