#pragma once
/// @file safetensors.hpp
/// Reader for safetensors checkpoints: one file, or the shards a Hugging Face `model.safetensors.index.json` lists.
///
/// Files are memory-mapped read-only and validated against the format's rules before any tensor is handed out:
/// an 8-byte little-endian header length (at most 100 MB and within the file); a header that is one UTF-8 JSON
/// object without duplicate keys; an optional string-to-string "__metadata__"; for every tensor exactly "dtype",
/// "shape" and "data_offsets", a shape whose byte size equals its offset span, and spans that tile the data section
/// exactly (no holes, no overlaps, nothing past the end). A violation returns status::malformed_input naming the
/// file and the tensor or offset; a dtype this build does not read (anything but F32, F16, BF16, U8) returns
/// status::unsupported naming it. Nothing throws out of these functions.
///
/// Tensors are descriptors (name, dtype, shape, bytes) that keep their file's mapping alive; `view<T, Rank>()` gives
/// a strided_view into it, `to_floats()` a converted copy. Thread safety: everything is immutable after open().

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"
#include "dtype.hpp"
#include "json.hpp"
#include "mapped_file.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {

static_assert(std::endian::native == std::endian::little,
              "sageptq: io/ views little-endian file data in place and needs a little-endian host");

/// Largest header the reader accepts (the reference implementation's bound).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

/// One tensor of a safetensors file: a descriptor of bytes inside the file's mapping, which it keeps alive.
struct tensor {
  std::string name;
  dtype type = dtype::f32;
  std::vector<index_t> shape;        ///< empty for a scalar
  std::span<const std::byte> bytes;  ///< exactly numel() * dtype_size(type) bytes
  std::shared_ptr<const mapped_file> file;

  [[nodiscard]] index_t numel() const noexcept {
    index_t n = 1;
    for (index_t d : shape) n *= d;
    return n;
  }

  /// A row-major view of the elements as T (float, fp16, bf16 or std::uint8_t). invalid_argument when T is not the
  /// stored dtype, invalid_shape when Rank differs from the stored rank, invalid_layout when the bytes are not
  /// aligned for T (a header whose length is not a multiple of the element size).
  template <class T, int Rank>
  [[nodiscard]] result<strided_view<const T, Rank>> view() const {
    if (type != dtype_of<T>)
      return fail(status::invalid_argument, "tensor \"" + name + "\" is " + std::string(to_string(type)) + ", not " +
                                                std::string(to_string(dtype_of<T>)));
    if (shape.size() != static_cast<std::size_t>(Rank))
      return fail(status::invalid_shape, "tensor \"" + name + "\" has rank " + std::to_string(shape.size()) +
                                             ", not " + std::to_string(Rank));
    if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(T) != 0)
      return fail(status::invalid_layout, "tensor \"" + name + "\" is not aligned for its dtype in the file");
    strided_view<const T, Rank> v{reinterpret_cast<const T*>(bytes.data()), {}, {}};
    index_t stride = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      v.extent[d] = shape[static_cast<std::size_t>(d)];
      v.stride[d] = stride;
      stride *= v.extent[d];
    }
    return v;
  }
};

/// The elements of a floating-point tensor converted to float (a copy; any alignment). invalid_argument for U8.
inline result<std::vector<float>> to_floats(const tensor& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  const std::byte* src = t.bytes.data();
  const auto half_at = [src](std::size_t i) {
    std::uint16_t bits;
    std::memcpy(&bits, src + 2 * i, 2);
    return bits;
  };
  switch (t.type) {
    case dtype::f32:
      if (!out.empty()) std::memcpy(out.data(), src, out.size() * sizeof(float));
      return out;
    case dtype::f16:
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = fp16::from_bits(half_at(i)).to_float();
      return out;
    case dtype::bf16:
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = bf16::from_bits(half_at(i)).to_float();
      return out;
    case dtype::u8: break;
  }
  return fail(status::invalid_argument, "tensor \"" + t.name + "\" is a " + std::string(to_string(t.type)) +
                                            " byte tensor, not floating point");
}

namespace detail {

inline std::uint64_t load_u64_le(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

/// A header entry checked on its own: the tensor (bytes not yet placed) and its span in the data section.
struct tensor_entry {
  tensor t;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

inline result<tensor_entry> parse_tensor_entry(const std::string& name, const json& entry, std::uint64_t data_bytes,
                                         const std::string& origin) {
  const std::string where = origin + ": tensor \"" + name + "\"";
  const auto malformed = [&](const std::string& what) { return fail(status::malformed_input, where + ": " + what); };
  if (!entry.is_object()) return malformed("entry is not a JSON object");
  for (const auto& [key, _] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets") return malformed("unknown field \"" + key + "\"");
  const auto dtype_field = entry.find("dtype");
  const auto shape_field = entry.find("shape");
  const auto offsets_field = entry.find("data_offsets");
  if (dtype_field == entry.end() || shape_field == entry.end() || offsets_field == entry.end())
    return malformed("needs \"dtype\", \"shape\" and \"data_offsets\"");
  if (!dtype_field->is_string()) return malformed("dtype is not a string");
  if (!shape_field->is_array()) return malformed("shape is not an array");
  if (!offsets_field->is_array() || offsets_field->size() != 2 || !(*offsets_field)[0].is_number_unsigned() ||
      !(*offsets_field)[1].is_number_unsigned())
    return malformed("data_offsets is not a pair of non-negative integers");

  const auto name_of_dtype = dtype_field->get<std::string>();
  const auto type = parse_dtype(name_of_dtype);
  if (!type) return fail(status::unsupported, where + ": dtype \"" + name_of_dtype + "\" is not supported");

  constexpr auto max_index = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
  tensor t;
  t.name = name;
  t.type = *type;
  std::uint64_t bytes = dtype_size(*type);
  bool overflow = false;
  for (const auto& dim : *shape_field) {
    if (!dim.is_number_unsigned()) return malformed("shape holds a value that is not a non-negative integer");
    const auto d = dim.get<std::uint64_t>();
    overflow = overflow || d > max_index || (d != 0 && bytes > max_index / d);
    bytes = overflow ? 0 : bytes * d;
    t.shape.push_back(static_cast<index_t>(d));
  }
  if (overflow) return malformed("shape size overflows");

  const auto begin = (*offsets_field)[0].get<std::uint64_t>();
  const auto end = (*offsets_field)[1].get<std::uint64_t>();
  const std::string span = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ")";
  if (begin > end) return malformed(span + " ends before it begins");
  if (end > data_bytes) return malformed(span + " runs past the data section (" + std::to_string(data_bytes) + " bytes)");
  if (end - begin != bytes)
    return malformed(span + " holds " + std::to_string(end - begin) + " bytes but dtype and shape need " +
                     std::to_string(bytes));
  return tensor_entry{std::move(t), begin, end};
}

}  // namespace detail

/// One validated safetensors file.
class safetensors_file {
 public:
  /// Maps and validates `path`.
  static result<safetensors_file> open(const std::filesystem::path& path) {
    auto file = mapped_file::open(path);
    if (!file.ok()) return file.as_outcome();
    return parse(std::move(file).value());
  }

  /// Validates the bytes of an already mapped file.
  static result<safetensors_file> parse(std::shared_ptr<const mapped_file> file) {
    const std::string origin = file->path().string();
    const auto malformed = [&](const std::string& what) { return fail(status::malformed_input, origin + ": " + what); };
    const std::span<const std::byte> bytes = file->bytes();
    if (bytes.size() < 8)
      return malformed("file of " + std::to_string(bytes.size()) + " bytes has no 8-byte header length");
    const std::uint64_t header_bytes = detail::load_u64_le(bytes.data());
    if (header_bytes > max_header_bytes)
      return malformed("header length " + std::to_string(header_bytes) + " exceeds the limit of " +
                       std::to_string(max_header_bytes) + " bytes");
    if (header_bytes > bytes.size() - 8)
      return malformed("header length " + std::to_string(header_bytes) + " runs past the end of the file (" +
                       std::to_string(bytes.size()) + " bytes)");
    const std::span<const std::byte> data = bytes.subspan(8 + header_bytes);
    const std::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), header_bytes);
    if (header.empty() || header.front() != '{') return malformed("header does not start with '{'");

    auto parsed = detail::parse_json_strict(header, origin + ": header");
    if (!parsed.ok()) return parsed.as_outcome();
    const detail::json& root = *parsed;
    if (!root.is_object()) return malformed("header is not a JSON object");

    safetensors_file out;
    std::vector<detail::tensor_entry> entries;
    for (const auto& [name, entry] : root.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) return malformed("__metadata__ is not a JSON object");
        for (const auto& [key, value] : entry.items()) {
          if (!value.is_string()) return malformed("__metadata__ value of \"" + key + "\" is not a string");
          out.metadata_.emplace(key, value.get<std::string>());
        }
        continue;
      }
      auto parsed_entry = detail::parse_tensor_entry(name, entry, data.size(), origin);
      if (!parsed_entry.ok()) return parsed_entry.as_outcome();
      entries.push_back(std::move(parsed_entry).value());
    }

    // The spans must tile [0, data.size()) exactly: sorted by begin (then end, for empty tensors), each one starts
    // where the previous ended.
    std::sort(entries.begin(), entries.end(), [](const detail::tensor_entry& a, const detail::tensor_entry& b) {
      return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
    });
    std::uint64_t covered = 0;
    for (auto& [t, begin, end] : entries) {
      if (begin < covered)
        return malformed("tensor \"" + t.name + "\" at data offset " + std::to_string(begin) +
                         " overlaps the previous tensor, which ends at " + std::to_string(covered));
      if (begin > covered)
        return malformed("data bytes [" + std::to_string(covered) + ", " + std::to_string(begin) +
                         ") before tensor \"" + t.name + "\" belong to no tensor (a hole)");
      t.bytes = data.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin));
      t.file = file;
      covered = end;
      out.index_.emplace(t.name, out.tensors_.size());
      out.tensors_.push_back(std::move(t));
    }
    if (covered != data.size())
      return malformed("tensors cover " + std::to_string(covered) + " of the " + std::to_string(data.size()) +
                       " bytes of the data section");
    out.file_ = std::move(file);
    return out;
  }

  /// Tensors in file order.
  [[nodiscard]] const std::vector<tensor>& tensors() const noexcept { return tensors_; }

  /// The tensor called `name`, or nullptr.
  [[nodiscard]] const tensor* find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return file_->path(); }

 private:
  safetensors_file() = default;

  std::shared_ptr<const mapped_file> file_;
  std::vector<tensor> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;  ///< name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

/// A model's weights: one safetensors file, or the shards of a Hugging Face index.
class checkpoint {
 public:
  /// `path` is a model directory (model.safetensors.index.json is preferred over model.safetensors), an index
  /// `.json` file or a `.safetensors` file. Every shard is opened and validated; the index must list each tensor of
  /// each shard under that shard, and nothing else.
  static result<checkpoint> open(const std::filesystem::path& path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      if (std::filesystem::exists(path / "model.safetensors.index.json", ec))
        return open_index(path / "model.safetensors.index.json");
      if (std::filesystem::exists(path / "model.safetensors", ec)) return open_single(path / "model.safetensors");
      return fail(status::io_error,
                  path.string() + ": holds neither model.safetensors.index.json nor model.safetensors");
    }
    if (path.extension() == ".json") return open_index(path);
    return open_single(path);
  }

  /// The tensor called `name` in any shard, or nullptr.
  [[nodiscard]] const tensor* find(std::string_view name) const {
    for (const safetensors_file& f : files_)
      if (const tensor* t = f.find(name)) return t;
    return nullptr;
  }

  /// The validated files (one, or the shards in name order).
  [[nodiscard]] const std::vector<safetensors_file>& files() const noexcept { return files_; }

 private:
  checkpoint() = default;

  static result<checkpoint> open_single(const std::filesystem::path& path) {
    auto file = safetensors_file::open(path);
    if (!file.ok()) return file.as_outcome();
    checkpoint out;
    out.files_.push_back(std::move(file).value());
    return out;
  }

  static result<checkpoint> open_index(const std::filesystem::path& index_path) {
    const std::string origin = index_path.string();
    const auto malformed = [&](const std::string& what) { return fail(status::malformed_input, origin + ": " + what); };
    auto mapped = mapped_file::open(index_path);
    if (!mapped.ok()) return mapped.as_outcome();
    const auto bytes = (*mapped)->bytes();
    if (bytes.size() > max_header_bytes) return malformed("index is larger than " + std::to_string(max_header_bytes));
    auto parsed =
        detail::parse_json_strict({reinterpret_cast<const char*>(bytes.data()), bytes.size()}, origin);
    if (!parsed.ok()) return parsed.as_outcome();
    const auto weight_map = parsed->is_object() ? parsed->find("weight_map") : parsed->end();
    if (weight_map == parsed->end() || !weight_map->is_object()) return malformed("has no \"weight_map\" object");

    std::map<std::string, std::string, std::less<>> shard_of;
    for (const auto& [name, shard] : weight_map->items()) {
      if (!shard.is_string()) return malformed("weight_map entry \"" + name + "\" is not a file name");
      const auto file_name = shard.get<std::string>();
      if (file_name.empty() || file_name == "." || file_name == ".." || file_name.find('/') != std::string::npos)
        return malformed("weight_map entry \"" + name + "\" names \"" + file_name + "\", not a file beside the index");
      shard_of.emplace(name, file_name);
    }

    std::set<std::string> shards;
    for (const auto& [name, shard] : shard_of) shards.insert(shard);
    checkpoint out;
    for (const std::string& shard : shards) {
      auto file = safetensors_file::open(index_path.parent_path() / shard);  // a missing shard: io_error with its path
      if (!file.ok()) return file.as_outcome();
      for (const tensor& t : file->tensors()) {
        const auto listed = shard_of.find(t.name);
        if (listed == shard_of.end() || listed->second != shard)
          return malformed("tensor \"" + t.name + "\" of " + shard + " is " +
                           (listed == shard_of.end() ? "not in weight_map" : "listed under " + listed->second));
      }
      out.files_.push_back(std::move(file).value());
    }
    for (const auto& [name, shard] : shard_of)
      if (!out.find(name)) return malformed("weight_map lists \"" + name + "\" in " + shard + ", which lacks it");
    return out;
  }

  std::vector<safetensors_file> files_;
};

}  // namespace io
SAGEPTQ_NAMESPACE_END
