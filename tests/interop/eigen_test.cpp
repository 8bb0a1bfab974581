// Eigen matrices, maps, refs and blocks as tensors, and Eigen maps over strided views (interop/eigen.hpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <sageptq/core/random.hpp>
#include <sageptq/interop/eigen.hpp>
#include <sageptq/quant/q1_0.hpp>
#include <sageptq/quant/rtn.hpp>

using namespace sageptq;

using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using col_major = Eigen::MatrixXf;

static_assert(host_matrix_like<col_major> && host_matrix_like<row_major> && host_matrix_like<Eigen::Matrix4d>);
static_assert(host_matrix_like<Eigen::Map<const col_major, 0, Eigen::OuterStride<>>>);
static_assert(host_matrix_like<Eigen::Ref<const row_major>> && host_matrix_like<Eigen::ArrayXXf>);
static_assert(host_matrix_like<Eigen::Block<col_major>> && host_matrix_like<Eigen::VectorXf>);
static_assert(!tensor_like<decltype(std::declval<col_major>() + std::declval<col_major>())>,
              "expressions without storage must be evaluated first");
static_assert(!tensor_like<decltype(std::declval<col_major>() * 2.0f)>);
static_assert(std::is_same_v<view_type_t<col_major>, matrix_view<const float>>, "view() of Eigen is read-only");
static_assert(interop::eigen_writable<col_major&> && interop::eigen_writable<Eigen::Block<col_major>>);
static_assert(!interop::eigen_writable<col_major>, "a temporary matrix would dangle");
static_assert(!interop::eigen_writable<const col_major&> && !interop::eigen_writable<Eigen::Map<const col_major>&>);

namespace {

col_major random_eigen(std::uint64_t seed, Eigen::Index rows, Eigen::Index cols) {
  random_generator rng(seed);
  col_major m(rows, cols);
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index c = 0; c < cols; ++c) m(r, c) = static_cast<float>(rng.normal());
  return m;
}

/// The same values as `m`, in a contiguous row-major std::vector: the reference input.
std::vector<float> dense_copy(const col_major& m) {
  std::vector<float> out;
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c) out.push_back(m(r, c));
  return out;
}

template <class Expr>
void check_view_matches(const Expr& e) {
  const auto v = sageptq::view(e);
  REQUIRE(v.rows() == e.rows());
  REQUIRE(v.cols() == e.cols());
  for (Eigen::Index r = 0; r < e.rows(); ++r)
    for (Eigen::Index c = 0; c < e.cols(); ++c) REQUIRE(v(r, c) == e(r, c));
}

}  // namespace

TEST_CASE("views of Eigen matrices, maps with strides, refs, blocks and transposes") {
  const col_major cm = random_eigen(1, 6, 9);
  const row_major rm = cm;
  check_view_matches(cm);
  check_view_matches(rm);
  CHECK(sageptq::view(cm).stride[0] == 1);
  CHECK(sageptq::view(rm).stride[1] == 1);
  check_view_matches(cm.block(1, 2, 4, 5));
  check_view_matches(rm.block(1, 2, 4, 5));
  check_view_matches(cm.transpose());
  check_view_matches(rm.transpose());
  check_view_matches(cm.col(3));
  check_view_matches(rm.col(3));  // a column of a row-major matrix: stride = cols
  check_view_matches(rm.row(2));
  check_view_matches(cm.array());

  // Maps over foreign buffers with inner and outer strides.
  std::vector<float> buffer(200);
  for (std::size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<float>(i);
  using outer_map = Eigen::Map<const col_major, Eigen::Unaligned, Eigen::OuterStride<>>;
  check_view_matches(outer_map(buffer.data(), 5, 4, Eigen::OuterStride<>(11)));
  using inner_map = Eigen::Map<const Eigen::VectorXf, Eigen::Unaligned, Eigen::InnerStride<>>;
  check_view_matches(inner_map(buffer.data(), 20, Eigen::InnerStride<>(3)));
  using both_map = Eigen::Map<const row_major, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
  const both_map both(buffer.data() + 1, 4, 6, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(30, 4));
  check_view_matches(both);
  CHECK(sageptq::view(both).stride[0] == 30);
  CHECK(sageptq::view(both).stride[1] == 4);

  const Eigen::Ref<const col_major> ref = cm.block(0, 1, 6, 3);
  check_view_matches(ref);
  const Eigen::Ref<const row_major, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>> strided_ref = cm.transpose();
  check_view_matches(strided_ref);
}

TEST_CASE("quantize_rtn and quantize_q1_0 take Eigen objects directly") {
  const col_major cm = random_eigen(2, 5, 172);
  const row_major rm = cm;
  const auto dense = dense_copy(cm);
  const auto dense_view = make_matrix_view(dense.data(), 5, 172);

  const quant::rtn_config cfg{3, 64, false};
  const auto want = quant::quantize_rtn(dense_view, cfg);
  REQUIRE(want.ok());
  for (const auto& got : {quant::quantize_rtn(cm, cfg), quant::quantize_rtn(rm, cfg),
                          quant::quantize_rtn(Eigen::Ref<const col_major>(cm), cfg, thread_executor(2))}) {
    REQUIRE(got.ok());
    CHECK(got->codes == want->codes);
    CHECK(got->scales == want->scales);
    CHECK(got->zeros == want->zeros);
  }

  const auto q1_want = quant::quantize_q1_0(dense_view);
  const auto q1_got = quant::quantize_q1_0(cm);
  REQUIRE(q1_got.ok());
  CHECK(q1_got->signs == q1_want->signs);
  CHECK(q1_got->scales == q1_want->scales);

  // A block of a bigger matrix is quantized in place, without a copy.
  const col_major big = random_eigen(3, 9, 200);
  const col_major block_copy = big.block(2, 10, 5, 172);
  const auto from_block = quant::quantize_rtn(big.block(2, 10, 5, 172), cfg);
  const auto from_copy = quant::quantize_rtn(block_copy, cfg);
  REQUIRE(from_block.ok());
  CHECK(from_block->codes == from_copy->codes);
  CHECK(from_block->scales == from_copy->scales);
}

TEST_CASE("mutable_view writes into Eigen storage") {
  const col_major cm = random_eigen(4, 3, 200);
  const auto packed = quant::quantize_q1_0(cm);
  REQUIRE(packed.ok());
  col_major decoded(3, 200);
  format::decode(packed->view(), interop::mutable_view(decoded));
  row_major decoded_rm(3, 200);
  format::decode(packed->view(), interop::mutable_view(decoded_rm));
  for (Eigen::Index r = 0; r < 3; ++r)
    for (Eigen::Index c = 0; c < 200; ++c) {
      REQUIRE(decoded(r, c) == packed->view()(r, c));
      REQUIRE(decoded_rm(r, c) == packed->view()(r, c));
    }

  col_major target = col_major::Zero(6, 6);
  auto block = interop::mutable_view(target.block(1, 2, 3, 2));  // an rvalue block still addresses `target`
  static_assert(std::is_same_v<decltype(block), matrix_view<float>>);
  block(2, 1) = 7.0f;
  CHECK(target(3, 3) == 7.0f);
  CHECK(target.sum() == 7.0f);
}

TEST_CASE("as_eigen maps a strided view, and computes with Eigen") {
  std::vector<float> storage(5 * 8);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>(i) * 0.5f;
  const auto m = make_matrix_view(storage.data(), 5, 6, 8);  // padded rows

  for (const matrix_view<float> v : {m, m.transposed(), m.block(1, 2, 3, 3)}) {
    auto e = interop::as_eigen(v);
    REQUIRE(e.rows() == v.rows());
    REQUIRE(e.cols() == v.cols());
    for (Eigen::Index r = 0; r < e.rows(); ++r)
      for (Eigen::Index c = 0; c < e.cols(); ++c) REQUIRE(e(r, c) == v(r, c));
  }

  // Writes go through a map of a mutable view; a const view maps read-only.
  auto e = interop::as_eigen(m.block(0, 0, 2, 2));
  e.setConstant(-1.0f);
  CHECK(storage[0] == -1.0f);
  CHECK(storage[9] == -1.0f);
  CHECK(storage[2] == 1.0f);
  const matrix_view<const float> cv = m;
  static_assert(!std::is_assignable_v<decltype(interop::as_eigen(cv)(0, 0)), float>);

  // A stage computing with Eigen: row sums through the map equal plain loops.
  const Eigen::VectorXf sums = interop::as_eigen(cv).rowwise().sum();
  for (index_t r = 0; r < 5; ++r) {
    float s = 0;
    for (index_t c = 0; c < 6; ++c) s += m(r, c);
    CHECK(sums(r) == doctest::Approx(s));
  }

  // Vector views map to strided column vectors.
  const auto col = interop::as_eigen(m.col(1));
  CHECK(col.size() == 5);
  CHECK(col(3) == m(3, 1));

  // Negative strides (rows reversed) map too: Eigen's coefficient access is plain pointer arithmetic.
  const matrix_view<const float> flipped{storage.data() + 4 * 8, {5, 6}, {-8, 1}};
  const auto ef = interop::as_eigen(flipped);
  for (Eigen::Index r = 0; r < 5; ++r)
    for (Eigen::Index c = 0; c < 6; ++c) REQUIRE(ef(r, c) == m(4 - r, c));
  CHECK(ef.sum() == doctest::Approx(interop::as_eigen(cv).sum()));

  // Round trip: Eigen -> view -> Eigen addresses the same memory.
  const row_major rm = row_major::Random(4, 7);
  const auto back = interop::as_eigen(sageptq::view(rm));
  CHECK(back.data() == rm.data());
  CHECK((back.array() == rm.array()).all());
}
