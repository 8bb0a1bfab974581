// The program the self-containment TUs are linked into: linking is the test (see CMakeLists.txt).

#include <cstdio>

int main() {
  std::printf("%d public headers compile on their own and link together\n", SAGEPTQ_TEST_HEADER_COUNT);
  return 0;
}
