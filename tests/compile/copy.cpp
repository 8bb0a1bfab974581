// Compiled once per copy with -DSAGEPTQ_TEST_COPY=<name>, and for the wrapped copies also
// -DSAGEPTQ_WRAPPED_NAMESPACE=<name> (CMakeLists.txt). Every copy routes sageptq's assertion failures to a handler
// that records the copy's own name. An assertion raised through an inline function of this copy must land in this
// copy's handler: if the linker had merged that function with another copy's (an ODR clash), it would not.
// Built at -O0 with assertions on, so inline functions stay out-of-line, weak symbols the linker could merge.

#undef NDEBUG
#include <string>

#include "copy.hpp"

#define SAGEPTQ_TEST_STR2(x) #x
#define SAGEPTQ_TEST_STR(x) SAGEPTQ_TEST_STR2(x)
#define SAGEPTQ_TEST_CAT2(a, b) a##b
#define SAGEPTQ_TEST_CAT(a, b) SAGEPTQ_TEST_CAT2(a, b)

namespace {
std::string caught_by;
void record(const char*) { caught_by = SAGEPTQ_TEST_STR(SAGEPTQ_TEST_COPY); }
}  // namespace

#define SAGEPTQ_ASSERT_HANDLER(cond, file, line) record(cond)
#include <sageptq/core/random.hpp>
#include <sageptq/format/q1_0.hpp>
#include <sageptq/format/rtn.hpp>
#include <sageptq/quant/q1_0.hpp>
#include <sageptq/quant/rtn.hpp>

#include <typeinfo>
#include <vector>

#if defined(SAGEPTQ_WRAPPED_NAMESPACE)
namespace sq = SAGEPTQ_WRAPPED_NAMESPACE::sageptq;
#else
namespace sq = ::sageptq;
#endif

copy_report SAGEPTQ_TEST_CAT(run_, SAGEPTQ_TEST_COPY)() {
  copy_report report;
  report.copy = SAGEPTQ_TEST_STR(SAGEPTQ_TEST_COPY);
  report.type_name = typeid(sq::fp16).name();

  caught_by.clear();
  const sq::result<int> bad(sq::outcome{});  // a failure without an error status: a precondition violation
  (void)bad;
  report.handler = caught_by;

  sq::random_generator rng(7);
  std::vector<float> w(8 * 200);
  for (auto& v : w) v = static_cast<float>(rng.normal());
  const auto view = sq::make_matrix_view(w.data(), 8, 200);
  const auto rtn = sq::quant::quantize_rtn(view, {3, 64, true}).value();
  const auto q1 = sq::quant::quantize_q1_0(view).value();
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a over every stored word
  auto mix = [&h](std::uint64_t x) { h = (h ^ x) * 1099511628211ull; };
  for (auto x : rtn.codes) mix(x);
  for (auto x : rtn.scales) mix(x.bits);
  for (auto x : q1.signs) mix(x);
  for (auto x : q1.scales) mix(x.bits);
  report.checksum = h;
  report.full_bpw = rtn.bits().full_bpw() + q1.bits().full_bpw();
  return report;
}
