// Standard containers as tensors (interop/span.hpp).
#include <doctest/doctest.h>

#include <array>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <sageptq/core/random.hpp>
#include <sageptq/interop/span.hpp>
#include <sageptq/quant/rtn.hpp>

using namespace sageptq;

static_assert(host_vector_like<std::vector<float>> && host_vector_like<std::span<const double>>);
static_assert(host_vector_like<std::array<int, 4>> && host_vector_like<std::span<float, 8>>);
static_assert(!tensor_like<std::vector<bool>>, "vector<bool> has no element storage to view");
static_assert(std::is_same_v<view_type_t<std::vector<float>>, vector_view<const float>>, "a vector is read-only");
static_assert(std::is_same_v<view_type_t<std::span<float>>, vector_view<float>>, "a span of mutable data is not");
// as_matrix keeps constness, and refuses temporaries that would dangle.
static_assert(
    std::is_same_v<decltype(interop::as_matrix(std::declval<std::vector<float>&>(), 1, 1)), matrix_view<float>>);
static_assert(std::is_same_v<decltype(interop::as_matrix(std::declval<const std::vector<float>&>(), 1, 1)),
                             matrix_view<const float>>);
template <class R>
concept matrix_viewable = requires(R&& r) { interop::as_matrix(std::forward<R>(r), 1, 1); };
static_assert(matrix_viewable<std::vector<float>&> && matrix_viewable<std::span<float>>);
static_assert(!matrix_viewable<std::vector<float>>, "a temporary vector would dangle");

TEST_CASE("vector, span and array are rank-1 tensors") {
  std::vector<float> v = {1, 2, 3, 4, 5};
  const auto vv = sageptq::view(v);
  CHECK(vv.data == v.data());
  CHECK(vv.extent[0] == 5);
  CHECK(vv.stride[0] == 1);
  CHECK(vv(4) == 5.0f);

  const std::span<float> s(v.data() + 1, 3);
  auto sv = sageptq::view(s);
  sv(0) = 20.0f;  // writes through
  CHECK(v[1] == 20.0f);
  CHECK(sv.extent[0] == 3);

  const std::array<double, 3> a = {0.5, 1.5, 2.5};
  CHECK(sageptq::view(a)(2) == 2.5);
  CHECK(sageptq::view(std::vector<int>{}).empty());

  const auto wv = interop::as_vector(v);
  static_assert(std::is_same_v<decltype(wv), const vector_view<float>>);
  CHECK(wv(1) == 20.0f);
}

TEST_CASE("as_matrix: row-major views over vectors and spans, with and without padding") {
  std::vector<float> storage(4 * 7);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>(i);
  const auto m = interop::as_matrix(storage, 4, 7);
  CHECK(m.rows() == 4);
  CHECK(m.cols() == 7);
  CHECK(m.is_row_major_contiguous());
  CHECK(m(3, 6) == 27.0f);

  const auto padded = interop::as_matrix(std::span<const float>(storage), 4, 5, 7);  // rvalue span: fine
  static_assert(std::is_same_v<decltype(padded), const matrix_view<const float>>);
  CHECK(padded(2, 4) == 18.0f);
  CHECK_FALSE(padded.is_row_major_contiguous());

  const std::vector<float>& read_only = storage;
  CHECK(interop::as_matrix(read_only, 2, 14)(1, 0) == 14.0f);
}

TEST_CASE("as_matrix output goes straight into a quantizer") {
  random_generator rng(3);
  std::vector<float> w(5 * 172);
  for (auto& x : w) x = static_cast<float>(rng.normal());
  const auto a = quant::quantize_rtn(interop::as_matrix(w, 5, 172), {4, 64, false});
  const auto b = quant::quantize_rtn(make_matrix_view(w.data(), 5, 172), {4, 64, false});
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->codes == b->codes);
  CHECK(a->scales == b->scales);
}
