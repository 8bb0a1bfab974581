// Engine tensors through the customization point: the public API instantiated with hostile tensor types
// (tests/support/annoying_tensor.hpp) gives exactly what it gives for a contiguous copy.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <sageptq/core/random.hpp>
#include <sageptq/core/tensor_traits.hpp>
#include <sageptq/quant/error.hpp>
#include <sageptq/quant/q1_0.hpp>
#include <sageptq/quant/rtn.hpp>

#include "support/annoying_tensor.hpp"

using namespace sageptq;
using engine::annoying_storage;
using engine::annoying_tensor;
using engine::hooked_tensor;

static_assert(!std::is_default_constructible_v<annoying_tensor<float>>);
static_assert(!std::is_default_constructible_v<hooked_tensor<float>>);
static_assert(host_matrix_like<annoying_tensor<float>> && host_matrix_like<hooked_tensor<float>>);
static_assert(host_matrix_like<annoying_tensor<fp16>> && host_matrix_like<matrix_view<const double>>);
static_assert(std::is_same_v<view_type_t<annoying_tensor<float>>, strided_view<const float, 2, host_space, index_t>>,
              "view() widens 32-bit engine indices to index_t");
static_assert(std::is_same_v<view_type_t<hooked_tensor<bf16>>, strided_view<const bf16, 2, host_space, index_t>>);
static_assert(!tensor_like<float*> && !tensor_like<int> && !tensor_like<std::vector<float>>,
              "containers are tensor_like only through the opt-in interop/span.hpp");
static_assert(!host_matrix_like<strided_view<float, 1>> && host_vector_like<strided_view<float, 1>>);
static_assert(!host_matrix_like<matrix_view<float, device_space>>, "device tensors are not host matrices");

namespace {

struct incomplete_traits_tensor {};
}  // namespace
template <>
struct sageptq::tensor_traits<incomplete_traits_tensor> {  // no stride(): not a tensor
  using element_type = const float;
  using space = host_space;
  static constexpr int rank = 2;
  static const float* data(const incomplete_traits_tensor&);
  static int extent(const incomplete_traits_tensor&, int);
};
static_assert(!tensor_like<incomplete_traits_tensor>);

namespace {

std::vector<float> random_matrix(std::uint64_t seed, index_t rows, index_t cols) {
  random_generator rng(seed);
  std::vector<float> m(static_cast<std::size_t>(rows * cols));
  for (auto& v : m) v = static_cast<float>(rng.normal());
  return m;
}

template <class T>
std::vector<T> convert(const std::vector<float>& v) {
  std::vector<T> out;
  for (float x : v) out.push_back(T(x));
  return out;
}

void check_same(const format::rtn_matrix& a, const format::rtn_matrix& b) {
  CHECK(a.rows == b.rows);
  CHECK(a.cols == b.cols);
  CHECK(a.codes == b.codes);
  CHECK(a.scales == b.scales);
  CHECK(a.zeros == b.zeros);
}

}  // namespace

TEST_CASE("view() of an engine tensor: 32-bit index, negative and padded strides") {
  constexpr std::int32_t rows = 5, cols = 9;
  const auto values = random_matrix(1, rows, cols);
  const annoying_storage<float> storage(values, rows, cols);
  const annoying_tensor<float> traits_tensor(storage);
  const hooked_tensor<float> hooked(storage);

  for (const auto v : {sageptq::view(traits_tensor), sageptq::view(hooked)}) {
    CHECK(v.rows() == rows);
    CHECK(v.cols() == cols);
    CHECK(v.stride[0] == -2);
    CHECK(v.stride[1] == 2 * rows + 3);
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) REQUIRE(v(r, c) == values[static_cast<std::size_t>(r * cols + c)]);
  }
  // A strided_view is itself tensor_like; narrower indices are widened.
  const strided_view<const float, 2, host_space, std::int32_t> narrow{values.data(), {rows, cols}, {cols, 1}};
  const auto wide = sageptq::view(narrow);
  static_assert(std::is_same_v<decltype(wide), const matrix_view<const float>>);
  CHECK(wide(4, 8) == values.back());
}

TEST_CASE("quantize_rtn and quantize_q1_0 on engine tensors equal the contiguous copy") {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    constexpr std::int32_t rows = 7, cols = 300;
    const auto values = random_matrix(seed, rows, cols);
    const auto contiguous = make_matrix_view(values.data(), rows, cols);
    const annoying_storage<float> storage(values, rows, cols);  // padding holds NaN: reading it would fail
    const annoying_tensor<float> traits_tensor(storage);
    const hooked_tensor<float> hooked(storage);

    for (const quant::rtn_config cfg : {quant::rtn_config{4, 128, false}, quant::rtn_config{3, 64, true},
                                        quant::rtn_config{2, 0, false}}) {
      const auto want = quant::quantize_rtn(contiguous, cfg);
      REQUIRE(want.ok());
      const auto via_traits = quant::quantize_rtn(traits_tensor, cfg);
      const auto via_hook = quant::quantize_rtn(hooked, cfg, thread_executor(2));
      REQUIRE(via_traits.ok());
      REQUIRE(via_hook.ok());
      check_same(*via_traits, *want);
      check_same(*via_hook, *want);
    }

    const auto want = quant::quantize_q1_0(contiguous);
    REQUIRE(want.ok());
    for (const auto& got : {quant::quantize_q1_0(traits_tensor), quant::quantize_q1_0(hooked, thread_executor(3))}) {
      REQUIRE(got.ok());
      CHECK(got->signs == want->signs);
      CHECK(got->scales == want->scales);
    }
  }
}

TEST_CASE("engine tensors of fp16 and bf16 elements quantize like their float values") {
  constexpr std::int32_t rows = 4, cols = 150;
  const auto halves = convert<fp16>(random_matrix(4, rows, cols));
  std::vector<float> as_float;
  for (fp16 h : halves) as_float.push_back(h.to_float());
  const annoying_storage<fp16> storage(halves, rows, cols);
  const auto got = quant::quantize_rtn(annoying_tensor<fp16>(storage), {5, 32, false});
  const auto want = quant::quantize_rtn(make_matrix_view(as_float.data(), rows, cols), {5, 32, false});
  REQUIRE(got.ok());
  REQUIRE(want.ok());
  check_same(*got, *want);

  const auto brains = convert<bf16>(random_matrix(5, rows, cols));
  std::vector<float> bf_float;
  for (bf16 b : brains) bf_float.push_back(b.to_float());
  const annoying_storage<bf16> bf_storage(brains, rows, cols);
  const auto q1 = quant::quantize_q1_0(hooked_tensor<bf16>(bf_storage));
  const auto q1_want = quant::quantize_q1_0(make_matrix_view(bf_float.data(), rows, cols));
  REQUIRE(q1.ok());
  REQUIRE(q1_want.ok());
  CHECK(q1->signs == q1_want->signs);
  CHECK(q1->scales == q1_want->scales);
}

TEST_CASE("relative_output_error on engine tensors equals the contiguous computation") {
  constexpr std::int32_t rows = 6, cols = 40, samples = 11;
  const auto w = random_matrix(6, rows, cols);
  const auto x = random_matrix(7, samples, cols);
  std::vector<float> q;
  for (float v : w) q.push_back(round_to_bf16(v * 0.9f));
  const annoying_storage<float> ws(w, rows, cols), qs(q, rows, cols), xs(x, samples, cols);

  const double want = quant::relative_output_error(make_matrix_view(w.data(), rows, cols),
                                                   make_matrix_view(q.data(), rows, cols),
                                                   make_matrix_view(x.data(), samples, cols));
  const double got = quant::relative_output_error(sageptq::view(annoying_tensor<float>(ws)),
                                                  sageptq::view(hooked_tensor<float>(qs)),
                                                  sageptq::view(annoying_tensor<float>(xs)), thread_executor(3));
  CHECK(got == want);
  CHECK(want > 0.05);  // q is w scaled by 0.9: about 10% error
  CHECK(want < 0.15);
}

TEST_CASE("bad input through an engine tensor is reported, not read past") {
  constexpr std::int32_t rows = 3, cols = 20;
  auto values = random_matrix(8, rows, cols);
  values[static_cast<std::size_t>(2 * cols + 17)] = std::numeric_limits<float>::infinity();
  const annoying_storage<float> storage(values, rows, cols);
  const auto r = quant::quantize_rtn(annoying_tensor<float>(storage), {});
  CHECK(r.code() == status::non_finite_input);
  CHECK_FALSE(r.has_value());
  CHECK(r.message() == "weight matrix has a non-finite value at (2, 17)");
  const auto q = quant::quantize_q1_0(hooked_tensor<float>(storage));
  CHECK(q.code() == status::non_finite_input);
}
