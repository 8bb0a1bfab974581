// pipeline/rtn.hpp: the rtn and q1_0 methods against the quantizers they wrap, decode, bits, the optional
// calibrated errors, bad input and thread counts.
#include <doctest/doctest.h>

#include <cmath>

#include <cstdint>
#include <limits>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/pipeline/rtn.hpp>
#include <sageptq/synthetic/layer.hpp>

#include "support/calibrated_layer.hpp"

using namespace sageptq;

namespace {

using problem = sageptq_test::calibrated_problem;
using sageptq_test::make_calibrated_problem;
using sageptq_test::reference_hessian_error;

}  // namespace

TEST_CASE("quantize_rtn_method wraps quantize_rtn: same packed matrix, decoded values, bits and errors") {
  const index_t rows = 24, cols = 200;  // a ragged last group
  const problem p = make_calibrated_problem(rows, cols, 51);
  const quant::rtn_config cfg{3, 128, false};
  auto direct = quant::quantize_rtn(p.layer.weight_view(), cfg);
  REQUIRE(direct.ok());

  auto plain = pipeline::quantize_rtn_method(p.layer.weight_view(), cfg);
  REQUIRE(plain.ok());
  CHECK(plain->packed.codes == direct->codes);
  CHECK(plain->packed.scales == direct->scales);
  CHECK(plain->packed.zeros == direct->zeros);
  int mismatches = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      mismatches += plain->dequantized[static_cast<std::size_t>(r * cols + c)] != direct->view()(r, c);
  CHECK(mismatches == 0);
  const std::uint64_t bytes = direct->codes.size() * 4 + direct->scales.size() * 2 + direct->zeros.size();
  CHECK(plain->report.bits.full_bits() == 8 * bytes);
  CHECK(plain->report.method == "rtn");
  CHECK(plain->report.hessian_error == 0.0);  // no factor, no calibrated error

  auto calibrated = pipeline::quantize_rtn_method(p.layer.weight_view(), cfg, &p.factor);
  REQUIRE(calibrated.ok());
  const double e = reference_hessian_error(p.layer.weights, calibrated->dequantized, p.factor.h, rows, cols);
  const double total =
      reference_hessian_error(p.layer.weights, std::vector<float>(p.layer.weights.size()), p.factor.h, rows, cols);
  CHECK(calibrated->report.hessian_error == doctest::Approx(e).epsilon(1e-5));
  CHECK(calibrated->report.relative_error == doctest::Approx(std::sqrt(e / total)).epsilon(1e-5));
  CHECK(calibrated->report.relative_error > 0.0);
}

TEST_CASE("quantize_q1_0_method wraps quantize_q1_0: same packed matrix, decoded values, bits and errors") {
  const index_t rows = 16, cols = 300;
  const problem p = make_calibrated_problem(rows, cols, 52);
  auto direct = quant::quantize_q1_0(p.layer.weight_view());
  REQUIRE(direct.ok());
  auto out = pipeline::quantize_q1_0_method(p.layer.weight_view(), &p.factor, thread_executor(2));
  REQUIRE(out.ok());
  CHECK(out->packed.signs == direct->signs);
  CHECK(out->packed.scales == direct->scales);
  int mismatches = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      mismatches += out->dequantized[static_cast<std::size_t>(r * cols + c)] != direct->view()(r, c);
  CHECK(mismatches == 0);
  CHECK(out->report.bits.full_bits() == 8 * (direct->signs.size() * 4 + direct->scales.size() * 2));
  CHECK(out->report.bits.paper_bpw() == 1.0);
  CHECK(out->report.method == "q1_0");
  const double e = reference_hessian_error(p.layer.weights, out->dequantized, p.factor.h, rows, cols);
  CHECK(out->report.hessian_error == doctest::Approx(e).epsilon(1e-5));
  auto one = pipeline::quantize_q1_0_method(p.layer.weight_view(), &p.factor);
  REQUIRE(one.ok());
  CHECK(one->report.hessian_error == out->report.hessian_error);  // thread-count independent
}

TEST_CASE("rtn and q1_0 methods reject bad input with a clear status") {
  problem p = make_calibrated_problem(8, 64, 53);
  const problem narrow = make_calibrated_problem(8, 32, 53);
  CHECK(pipeline::quantize_rtn_method(p.layer.weight_view(), {2, 128, false}, &narrow.factor).code() ==
        status::invalid_shape);
  CHECK(pipeline::quantize_q1_0_method(p.layer.weight_view(), &narrow.factor).code() == status::invalid_shape);
  CHECK(pipeline::quantize_rtn_method(p.layer.weight_view(), {0, 128, false}).code() == status::invalid_argument);
  p.layer.weights[9] = std::numeric_limits<float>::quiet_NaN();
  CHECK(pipeline::quantize_rtn_method(p.layer.weight_view(), {2, 128, false}).code() == status::non_finite_input);
  CHECK(pipeline::quantize_q1_0_method(p.layer.weight_view()).code() == status::non_finite_input);
}
