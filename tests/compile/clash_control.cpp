// Control for wrapped_namespace.cpp: two *unwrapped* copies with different assertion handlers. The linker keeps one
// definition of each inline function, so one copy's assertion lands in the other's handler. This proves the main
// test can see an ODR clash; if this control stops seeing it, the main test has lost its power.

#include <cstdio>

#include "copy.hpp"

int main() {
  const copy_report x = run_clash_x(), y = run_clash_y();
  std::printf("clash_x handler=%s, clash_y handler=%s\n", x.handler.c_str(), y.handler.c_str());
  if (x.handler == x.copy && y.handler == y.copy) {
    std::printf("FAILED: two unwrapped copies did not clash; the wrapped-namespace test cannot detect clashes\n");
    return 1;
  }
  return 0;
}
