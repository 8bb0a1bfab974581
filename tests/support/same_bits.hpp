#pragma once
// Bitwise equality of float vectors (so -0 != 0 and NaN payloads count): what "bit for bit" means in the tests.
#include <cstring>
#include <vector>

namespace sageptq_test {

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace sageptq_test
