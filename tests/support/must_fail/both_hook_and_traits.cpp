// Must NOT compile: a type that provides both the ADL hook and tensor_traits is ambiguous, and view() says so
// ("provides both sageptq_to_view() and tensor_traits<>"). Built only by the must-fail ctest, never by `all`.
#include <sageptq/core/tensor_traits.hpp>

namespace engine {
struct both {
  float value = 0;
};
inline sageptq::strided_view<const float, 2> sageptq_to_view(const both& b) { return {&b.value, {1, 1}, {1, 1}}; }
}  // namespace engine

template <>
struct sageptq::tensor_traits<engine::both> {
  using element_type = const float;
  using space = sageptq::host_space;
  static constexpr int rank = 2;
  static const float* data(const engine::both& b) { return &b.value; }
  static int extent(const engine::both&, int) { return 1; }
  static int stride(const engine::both&, int) { return 1; }
};

int main() {
  const engine::both b;
  return static_cast<int>(sageptq::view(b)(0, 0));
}
