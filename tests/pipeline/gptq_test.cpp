// pipeline/gptq.hpp: pack_uniform against the quantizer's own dequantization, quantize_gptq against the
// compensation loop it wraps, exact bits, calibrated errors against plain loops, GPTQ vs RTN on the same grid,
// act order, bad input and thread-count independence.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/core/random.hpp>
#include <sageptq/pipeline/gptq.hpp>
#include <sageptq/quant/uniform.hpp>
#include <sageptq/synthetic/layer.hpp>

#include "support/calibrated_layer.hpp"

using namespace sageptq;

namespace {

using problem = sageptq_test::calibrated_problem;
using sageptq_test::make_calibrated_problem;
using sageptq_test::reference_hessian_error;
using sageptq_test::same_bits;

std::uint64_t stored_bytes(const format::rtn_matrix& m) {
  return m.codes.size() * sizeof(std::uint32_t) + m.scales.size() * sizeof(fp16) + m.zeros.size();
}

}  // namespace

TEST_CASE("pack_uniform reproduces the uniform quantizer's dequantization bit for bit") {
  random_generator rng(11);
  for (int bits = 1; bits <= 8; ++bits)
    for (bool symmetric : {false, true})
      for (index_t group : {index_t{0}, index_t{32}, index_t{50}}) {
        const index_t rows = 7, cols = 131;  // ragged last group, codes straddling words
        std::vector<float> w(static_cast<std::size_t>(rows * cols));
        for (auto& v : w) v = static_cast<float>(0.03 * rng.student_t(4));
        w[5] = 0;  // an all-zero row gets scale 0
        for (index_t c = 0; c < cols; ++c) w[static_cast<std::size_t>(2 * cols + c)] = 0;
        auto m = quant::quantize_uniform(make_matrix_view(w.data(), rows, cols),
                                         quant::uniform_config{bits, group, symmetric, bits <= 4, {}});
        REQUIRE(m.ok());
        auto packed = pipeline::pack_uniform(*m);
        REQUIRE(packed.ok());
        CHECK(packed->layout.group_size == (group == 0 ? cols : group));
        std::vector<float> decoded(w.size());
        format::decode(packed->view(), make_matrix_view(decoded.data(), rows, cols));
        CHECK(same_bits(decoded, m->dequantize()));
        CHECK(packed->bits().full_bits() == 8 * stored_bytes(*packed));
      }
}

TEST_CASE("pack_uniform rejects what format::rtn_matrix cannot express") {
  random_generator rng(12);
  std::vector<float> w(4 * 64);
  for (auto& v : w) v = static_cast<float>(rng.normal());
  auto base = quant::quantize_uniform(make_matrix_view(w.data(), 4, 64), quant::uniform_config{3, 16, false, false, {}});
  REQUIRE(base.ok());
  REQUIRE(pipeline::pack_uniform(*base).ok());

  auto m = *base;
  m.grids[5].zero = 2.5f;
  CHECK(pipeline::pack_uniform(m).code() == status::invalid_argument);
  m.grids[5].zero = 8.0f;  // beyond 2^3 - 1
  CHECK(pipeline::pack_uniform(m).code() == status::invalid_argument);
  m = *base;
  m.grids[1].scale = 0.1f;  // not an fp16 value
  CHECK(pipeline::pack_uniform(m).code() == status::invalid_argument);
  m = *base;
  std::swap(m.column_group[0], m.column_group[20]);  // act-order g_idx
  const auto gidx = pipeline::pack_uniform(m);
  CHECK(gidx.code() == status::unsupported);
  CHECK(gidx.message().find("contiguous") != std::string::npos);
  m = *base;
  m.codes.pop_back();
  CHECK(pipeline::pack_uniform(m).code() == status::invalid_shape);

  auto sym = quant::quantize_uniform(make_matrix_view(w.data(), 4, 64), quant::uniform_config{3, 0, true, false, {}});
  REQUIRE(sym.ok());
  sym->grids[2].zero = 3.0f;  // GPTQ's symmetric zero (maxq + 1) / 2 is not the format's 3.5
  CHECK(pipeline::pack_uniform(*sym).code() == status::invalid_argument);
}

TEST_CASE("quantize_gptq returns the compensation loop's output, packed exactly, with honest bits and errors") {
  const problem p = make_calibrated_problem(48, 256, 3);
  for (index_t group : {index_t{0}, index_t{128}})
    for (bool symmetric : {false, true}) {
      pipeline::gptq_config cfg;
      cfg.bits = 2;
      cfg.group_size = group;
      cfg.symmetric = symmetric;
      auto out = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg);
      REQUIRE(out.ok());
      auto loop = compensate::gptq_uniform(p.layer.weight_view(), p.factor, cfg.grid());
      REQUIRE(loop.ok());
      CHECK(same_bits(out->dequantized, loop->compensated.q));
      std::vector<float> decoded(out->dequantized.size());
      format::decode(out->packed.view(), make_matrix_view(decoded.data(), 48, 256));
      CHECK(same_bits(decoded, out->dequantized));

      const format::bit_breakdown& b = out->report.bits;
      CHECK(b.full_bits() == 8 * stored_bytes(out->packed));
      const index_t groups = group == 0 ? 1 : 2;
      CHECK(b.scale_bits == static_cast<std::uint64_t>(48 * groups * (symmetric ? 16 : 24)));
      CHECK(b.paper_bpw() == 2.0);
      CHECK(out->report.method == "gptq");
      CHECK(out->report.rows == 48);
      CHECK(out->report.salient_fraction == 0.0);

      const double e = reference_hessian_error(p.layer.weights, out->dequantized, p.factor.h, 48, 256);
      const std::vector<float> zeros(p.layer.weights.size(), 0.0f);
      const double total = reference_hessian_error(p.layer.weights, zeros, p.factor.h, 48, 256);
      CHECK(out->report.hessian_error == doctest::Approx(e).epsilon(1e-5));
      CHECK(out->report.relative_error == doctest::Approx(std::sqrt(e / total)).epsilon(1e-5));
      CHECK(out->report.relative_error > 0.0);
      CHECK(out->report.relative_error < 1.0);
    }
}

TEST_CASE("GPTQ lowers the Hessian-weighted error of RTN with the same grid, and groups of 128 lower it further") {
  // Per (bits, group): the mean over seeded layers, and most layers one by one. GPTQ is greedy: at 2 bits with
  // groups refitted on updated weights it can lose to RTN on a single matrix (seed 21 here: 230 vs 170).
  constexpr int layers = 5;
  double gptq_sum[2][2] = {}, rtn_sum[2][2] = {};  // [bits - 2][grouped]
  int wins[2][2] = {};
  for (std::uint64_t seed = 20; seed < 20 + layers; ++seed) {
    const problem p = make_calibrated_problem(32, 256, seed);
    for (int bits : {2, 3}) {
      double per_channel = 0;
      for (int grouped : {0, 1}) {
        pipeline::gptq_config cfg;
        cfg.bits = bits;
        cfg.group_size = grouped ? 128 : 0;
        auto gptq = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg);
        REQUIRE(gptq.ok());
        auto rtn = quant::quantize_uniform(p.layer.weight_view(), cfg.grid());
        REQUIRE(rtn.ok());
        const double rtn_error =
            calib::hessian_weighted_error(p.layer.weight_view(), make_matrix_view(rtn->dequantize().data(), 32, 256),
                                          p.factor.h);
        const double error = gptq->report.hessian_error;
        gptq_sum[bits - 2][grouped] += error;
        rtn_sum[bits - 2][grouped] += rtn_error;
        wins[bits - 2][grouped] += error < rtn_error;
        CAPTURE(seed);
        CAPTURE(bits);
        if (grouped)
          CHECK(error < per_channel);
        else
          per_channel = error;
      }
    }
  }
  for (int b = 0; b < 2; ++b)
    for (int grouped : {0, 1}) {
      CAPTURE(b + 2);
      CAPTURE(grouped);
      CHECK(gptq_sum[b][grouped] < 0.85 * rtn_sum[b][grouped]);
      CHECK(wins[b][grouped] >= layers - 1);
    }
}

TEST_CASE("quantize_gptq follows the factor's act order per channel and refuses act order with groups") {
  const problem p = make_calibrated_problem(16, 128, 4, 0, -1, true);
  REQUIRE(!std::is_sorted(p.factor.perm.begin(), p.factor.perm.end()));
  pipeline::gptq_config cfg;
  cfg.bits = 3;
  cfg.act_order = true;
  auto out = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg);
  REQUIRE(out.ok());
  auto loop = compensate::gptq_uniform(p.layer.weight_view(), p.factor, cfg.grid());
  REQUIRE(loop.ok());
  CHECK(same_bits(out->dequantized, loop->compensated.q));

  cfg.group_size = 64;
  const auto grouped = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg);
  CHECK(grouped.code() == status::unsupported);
  CHECK(grouped.message().find("g_idx") != std::string::npos);
  cfg.group_size = 0;
  cfg.act_order = false;  // the factor is in act order: the config must say so
  CHECK(pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg).code() == status::invalid_argument);
  const problem plain = make_calibrated_problem(16, 128, 4);
  cfg.act_order = true;
  CHECK(pipeline::quantize_gptq(plain.layer.weight_view(), plain.factor, cfg).code() == status::invalid_argument);
}

TEST_CASE("quantize_gptq rejects bad input with a clear status") {
  problem p = make_calibrated_problem(8, 64, 5);
  pipeline::gptq_config cfg;
  cfg.bits = 9;
  CHECK(pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg).code() == status::invalid_argument);
  cfg.bits = 2;
  cfg.block_size = 0;
  CHECK(pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg).code() == status::invalid_argument);
  cfg.block_size = 128;
  const problem narrow = make_calibrated_problem(8, 32, 5);
  CHECK(pipeline::quantize_gptq(p.layer.weight_view(), narrow.factor, cfg).code() == status::invalid_shape);
  p.layer.weights[17] = std::numeric_limits<float>::quiet_NaN();
  CHECK(pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg).code() == status::non_finite_input);
}

TEST_CASE("quantize_gptq packs identical bytes for every thread count") {
  const problem p = make_calibrated_problem(136, 256, 6);  // two row chunks, two column blocks
  pipeline::gptq_config cfg;
  cfg.bits = 3;
  cfg.group_size = 128;
  auto one = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg);
  auto three = pipeline::quantize_gptq(p.layer.weight_view(), p.factor, cfg, thread_executor(3));
  REQUIRE(one.ok());
  REQUIRE(three.ok());
  CHECK(one->packed.codes == three->packed.codes);
  CHECK(one->packed.zeros == three->packed.zeros);
  CHECK(one->packed.scales == three->packed.scales);
  CHECK(same_bits(one->dequantized, three->dequantized));
  CHECK(one->report.hessian_error == three->report.hessian_error);
}
