// strided_view: indexing, sub-views, const conversion, and what a kernel argument needs.
#include <doctest/doctest.h>

#include <numeric>
#include <type_traits>
#include <vector>

#include <sageptq/core/tensor_view.hpp>

using namespace sageptq;

namespace {
std::vector<float> iota_matrix(index_t rows, index_t cols) {
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  std::iota(v.begin(), v.end(), 0.0f);
  return v;
}
}  // namespace

static_assert(std::is_trivially_copyable_v<matrix_view<float>> && std::is_trivially_copyable_v<vector_view<double>>);
static_assert(std::is_trivially_copyable_v<strided_view<const float, 4, device_space, int>>);
static_assert(std::is_aggregate_v<matrix_view<float>>);
static_assert(std::is_convertible_v<matrix_view<float>, matrix_view<const float>>);
static_assert(!std::is_convertible_v<matrix_view<const float>, matrix_view<float>>, "constness must not be dropped");
static_assert(!std::is_convertible_v<matrix_view<float, host_space>, matrix_view<float, device_space>>,
              "the memory space is part of the type");
static_assert(is_strided_view_v<const strided_view<int, 3>> && !is_strided_view_v<float*>);

TEST_CASE("strided_view: row-major indexing, size and contiguity") {
  auto data = iota_matrix(3, 5);
  const auto m = make_matrix_view(data.data(), 3, 5);
  CHECK(m.rows() == 3);
  CHECK(m.cols() == 5);
  CHECK(m.size() == 15);
  CHECK_FALSE(m.empty());
  CHECK(m.is_row_major_contiguous());
  for (index_t r = 0; r < 3; ++r)
    for (index_t c = 0; c < 5; ++c) CHECK(m(r, c) == static_cast<float>(r * 5 + c));
  m(2, 4) = -1.0f;  // a view of mutable data writes through, even when the view object is const
  CHECK(data[14] == -1.0f);

  const auto padded = make_matrix_view(data.data(), 2, 5, 7);
  CHECK(padded(1, 0) == data[7]);
  CHECK_FALSE(padded.is_row_major_contiguous());
  CHECK(make_matrix_view(data.data(), 1, 5, 99).is_row_major_contiguous());  // stride of a unit extent is free
  CHECK(make_matrix_view(data.data(), 0, 5).empty());

  auto v = make_vector_view(data.data(), 4);
  CHECK(v.size() == 4);
  CHECK(v(3) == data[3]);
}

TEST_CASE("strided_view: row, col, block and transposed agree with plain indexing") {
  auto data = iota_matrix(6, 7);
  const auto m = make_matrix_view(data.data(), 6, 7);

  const auto r2 = m.row(2);
  const auto c3 = m.col(3);
  CHECK(r2.extent[0] == 7);
  CHECK(c3.extent[0] == 6);
  for (index_t j = 0; j < 7; ++j) CHECK(r2(j) == m(2, j));
  for (index_t i = 0; i < 6; ++i) CHECK(c3(i) == m(i, 3));

  const auto b = m.block(1, 2, 4, 3);
  CHECK(b.rows() == 4);
  CHECK(b.cols() == 3);
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 3; ++j) CHECK(b(i, j) == m(1 + i, 2 + j));

  const auto t = m.transposed();
  CHECK(t.rows() == 7);
  CHECK(t.cols() == 6);
  for (index_t i = 0; i < 7; ++i)
    for (index_t j = 0; j < 6; ++j) CHECK(t(i, j) == m(j, i));
  CHECK_FALSE(t.is_row_major_contiguous());

  // Composition: a block of the transpose, then a row of it.
  const auto tb = t.block(2, 1, 3, 4);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) CHECK(tb(i, j) == m(1 + j, 2 + i));
  const auto tbr = tb.row(1);
  for (index_t j = 0; j < 4; ++j) CHECK(tbr(j) == m(1 + j, 3));
}

TEST_CASE("strided_view: negative and zero strides, other index types and ranks") {
  auto data = iota_matrix(4, 3);
  // Rows reversed: start at the last row, step back.
  const matrix_view<float> flipped{data.data() + 9, {4, 3}, {-3, 1}};
  for (index_t r = 0; r < 4; ++r)
    for (index_t c = 0; c < 3; ++c) CHECK(flipped(r, c) == data[static_cast<std::size_t>((3 - r) * 3 + c)]);
  // A broadcast row: stride 0 repeats it.
  const matrix_view<float> broadcast{data.data() + 3, {5, 3}, {0, 1}};
  for (index_t r = 0; r < 5; ++r) CHECK(broadcast(r, 2) == data[5]);

  const strided_view<float, 2, host_space, int> narrow{data.data(), {4, 3}, {3, 1}};
  static_assert(std::is_same_v<decltype(narrow.rows()), int>);
  CHECK(narrow(3, 2) == 11.0f);

  const strided_view<float, 3> cube{data.data(), {2, 2, 3}, {6, 3, 1}};
  CHECK(cube.size() == 12);
  CHECK(cube.is_row_major_contiguous());
  CHECK(cube(1, 1, 2) == 11.0f);
}

TEST_CASE("strided_view: const conversion keeps data, extents and strides") {
  auto data = iota_matrix(5, 4);
  const matrix_view<float> m{data.data() + 1, {3, 2}, {8, 2}};
  const matrix_view<const float> c = m;
  CHECK(c.data == m.data);
  CHECK(c.extent[0] == 3);
  CHECK(c.extent[1] == 2);
  CHECK(c.stride[0] == 8);
  CHECK(c.stride[1] == 2);
  CHECK(c(2, 1) == data[1 + 16 + 2]);
  static_assert(std::is_same_v<decltype(c(0, 0)), const float&>);
}

TEST_CASE("strided_view: constexpr-friendly") {
  static constexpr int storage[6] = {1, 2, 3, 4, 5, 6};
  constexpr strided_view<const int, 2> m{storage, {2, 3}, {3, 1}};
  static_assert(m(1, 2) == 6 && m.transposed()(2, 1) == 6 && m.col(1)(1) == 5 && m.size() == 6);
  CHECK(m.block(1, 1, 1, 2)(0, 1) == 6);
}
