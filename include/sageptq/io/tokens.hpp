#pragma once
/// @file tokens.hpp
/// Token files: raw little-endian uint16 ids, no header (an empty file is zero tokens). Every id is checked against
/// the vocabulary, so an engine can index its embedding table with them unchecked.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/status.hpp"
#include "mapped_file.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {

/// invalid_argument naming the first position whose id is not below `vocab_size`.
inline outcome check_token_ids(std::span<const std::uint16_t> tokens, std::uint32_t vocab_size) {
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] >= vocab_size)
      return fail(status::invalid_argument, "token " + std::to_string(i) + " has id " + std::to_string(tokens[i]) +
                                                ", outside the vocabulary of " + std::to_string(vocab_size));
  return {};
}

/// Reads a token file. io_error when it cannot be read; malformed_input when its size is odd or an id is not below
/// `vocab_size` (the message names the first bad position).
inline result<std::vector<std::uint16_t>> read_tokens(const std::filesystem::path& path, std::uint32_t vocab_size) {
  auto file = mapped_file::open(path);
  if (!file.ok()) return file.as_outcome();
  const std::span<const std::byte> bytes = (*file)->bytes();
  if (bytes.size() % 2 != 0)
    return fail(status::malformed_input, path.string() + ": " + std::to_string(bytes.size()) +
                                             " bytes is not a whole number of uint16 tokens");
  std::vector<std::uint16_t> tokens(bytes.size() / 2);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<std::uint16_t>(static_cast<unsigned>(bytes[2 * i]) |
                                           static_cast<unsigned>(bytes[2 * i + 1]) << 8);
  if (outcome checked = check_token_ids(tokens, vocab_size); !checked.ok())
    return fail(status::malformed_input, path.string() + ": " + checked.message());
  return tokens;
}

}  // namespace io
SAGEPTQ_NAMESPACE_END
