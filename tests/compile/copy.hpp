#pragma once
// What one compiled copy of sageptq reports (plain types only: the copies share no sageptq type).

#include <cstdint>
#include <string>

struct copy_report {
  std::string copy;            ///< which copy ran
  std::string handler;         ///< which copy's assertion handler caught the assertion raised through that copy
  std::string type_name;       ///< typeid(sageptq::fp16).name(): differs between copies in different namespaces
  std::uint64_t checksum = 0;  ///< hash of the packed rtn and q1_0 output of a seeded matrix
  double full_bpw = 0;
};

// One per compiled copy (see CMakeLists.txt): copy.cpp defines run_<SAGEPTQ_TEST_COPY>().
copy_report run_plain();
copy_report run_vendor_a();
copy_report run_vendor_b();
copy_report run_clash_x();
copy_report run_clash_y();
