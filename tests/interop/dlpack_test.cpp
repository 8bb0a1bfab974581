// DLPack descriptors to strided views, with every run-time check (interop/dlpack.hpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include <sageptq/interop/dlpack.hpp>
#include <sageptq/quant/rtn.hpp>

#if __has_include(<dlpack/dlpack.h>)  // Debian: libdlpack-dev. Included after ours on purpose: order must not matter.
#include <dlpack/dlpack.h>
#define SAGEPTQ_TEST_HAVE_DLPACK 1
#endif

using namespace sageptq;
using interop::dl_device_type;
using interop::dl_type_code;
using interop::dlpack_tensor;
using interop::from_dlpack;

static_assert(std::is_standard_layout_v<dlpack_tensor> && std::is_trivially_copyable_v<dlpack_tensor>);
static_assert(interop::dlpack_like<dlpack_tensor> && !interop::dlpack_like<matrix_view<float>>);

namespace {

/// A float32 CPU tensor over `data` with the given shape and (optional) strides.
dlpack_tensor make_tensor(float* data, std::vector<std::int64_t>& shape, std::vector<std::int64_t>* strides = nullptr) {
  dlpack_tensor t;
  t.data = data;
  t.device = {static_cast<std::int32_t>(dl_device_type::cpu), 0};
  t.ndim = static_cast<std::int32_t>(shape.size());
  t.dtype = {static_cast<std::uint8_t>(dl_type_code::floating), 32, 1};
  t.shape = shape.data();
  t.strides = strides ? strides->data() : nullptr;
  return t;
}

template <class R>
void expect_error(const R& r, status s) {
  CHECK(r.code() == s);
  CHECK_FALSE(r.has_value());
  CHECK_FALSE(r.message().empty());
}

}  // namespace

TEST_CASE("dlpack: compact and strided float tensors") {
  std::vector<float> storage(60);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>(i);

  std::vector<std::int64_t> shape = {4, 5};
  const auto compact = from_dlpack<const float, 2>(make_tensor(storage.data(), shape));
  REQUIRE(compact.ok());
  CHECK(compact->stride[0] == 5);
  CHECK(compact->stride[1] == 1);
  CHECK((*compact)(3, 4) == 19.0f);

  // A transposed, padded view: element (r, c) at c * 12 + r.
  std::vector<std::int64_t> tshape = {3, 5}, tstrides = {1, 12};
  auto tt = make_tensor(storage.data(), tshape, &tstrides);
  const auto transposed = from_dlpack<float, 2>(tt);
  REQUIRE(transposed.ok());
  CHECK((*transposed)(2, 4) == 50.0f);
  (*transposed)(0, 1) = -1.0f;  // a mutable view writes through
  CHECK(storage[12] == -1.0f);

  // byte_offset moves the origin by whole elements.
  tt.byte_offset = 2 * sizeof(float);
  CHECK((*from_dlpack<float, 2>(tt))(0, 0) == 2.0f);

  // Rank 1 and rank 3.
  std::vector<std::int64_t> vshape = {7};
  CHECK((*from_dlpack<float, 1>(make_tensor(storage.data(), vshape)))(6) == 6.0f);
  std::vector<std::int64_t> cshape = {2, 3, 4};
  const auto cube = from_dlpack<float, 3>(make_tensor(storage.data(), cshape));
  REQUIRE(cube.ok());
  CHECK((*cube)(1, 2, 3) == 23.0f);
  CHECK(cube->is_row_major_contiguous());

  // An empty tensor may have no storage.
  std::vector<std::int64_t> empty_shape = {0, 5};
  const auto empty = from_dlpack<float, 2>(make_tensor(nullptr, empty_shape));
  REQUIRE(empty.ok());
  CHECK(empty->empty());
}

TEST_CASE("dlpack: other element types map to their DLPack dtypes") {
  std::vector<fp16> halves = {fp16(1.5f), fp16(-2.0f)};
  std::vector<std::int64_t> shape = {1, 2};
  dlpack_tensor t;
  t.data = halves.data();
  t.ndim = 2;
  t.shape = shape.data();
  t.dtype = {static_cast<std::uint8_t>(dl_type_code::floating), 16, 1};
  const auto h = from_dlpack<const fp16, 2>(t);
  REQUIRE(h.ok());
  CHECK((*h)(0, 1).to_float() == -2.0f);
  expect_error(from_dlpack<const bf16, 2>(t), status::unsupported);  // bf16 has its own type code

  t.dtype = {static_cast<std::uint8_t>(dl_type_code::bfloat), 16, 1};
  CHECK(from_dlpack<bf16, 2>(t).ok());
  t.dtype = {static_cast<std::uint8_t>(dl_type_code::signed_int), 16, 1};
  CHECK(from_dlpack<std::int16_t, 2>(t).ok());
  expect_error(from_dlpack<std::uint16_t, 2>(t), status::unsupported);
}

TEST_CASE("dlpack: every run-time check has its status") {
  std::vector<float> storage(24, 1.0f);
  std::vector<std::int64_t> shape = {4, 6};
  const dlpack_tensor good = make_tensor(storage.data(), shape);
  REQUIRE(from_dlpack<float, 2>(good).ok());

  expect_error(from_dlpack<float, 3>(good), status::invalid_shape);  // ndim
  expect_error(from_dlpack<double, 2>(good), status::unsupported);   // dtype bits
  expect_error(from_dlpack<std::int32_t, 2>(good), status::unsupported);  // dtype code

  auto t = good;
  t.dtype.lanes = 4;  // float4 vectors
  expect_error(from_dlpack<float, 2>(t), status::invalid_layout);
  t = good;
  t.byte_offset = 2;  // half an element
  expect_error(from_dlpack<float, 2>(t), status::invalid_layout);
  t = good;
  t.data = nullptr;
  expect_error(from_dlpack<float, 2>(t), status::invalid_argument);
  std::vector<std::int64_t> negative = {4, -6};
  t = good;
  t.shape = negative.data();
  expect_error(from_dlpack<float, 2>(t), status::invalid_shape);

  // Devices: the requested memory space must be able to reach the memory.
  t = good;
  t.device.device_type = static_cast<std::int32_t>(dl_device_type::cuda);
  expect_error(from_dlpack<float, 2>(t), status::invalid_argument);
  CHECK(from_dlpack<float, 2, device_space>(t).ok());
  t.device.device_type = static_cast<std::int32_t>(dl_device_type::cuda_managed);
  CHECK(from_dlpack<float, 2>(t).ok());
  CHECK(from_dlpack<float, 2, device_space>(t).ok());
  t.device.device_type = static_cast<std::int32_t>(dl_device_type::cuda_host);
  CHECK(from_dlpack<float, 2>(t).ok());
  expect_error(from_dlpack<float, 2, device_space>(t), status::invalid_argument);
  expect_error(from_dlpack<float, 2, device_space>(good), status::invalid_argument);
  t.device.device_type = 4;  // OpenCL
  expect_error(from_dlpack<float, 2>(t), status::invalid_argument);
}

TEST_CASE("dlpack: a converted view feeds a quantizer") {
  std::vector<float> storage(3 * 80);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>((i * 37) % 101) - 50.0f;
  std::vector<std::int64_t> shape = {3, 80};
  const auto v = from_dlpack<const float, 2>(make_tensor(storage.data(), shape));
  REQUIRE(v.ok());
  const auto a = quant::quantize_rtn(*v, {4, 32, false});
  const auto b = quant::quantize_rtn(make_matrix_view(storage.data(), 3, 80), {4, 32, false});
  REQUIRE(a.ok());
  CHECK(a->codes == b->codes);
}

#ifdef SAGEPTQ_TEST_HAVE_DLPACK
static_assert(interop::dlpack_like<DLTensor>);
static_assert(sizeof(DLTensor) == sizeof(dlpack_tensor) && alignof(DLTensor) == alignof(dlpack_tensor),
              "dlpack_tensor mirrors DLTensor field for field");

TEST_CASE("dlpack: a real DLTensor is accepted directly") {
  std::vector<float> storage(12);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>(i);
  std::int64_t shape[] = {3, 2};
  std::int64_t strides[] = {1, 3};  // column-major
  DLTensor t{};
  t.data = storage.data();
  t.device = {kDLCPU, 0};
  t.ndim = 2;
  t.dtype = {kDLFloat, 32, 1};
  t.shape = shape;
  t.strides = strides;
  const auto v = from_dlpack<const float, 2>(t);
  REQUIRE(v.ok());
  CHECK((*v)(2, 1) == 5.0f);
  t.device.device_type = kDLCUDA;
  expect_error(from_dlpack<const float, 2>(t), status::invalid_argument);
  CHECK(from_dlpack<const float, 2, device_space>(t).ok());
  t.dtype = {kDLBfloat, 16, 1};
  expect_error(from_dlpack<const float, 2, device_space>(t), status::unsupported);
}
#endif
