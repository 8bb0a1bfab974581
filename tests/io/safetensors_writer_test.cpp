#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sageptq/core/random.hpp>
#include <sageptq/io/safetensors.hpp>
#include <sageptq/io/safetensors_writer.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "temp_dir.hpp"

namespace io = sageptq::io;
using sageptq::index_t;
using sageptq::status;
using sageptq_test::temp_dir;

namespace {

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

/// Writes `path` holding one U8 tensor "blob" of `bytes` (value i % 251) and metadata "tag" = `tag`; the progress
/// callback, if given, runs after each chunk.
sageptq::outcome write_blob(const std::filesystem::path& path, std::size_t bytes, const std::string& tag,
                            const io::write_progress& progress = {}) {
  std::vector<std::uint8_t> blob(bytes);
  for (std::size_t i = 0; i < bytes; ++i) blob[i] = static_cast<std::uint8_t>(i % 251);
  io::safetensors_writer writer;
  writer.set_metadata("tag", tag);
  if (auto added = writer.add<std::uint8_t>("blob", {static_cast<index_t>(bytes)}, blob); !added.ok()) return added;
  return writer.write(path, progress);
}

/// The file at `path` is a complete blob written by write_blob with `tag`.
bool is_complete_blob(const std::filesystem::path& path, std::size_t bytes, const std::string& tag) {
  auto file = io::safetensors_file::open(path);
  if (!file.ok() || file->metadata().at("tag") != tag) return false;
  const io::tensor* blob = file->find("blob");
  if (!blob || blob->bytes.size() != bytes) return false;
  for (std::size_t i = 0; i < bytes; i += 4093)
    if (static_cast<std::uint8_t>(blob->bytes[i]) != i % 251) return false;
  return static_cast<std::uint8_t>(blob->bytes[bytes - 1]) == (bytes - 1) % 251;
}

}  // namespace

TEST_CASE("safetensors_writer: round trip of every dtype, 64-byte aligned, with metadata") {
  temp_dir dir;
  sageptq::random_generator rng(3);
  std::vector<float> f32(3 * 5);
  for (float& v : f32) v = static_cast<float>(rng.normal());
  std::vector<sageptq::fp16> f16;
  std::vector<sageptq::bf16> b16;
  for (int i = 0; i < 7; ++i) {
    f16.emplace_back(static_cast<float>(rng.normal()));
    b16.emplace_back(static_cast<float>(rng.normal()));
  }
  std::vector<std::uint8_t> packed(128);
  for (auto& b : packed) b = static_cast<std::uint8_t>(rng.below(256));

  io::safetensors_writer writer;
  REQUIRE(writer.add<float>("w.f32", {3, 5}, f32).ok());
  REQUIRE(writer.add<sageptq::fp16>("w.f16", {7}, f16).ok());
  REQUIRE(writer.add<sageptq::bf16>("w.bf16", {1, 7}, b16).ok());
  REQUIRE(writer.add<std::uint8_t>("w.packed", {2, 64}, packed).ok());
  REQUIRE(writer.add<float>("empty", {0, 4}, std::span<const float>{}).ok());
  writer.set_metadata("format_version", "1");
  writer.set_metadata("layers", R"({"w":{"bits":1}})");
  const auto path = dir / "out.safetensors";
  std::uint64_t last_done = 0, last_total = 0;
  REQUIRE(writer.write(path, [&](std::uint64_t done, std::uint64_t total) {
                  CHECK(done > last_done);
                  last_done = done;
                  last_total = total;
                }).ok());
  CHECK(last_done == last_total);
  CHECK(last_total == std::filesystem::file_size(path));
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    CHECK_MESSAGE(entry.path() == path, "left behind: " << entry.path());

  auto file = io::safetensors_file::open(path);
  REQUIRE_MESSAGE(file.ok(), file.message());
  CHECK(file->metadata().at("format_version") == "1");
  CHECK(file->metadata().at("layers") == R"({"w":{"bits":1}})");
  const std::byte* base = file->tensors().front().bytes.data();
  CHECK(reinterpret_cast<std::uintptr_t>(base) % 64 == 0);  // the data section starts aligned (mappings are)
  int padding = 0;
  for (const io::tensor& t : file->tensors()) {
    if (t.name.starts_with("__padding__.")) {
      ++padding;
      continue;
    }
    CHECK_MESSAGE((t.bytes.data() - base) % 64 == 0, t.name);
  }
  CHECK(padding == 3);  // after the 60-byte f32, the 14-byte f16 and the 14-byte bf16 tensors

  CHECK(same_bytes(file->find("w.f32")->bytes, std::as_bytes(std::span(f32))));
  CHECK(file->find("w.f32")->shape == std::vector<index_t>{3, 5});
  CHECK(file->find("w.f16")->type == io::dtype::f16);
  CHECK(same_bytes(file->find("w.f16")->bytes, std::as_bytes(std::span(f16))));
  CHECK(file->find("w.bf16")->type == io::dtype::bf16);
  CHECK(same_bytes(file->find("w.bf16")->bytes, std::as_bytes(std::span(b16))));
  CHECK(file->find("w.packed")->type == io::dtype::u8);
  CHECK(same_bytes(file->find("w.packed")->bytes, std::as_bytes(std::span(packed))));
  CHECK(file->find("empty")->numel() == 0);
  auto f16_back = io::to_floats(*file->find("w.f16"));
  REQUIRE(f16_back.ok());
  CHECK((*f16_back)[3] == f16[3].to_float());

  // Tensors pass through unchanged: a read tensor is written back in its own dtype.
  io::safetensors_writer copy;
  const io::tensor& source = *file->find("w.bf16");
  REQUIRE(copy.add(source.name, source.type, source.shape, source.bytes).ok());
  REQUIRE(copy.write(dir / "copy.safetensors").ok());
  auto copied = io::safetensors_file::open(dir / "copy.safetensors");
  REQUIRE(copied.ok());
  CHECK(same_bytes(copied->find("w.bf16")->bytes, source.bytes));
}

TEST_CASE("safetensors_writer: bad tensors and unwritable paths are reported") {
  temp_dir dir;
  std::vector<float> values(6);
  io::safetensors_writer writer;
  CHECK(writer.add<float>("x", {2, 2}, values).code() == status::invalid_shape);
  CHECK(writer.add<float>("x", {-1, 6}, values).code() == status::invalid_shape);
  CHECK(writer.add<float>("", {6}, values).code() == status::invalid_argument);
  CHECK(writer.add<float>("__metadata__", {6}, values).code() == status::invalid_argument);
  REQUIRE(writer.add<float>("x", {2, 3}, values).ok());
  CHECK(writer.add<float>("x", {6}, values).code() == status::invalid_argument);

  const sageptq::outcome unwritable = writer.write(dir / "no_such_dir" / "out.safetensors");
  CHECK(unwritable.code() == status::io_error);
  CHECK(unwritable.message().find("no_such_dir") != std::string::npos);

  io::safetensors_writer not_utf8;
  REQUIRE(not_utf8.add<float>("w\xff", {6}, values).ok());
  CHECK(not_utf8.write(dir / "bad.safetensors").code() == status::invalid_argument);
  CHECK_FALSE(std::filesystem::exists(dir / "bad.safetensors"));
}

TEST_CASE("safetensors_writer: a writer killed mid-file leaves no file, or the previous one, never a partial one") {
  temp_dir dir;
  const auto path = dir / "model.safetensors";
  constexpr std::size_t big = std::size_t{24} << 20;  // 24 chunks of 1 MiB

  // Kill the child after its first chunk is on disk: it sleeps after every chunk, so it is mid-file.
  const auto kill_mid_write = [&](const std::string& tag) {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::close(ready[0]);
      bool told = false;
      (void)write_blob(path, big, tag, [&](std::uint64_t, std::uint64_t) {
        if (!told) told = ::write(ready[1], "x", 1) == 1;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      });
      ::_exit(0);
    }
    ::close(ready[1]);
    char byte;
    REQUIRE(::read(ready[0], &byte, 1) == 1);
    ::close(ready[0]);
    const auto tmp = dir / ("model.safetensors.tmp." + std::to_string(child));
    CHECK(std::filesystem::exists(tmp));  // proof that the kill lands mid-write
    ::kill(child, SIGKILL);
    int wstatus = 0;
    REQUIRE(::waitpid(child, &wstatus, 0) == child);
    CHECK((WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL));
    std::filesystem::remove(tmp);  // what a restarted writer (another pid) would clean up or ignore
  };

  kill_mid_write("first");
  CHECK_FALSE(std::filesystem::exists(path));

  REQUIRE(write_blob(path, 4096, "previous").ok());
  kill_mid_write("second");
  CHECK(is_complete_blob(path, 4096, "previous"));

  // Kills at arbitrary moments, including after the rename: either the previous file or the complete new one.
  for (int delay_ms : {0, 1, 3, 10, 30, 100, 400}) {
    const std::string tag = "delay" + std::to_string(delay_ms);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) ::_exit(write_blob(path, big / 4, tag).ok() ? 0 : 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ::kill(child, SIGKILL);
    int wstatus = 0;
    REQUIRE(::waitpid(child, &wstatus, 0) == child);
    INFO("delay " << delay_ms << " ms, child " << (WIFSIGNALED(wstatus) ? "killed" : "finished"));
    CHECK((is_complete_blob(path, 4096, "previous") || is_complete_blob(path, big / 4, tag)));
    if (WIFEXITED(wstatus)) CHECK(is_complete_blob(path, big / 4, tag));
    std::filesystem::remove(dir / ("model.safetensors.tmp." + std::to_string(child)));
    REQUIRE(write_blob(path, 4096, "previous").ok());
  }
}
