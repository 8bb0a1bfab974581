#pragma once
/// @file dlpack.hpp
/// Opt-in DLPack adaptor (include explicitly; no dlpack header is needed).
///
/// `interop::dlpack_tensor` mirrors DLTensor field for field (DLPack >= 0.5: `device`, not `ctx`), so engines
/// without the dlpack header can fill one in. `interop::from_dlpack<T, Rank, Space>(t)` accepts it, a real
/// DLTensor from <dlpack/dlpack.h> (in either include order), or any struct with the same fields, and returns a
/// strided_view after checking at run time what the types cannot:
///   - ndim == Rank and no negative extent                   else invalid_shape
///   - dtype (code, bits) is T's                             else unsupported
///   - dtype lanes == 1, byte_offset a multiple of sizeof(T) else invalid_layout
///   - the device is reachable from Space                    else invalid_argument
///     (host_space: CPU, CUDA-pinned host or CUDA-managed memory; device_space: CUDA or CUDA-managed memory)
///   - data is non-null when the tensor has elements         else invalid_argument
/// Null strides mean compact row-major, as in DLPack. The device id is not checked: launching on the right
/// device is the caller's business, as with any device pointer.

#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace interop {

/// DLDeviceType values used here (same numbers as DLPack's kDL* constants).
enum class dl_device_type : std::int32_t { cpu = 1, cuda = 2, cuda_host = 3, cuda_managed = 13 };
/// DLDataTypeCode values (same numbers as DLPack's kDL* constants).
enum class dl_type_code : std::uint8_t { signed_int = 0, unsigned_int = 1, floating = 2, bfloat = 4 };

struct dl_device {
  std::int32_t device_type = static_cast<std::int32_t>(dl_device_type::cpu);
  std::int32_t device_id = 0;
};

struct dl_data_type {
  std::uint8_t code = 0;
  std::uint8_t bits = 0;
  std::uint16_t lanes = 1;
};

/// Field-for-field mirror of DLTensor (same names, types and order).
struct dlpack_tensor {
  void* data = nullptr;
  dl_device device{};
  std::int32_t ndim = 0;
  dl_data_type dtype{};
  std::int64_t* shape = nullptr;
  std::int64_t* strides = nullptr;  ///< in elements; null means compact row-major
  std::uint64_t byte_offset = 0;    ///< in bytes, added to data
};

/// DLPack dtype of a C++ element type: code and bits.
template <class T>
struct dl_dtype_of;
template <> struct dl_dtype_of<float> { static constexpr dl_type_code code = dl_type_code::floating; };
template <> struct dl_dtype_of<double> { static constexpr dl_type_code code = dl_type_code::floating; };
template <> struct dl_dtype_of<fp16> { static constexpr dl_type_code code = dl_type_code::floating; };
template <> struct dl_dtype_of<bf16> { static constexpr dl_type_code code = dl_type_code::bfloat; };
template <> struct dl_dtype_of<std::int8_t> { static constexpr dl_type_code code = dl_type_code::signed_int; };
template <> struct dl_dtype_of<std::int16_t> { static constexpr dl_type_code code = dl_type_code::signed_int; };
template <> struct dl_dtype_of<std::int32_t> { static constexpr dl_type_code code = dl_type_code::signed_int; };
template <> struct dl_dtype_of<std::int64_t> { static constexpr dl_type_code code = dl_type_code::signed_int; };
template <> struct dl_dtype_of<std::uint8_t> { static constexpr dl_type_code code = dl_type_code::unsigned_int; };
template <> struct dl_dtype_of<std::uint16_t> { static constexpr dl_type_code code = dl_type_code::unsigned_int; };
template <> struct dl_dtype_of<std::uint32_t> { static constexpr dl_type_code code = dl_type_code::unsigned_int; };
template <> struct dl_dtype_of<std::uint64_t> { static constexpr dl_type_code code = dl_type_code::unsigned_int; };

/// DLTensor, dlpack_tensor, or any struct with DLTensor's fields.
template <class D>
concept dlpack_like = requires(const D& t) {
  { t.data } -> std::convertible_to<const void*>;
  static_cast<std::int32_t>(t.device.device_type);
  static_cast<std::int32_t>(t.device.device_id);
  static_cast<std::int32_t>(t.ndim);
  static_cast<std::uint8_t>(t.dtype.code);
  static_cast<std::uint8_t>(t.dtype.bits);
  static_cast<std::uint16_t>(t.dtype.lanes);
  { t.shape } -> std::convertible_to<const std::int64_t*>;
  { t.strides } -> std::convertible_to<const std::int64_t*>;
  static_cast<std::uint64_t>(t.byte_offset);
};

namespace detail {
template <class Space>
constexpr bool reachable_from(std::int32_t device_type) noexcept {
  const auto d = static_cast<dl_device_type>(device_type);
  if constexpr (std::is_same_v<Space, host_space>)
    return d == dl_device_type::cpu || d == dl_device_type::cuda_host || d == dl_device_type::cuda_managed;
  else
    return d == dl_device_type::cuda || d == dl_device_type::cuda_managed;
}
}  // namespace detail

/// A rank-`Rank` view of `T` (const allowed) in `Space` over a DLPack tensor; see the file comment for the checks.
template <class T, int Rank, class Space = host_space, dlpack_like D>
result<strided_view<T, Rank, Space>> from_dlpack(const D& t) {
  using value = std::remove_cv_t<T>;
  static_assert(requires { dl_dtype_of<value>::code; }, "sageptq: no DLPack dtype for this element type");
  constexpr auto want_code = static_cast<std::uint8_t>(dl_dtype_of<value>::code);
  constexpr auto want_bits = static_cast<std::uint8_t>(8 * sizeof(value));

  if (static_cast<std::int32_t>(t.ndim) != Rank)
    return fail(status::invalid_shape, "DLPack tensor has ndim " + std::to_string(t.ndim) + ", expected " +
                                           std::to_string(Rank));
  if (static_cast<std::uint16_t>(t.dtype.lanes) != 1)
    return fail(status::invalid_layout, "DLPack vector dtypes (lanes = " + std::to_string(t.dtype.lanes) +
                                            ") are not supported; lanes must be 1");
  if (static_cast<std::uint8_t>(t.dtype.code) != want_code || static_cast<std::uint8_t>(t.dtype.bits) != want_bits)
    return fail(status::unsupported, "DLPack dtype (code " + std::to_string(t.dtype.code) + ", bits " +
                                         std::to_string(t.dtype.bits) + ") does not match the requested (code " +
                                         std::to_string(want_code) + ", bits " + std::to_string(want_bits) + ")");
  if (!detail::reachable_from<Space>(static_cast<std::int32_t>(t.device.device_type)))
    return fail(status::invalid_argument,
                "DLPack device type " + std::to_string(static_cast<std::int32_t>(t.device.device_type)) +
                    " is not accessible from the requested " +
                    (std::is_same_v<Space, host_space> ? "host" : "device") + " memory space");
  if (t.byte_offset % sizeof(value) != 0)
    return fail(status::invalid_layout, "DLPack byte_offset " + std::to_string(t.byte_offset) +
                                            " is not a multiple of the element size");

  strided_view<T, Rank, Space> v{};
  index_t compact = 1;  // row-major strides, used when t.strides is null
  for (int d = Rank - 1; d >= 0; --d) {
    v.extent[d] = t.shape[d];
    if (v.extent[d] < 0)
      return fail(status::invalid_shape, "DLPack shape[" + std::to_string(d) + "] is negative");
    v.stride[d] = t.strides ? t.strides[d] : compact;
    compact *= v.extent[d];
  }
  if (t.data == nullptr) {
    if (v.size() > 0) return fail(status::invalid_argument, "DLPack tensor has null data");
    return v;  // an empty tensor may have no storage
  }
  using byte = std::conditional_t<std::is_const_v<T>, const unsigned char, unsigned char>;
  v.data = reinterpret_cast<T*>(static_cast<byte*>(t.data) + t.byte_offset);
  return v;
}

}  // namespace interop
SAGEPTQ_NAMESPACE_END
