#pragma once
/// @file safetensors_writer.hpp
/// Writes a safetensors file that follows the reader's rules (safetensors.hpp) and keeps every tensor 64-byte
/// aligned in the file, so a mapping can hand packed words to vectorised kernels in place.
///
/// Layout: the header is padded with spaces so the data section starts at a multiple of the alignment; tensors
/// follow in the order they were added. The format allows no unindexed bytes, so a tensor whose size is not a
/// multiple of the alignment is followed by a U8 padding tensor named "__padding__.<k>" (packed byte tensors sized
/// to whole alignment units never need one). "__metadata__" is a string-to-string map; structured metadata goes in
/// as JSON text.
///
/// Writes are atomic: the bytes go to "<path>.tmp.<pid>", are fsync'ed, and the file is renamed over `path`, so a
/// crash or kill leaves either no file (or the previous one) or the complete new one.
/// Thread safety: one writer per thread; the tensor bytes it references must stay alive until write() returns.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"
#include "dtype.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {

/// Called while writing with (bytes written, total bytes), e.g. to draw a progress bar.
using write_progress = std::function<void(std::uint64_t, std::uint64_t)>;

/// Writes the concatenation of `pieces` to `path` atomically: into "<path>.tmp.<pid>", fsync'ed, then renamed over
/// `path` (and the directory fsync'ed). io_error names the file and the system's reason; the temporary is removed.
inline outcome write_file_atomically(const std::filesystem::path& path,
                                     std::span<const std::span<const std::byte>> pieces,
                                     const write_progress& progress = {}) {
  const auto failure = [](const std::filesystem::path& p, const char* what) {
    return fail(status::io_error, p.string() + ": " + what + ": " + std::strerror(errno));
  };
  const std::filesystem::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return failure(tmp, "cannot create");

  std::uint64_t total = 0, done = 0;
  for (const auto& piece : pieces) total += piece.size();
  const auto put = [&](std::span<const std::byte> bytes) {
    constexpr std::size_t chunk = std::size_t{1} << 20;
    while (!bytes.empty()) {
      const ::ssize_t n = ::write(fd, bytes.data(), std::min(bytes.size(), chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (n == 0) errno = EIO;
        return false;
      }
      bytes = bytes.subspan(static_cast<std::size_t>(n));
      done += static_cast<std::uint64_t>(n);
      if (progress) progress(done, total);
    }
    return true;
  };
  bool ok = true;
  for (const auto& piece : pieces) ok = ok && put(piece);
  if (!ok || ::fsync(fd) != 0) {
    outcome error = failure(tmp, "cannot write");
    ::close(fd);
    ::unlink(tmp.c_str());
    return error;
  }
  if (::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    outcome error = failure(path, "cannot close or rename the temporary file");
    ::unlink(tmp.c_str());
    return error;
  }
  // Make the rename itself durable.
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  if (const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return {};
}

class safetensors_writer {
 public:
  /// `alignment` (a power of two, 8 to 4096) applies to the data section start and to every tensor.
  explicit safetensors_writer(std::size_t alignment = 64) : alignment_(alignment) {
    SAGEPTQ_ASSERT(alignment >= 8 && alignment <= 4096 && (alignment & (alignment - 1)) == 0);
  }

  /// Adds a tensor of `shape` whose row-major elements are `bytes` (not copied: keep them alive until write()).
  /// invalid_argument for an empty, reserved ("__" prefix) or repeated name; invalid_shape when the byte count
  /// does not match shape and dtype.
  outcome add(std::string name, dtype type, std::vector<index_t> shape, std::span<const std::byte> bytes) {
    if (name.empty() || name.starts_with("__"))
      return fail(status::invalid_argument, "tensor name \"" + name + "\" is empty or reserved (starts with __)");
    if (std::any_of(entries_.begin(), entries_.end(), [&](const entry& e) { return e.name == name; }))
      return fail(status::invalid_argument, "tensor \"" + name + "\" was already added");
    std::uint64_t expected = dtype_size(type);
    for (index_t d : shape) {
      if (d < 0) return fail(status::invalid_shape, "tensor \"" + name + "\" has a negative extent");
      expected *= static_cast<std::uint64_t>(d);
    }
    if (expected != bytes.size())
      return fail(status::invalid_shape, "tensor \"" + name + "\": shape and dtype need " + std::to_string(expected) +
                                             " bytes, got " + std::to_string(bytes.size()));
    entries_.push_back({std::move(name), type, std::move(shape), bytes});
    return {};
  }

  /// Adds elements of type T (float, fp16, bf16 or std::uint8_t) as a tensor of the matching dtype.
  template <class T>
  outcome add(std::string name, std::vector<index_t> shape, std::span<const T> values) {
    return add(std::move(name), dtype_of<T>, std::move(shape), std::as_bytes(values));
  }

  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  /// Writes the file atomically (write_file_atomically). invalid_argument for a name or metadata that is not UTF-8.
  [[nodiscard]] outcome write(const std::filesystem::path& path, const write_progress& progress = {}) const {
    // Each tensor at an aligned offset; the gaps are indexed as padding tensors.
    static const std::byte zeros[4096] = {};
    std::vector<entry> layout;
    std::uint64_t offset = 0;
    for (const entry& e : entries_) {
      if (const std::uint64_t gap = (alignment_ - offset % alignment_) % alignment_; gap != 0) {
        layout.push_back({"__padding__." + std::to_string(layout.size()), dtype::u8, {static_cast<index_t>(gap)},
                          {zeros, static_cast<std::size_t>(gap)}});
        offset += gap;
      }
      layout.push_back(e);
      offset += e.bytes.size();
    }

    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    offset = 0;
    for (const entry& e : layout) {
      header[e.name] = {{"dtype", to_string(e.type)},
                        {"shape", e.shape},
                        {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& e) {  // the one error dump() raises: a string that is not UTF-8
      return fail(status::invalid_argument, std::string("tensor names and metadata must be UTF-8: ") + e.what());
    }
    text.append((alignment_ - (8 + text.size()) % alignment_) % alignment_, ' ');  // align the data section
    std::byte length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xffu);

    std::vector<std::span<const std::byte>> pieces = {length, std::as_bytes(std::span(text))};
    for (const entry& e : layout) pieces.push_back(e.bytes);
    return write_file_atomically(path, pieces, progress);
  }

 private:
  struct entry {
    std::string name;
    dtype type;
    std::vector<index_t> shape;
    std::span<const std::byte> bytes;
  };

  std::size_t alignment_;
  std::vector<entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace io
SAGEPTQ_NAMESPACE_END
