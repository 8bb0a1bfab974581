#include <doctest/doctest.h>

#include <sageptq/io/tokens.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "temp_dir.hpp"

using sageptq::status;
using sageptq_test::temp_dir;
using sageptq_test::write_bytes;

TEST_CASE("tokens: little-endian uint16 ids, checked against the vocabulary") {
  temp_dir dir;
  const auto path = dir / "t.u16.bin";
  write_bytes(path, std::string("\x01\x00\xff\x01\x00\x02\x34\x12", 8));

  auto tokens = sageptq::io::read_tokens(path, 0x1235);
  REQUIRE_MESSAGE(tokens.ok(), tokens.message());
  CHECK(*tokens == std::vector<std::uint16_t>{1, 0x1ff, 0x200, 0x1234});

  auto out_of_vocab = sageptq::io::read_tokens(path, 0x1234);
  CHECK(out_of_vocab.code() == status::malformed_input);
  CHECK_MESSAGE(out_of_vocab.message().find("token 3 has id 4660") != std::string::npos, out_of_vocab.message());
  CHECK(sageptq::io::read_tokens(path, 0x200).message().find("token 2 ") != std::string::npos);

  write_bytes(path, std::string("\x01\x00\x02", 3));
  auto odd = sageptq::io::read_tokens(path, 100);
  CHECK(odd.code() == status::malformed_input);
  CHECK(odd.message().find("3 bytes") != std::string::npos);

  write_bytes(path, "");
  auto empty = sageptq::io::read_tokens(path, 100);
  REQUIRE(empty.ok());
  CHECK(empty->empty());

  CHECK(sageptq::io::read_tokens(dir / "missing.bin", 100).code() == status::io_error);
  const std::vector<std::uint16_t> ids = {3, 9, 10};
  CHECK(sageptq::io::check_token_ids(ids, 11).ok());
  CHECK(sageptq::io::check_token_ids(ids, 10).code() == status::invalid_argument);
}

TEST_CASE("tokens: the shared evaluation file reads with the stories260k vocabulary") {
  const auto path = std::filesystem::path(SAGEPTQ_SHARED_DIR) / "data/tinystories/eval.tok512.u16.bin";
  REQUIRE_MESSAGE(std::filesystem::exists(path), "missing shared file " << path);
  auto tokens = sageptq::io::read_tokens(path, 512);
  REQUIRE_MESSAGE(tokens.ok(), tokens.message());
  CHECK(tokens->size() == 193'123);
  CHECK(tokens->front() == 1);  // BOS before every paragraph
  CHECK(sageptq::io::read_tokens(path, 300).code() == status::malformed_input);
}
