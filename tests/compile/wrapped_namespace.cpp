// Three copies of sageptq in one binary: plain, and wrapped in vendor_a and vendor_b. Each must run its own code
// (its own assertion handler catches its assertion), give the same numbers, and have distinct types.

#include <cstdio>

#include "copy.hpp"

int main() {
  const copy_report reports[] = {run_plain(), run_vendor_a(), run_vendor_b()};
  int failures = 0;
  for (const auto& r : reports) {
    std::printf("%-9s handler=%-9s type=%s checksum=%016llx bpw=%.6f\n", r.copy.c_str(), r.handler.c_str(),
                r.type_name.c_str(), static_cast<unsigned long long>(r.checksum), r.full_bpw);
    if (r.handler != r.copy) {
      std::printf("FAILED: an assertion of copy %s reached the handler of copy '%s' (ODR clash)\n", r.copy.c_str(),
                  r.handler.c_str());
      ++failures;
    }
    if (r.checksum != reports[0].checksum || r.full_bpw != reports[0].full_bpw) {
      std::printf("FAILED: copy %s quantized differently from copy %s\n", r.copy.c_str(), reports[0].copy.c_str());
      ++failures;
    }
    for (const auto& other : reports)
      if (&other != &r && other.type_name == r.type_name) {
        std::printf("FAILED: copies %s and %s share the type %s\n", r.copy.c_str(), other.copy.c_str(),
                    r.type_name.c_str());
        ++failures;
      }
  }
  return failures ? 1 : 0;
}
