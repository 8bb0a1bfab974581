#pragma once
/// @file mapped_file.hpp
/// A whole file mapped read-only into memory (POSIX mmap). Shared ownership: tensors viewed from the mapping keep a
/// `std::shared_ptr<const mapped_file>`, so the bytes stay valid as long as anything refers to them.
/// Thread safety: the mapping is immutable; any number of threads may read it.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "../config.hpp"
#include "../core/status.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {

class mapped_file {
 public:
  /// Maps `path` read-only. io_error names the path and the system's reason.
  static result<std::shared_ptr<const mapped_file>> open(const std::filesystem::path& path) {
    const auto failure = [&](const char* what) {
      return fail(status::io_error, path.string() + ": " + what + ": " + std::strerror(errno));
    };
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return failure("cannot open");
    struct ::stat st {};
    const bool stat_ok = ::fstat(fd, &st) == 0;
    if (!stat_ok || !S_ISREG(st.st_mode)) {
      outcome error = stat_ok ? fail(status::io_error, path.string() + ": not a regular file") : failure("cannot stat");
      ::close(fd);
      return error;
    }
    std::shared_ptr<mapped_file> file(new mapped_file(path));
    if (st.st_size > 0) {  // mmap rejects empty ranges; an empty file maps to an empty span
      void* data = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (data == MAP_FAILED) {
        outcome error = failure("cannot map");
        ::close(fd);
        return error;
      }
      file->bytes_ = {static_cast<const std::byte*>(data), static_cast<std::size_t>(st.st_size)};
    }
    ::close(fd);  // the mapping outlives the descriptor
    return std::shared_ptr<const mapped_file>(std::move(file));
  }

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() {
    if (!bytes_.empty()) ::munmap(const_cast<std::byte*>(bytes_.data()), bytes_.size());
  }

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return bytes_; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  explicit mapped_file(std::filesystem::path path) : path_(std::move(path)) {}

  std::filesystem::path path_;
  std::span<const std::byte> bytes_;
};

}  // namespace io
SAGEPTQ_NAMESPACE_END
