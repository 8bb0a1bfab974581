// A downstream program, built by each consumer project (find_package, add_subdirectory, FetchContent): quantize a
// seeded matrix with rtn and q1_0, decode it, and check the numbers against the format's definition. Exits non-zero
// on any failure. SAGEPTQ_CONSUMER_EXPECTED_VERSION is the version CMake reported for the package.

#if defined(SAGEPTQ_CONSUMER_USES_DEPENDENCIES)
#include <sageptq/sageptq.hpp>
#else
#include <sageptq/core.hpp>  // sageptq::core alone: the standard library is all it needs
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#if defined(SAGEPTQ_CONSUMER_USES_DEPENDENCIES)
// sageptq::sageptq must carry the include paths of its dependencies to the consumer.
#include <Eigen/Core>
#include <nanoflann.hpp>
#endif

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what.c_str());
    ++failures;
  }
}

constexpr sageptq::index_t rows = 24;
constexpr sageptq::index_t cols = 300;  // ragged last group for both group sizes below

std::vector<float> seeded_weights() {
  sageptq::random_generator rng(2024);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (auto& v : w) v = static_cast<float>(0.02 * rng.student_t(4));
  return w;
}

void check_rtn(const std::vector<float>& w) {
  constexpr int bits = 4;
  constexpr sageptq::index_t group = 64;
  const auto input = sageptq::make_matrix_view(w.data(), rows, cols);
  auto packed = sageptq::quant::quantize_rtn(input, {bits, group, /*symmetric=*/false});
  expect(packed.ok(), "quantize_rtn: " + packed.message());
  if (!packed.ok()) return;

  std::vector<float> q(w.size());
  sageptq::format::decode(packed->view(), sageptq::make_matrix_view(q.data(), rows, cols));
  const sageptq::index_t groups = (cols + group - 1) / group;
  double worst = 0;  // error in units of the group's grid step; min-max rounding keeps it at half a step
  for (sageptq::index_t r = 0; r < rows; ++r)
    for (sageptq::index_t c = 0; c < cols; ++c) {
      const float step = packed->scales[static_cast<std::size_t>(r * groups + c / group)].to_float();
      const auto i = static_cast<std::size_t>(r * cols + c);
      worst = std::fmax(worst, std::fabs(static_cast<double>(w[i]) - q[i]) / step);
    }
  // The fp16-rounded scale may shrink the grid by 2^-11 relative, over 2^bits - 1 steps.
  expect(worst <= 0.5 + 16.0 / 2048, "rtn error " + std::to_string(worst) + " steps exceeds half a step");

  // Every stored bit: codes padded to whole 32-bit words per row, an fp16 scale and a uint8 zero per group.
  const double full_bits = static_cast<double>(rows * (32 * ((cols * bits + 31) / 32) + (16 + 8) * groups));
  expect(packed->bits().full_bpw() == full_bits / static_cast<double>(rows * cols),
         "rtn full bpw " + std::to_string(packed->bits().full_bpw()));
  std::printf("rtn  4-bit g64 : max error %.4f steps, %.6f full bpw\n", worst, packed->bits().full_bpw());
}

void check_q1_0(const std::vector<float>& w) {
  const auto input = sageptq::make_matrix_view(w.data(), rows, cols);
  auto packed = sageptq::quant::quantize_q1_0(input);
  expect(packed.ok(), "quantize_q1_0: " + packed.message());
  if (!packed.ok()) return;

  std::vector<float> q(w.size());
  sageptq::format::decode(packed->view(), sageptq::make_matrix_view(q.data(), rows, cols));
  int mismatches = 0;
  for (sageptq::index_t r = 0; r < rows; ++r)
    for (sageptq::index_t c0 = 0; c0 < cols; c0 += 128) {
      const sageptq::index_t c1 = std::min<sageptq::index_t>(c0 + 128, cols);
      double sum_abs = 0;
      for (sageptq::index_t c = c0; c < c1; ++c) sum_abs += std::fabs(w[static_cast<std::size_t>(r * cols + c)]);
      // ggml Q1_0: d = mean |w| of the group in fp16; w >= 0 decodes to +d, w < 0 to -d.
      const float d = sageptq::round_to_fp16(static_cast<float>(sum_abs / static_cast<double>(c1 - c0)));
      for (sageptq::index_t c = c0; c < c1; ++c) {
        const auto i = static_cast<std::size_t>(r * cols + c);
        mismatches += q[i] != (w[i] >= 0.0f ? d : -d);
      }
    }
  expect(mismatches == 0, "q1_0 decoded " + std::to_string(mismatches) + " weights differently from +-mean|w|");

  // 128 sign bits and one fp16 scale per group; the ragged last group is padded to 128 bits and counted.
  const double full_bits = static_cast<double>(rows * ((cols + 127) / 128) * (128 + 16));
  expect(packed->bits().full_bpw() == full_bits / static_cast<double>(rows * cols),
         "q1_0 full bpw " + std::to_string(packed->bits().full_bpw()));
  std::printf("q1_0           : %d mismatches, %.6f full bpw\n", mismatches, packed->bits().full_bpw());
}

}  // namespace

int main() {
  const std::string version = std::to_string(SAGEPTQ_VERSION_MAJOR) + "." + std::to_string(SAGEPTQ_VERSION_MINOR) +
                              "." + std::to_string(SAGEPTQ_VERSION_PATCH);
  expect(version == SAGEPTQ_CONSUMER_EXPECTED_VERSION,
         "version.hpp says " + version + ", the CMake package says " SAGEPTQ_CONSUMER_EXPECTED_VERSION);
  std::printf("sageptq %s\n", version.c_str());

#if defined(SAGEPTQ_CONSUMER_USES_DEPENDENCIES)
  const Eigen::Matrix2f identity = Eigen::Matrix2f::Identity();
  expect(identity.trace() == 2.0f, "Eigen is usable");
#endif

  const std::vector<float> w = seeded_weights();
  check_rtn(w);
  check_q1_0(w);
  std::printf("%s\n", failures ? "consumer FAILED" : "consumer passed");
  return failures ? 1 : 0;
}
