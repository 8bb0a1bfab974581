// core/, format/, the CPU kernels and the exact quantizers (sageptq/core.hpp) built with -fno-exceptions against sageptq::core alone (no Eigen on the
// include path): they must compile, and report bad input as a status rather than needing to throw.

#include "core_format_headers.hpp"  // every core/ and format/ header (generated)

#include <sageptq/core.hpp>  // and everything sageptq::core promises, the CPU kernels included

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "this test must be compiled with -fno-exceptions"
#endif
static_assert(!SAGEPTQ_HAS_EXCEPTIONS);

int main() {
  int failures = 0;
  auto expect = [&failures](bool ok, const char* what) {
    if (!ok) {
      std::printf("FAILED: %s\n", what);
      ++failures;
    }
  };

  sageptq::random_generator rng(11);
  std::vector<float> w(16 * 160);
  for (auto& v : w) v = static_cast<float>(rng.normal());
  const auto view = sageptq::make_matrix_view(w.data(), 16, 160);

  const auto rtn = sageptq::quant::quantize_rtn(view, {2, 32, false});
  const auto rtn_threads = sageptq::quant::quantize_rtn(view, {2, 32, false}, sageptq::thread_executor(2));
  expect(rtn.ok() && rtn_threads.ok(), "rtn quantizes");
  expect(rtn->codes == rtn_threads->codes, "rtn output does not depend on the thread count");
  const auto q1 = sageptq::quant::quantize_q1_0(view);
  expect(q1.ok(), "q1_0 quantizes");

  std::vector<float> decoded(w.size());
  sageptq::format::decode(q1->view(), sageptq::make_matrix_view(decoded.data(), 16, 160));
  for (std::size_t i = 0; i < w.size(); ++i)
    if (std::signbit(decoded[i]) != (w[i] < 0.0f)) {
      expect(false, "q1_0 keeps the sign of every weight");
      break;
    }

  w[37] = std::numeric_limits<float>::quiet_NaN();
  const auto bad = sageptq::quant::quantize_q1_0(view);
  expect(!bad.has_value() && bad.code() == sageptq::status::non_finite_input, "NaN input is a status, not a throw");

  std::printf("%s\n", failures ? "no-exceptions build FAILED" : "no-exceptions build works");
  return failures ? 1 : 0;
}
