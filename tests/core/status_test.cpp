// The error model: a value, or an error and no value, or a best-effort value with a numerical outcome.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <sageptq/core/status.hpp>

using namespace sageptq;

namespace {
result<int> parse_positive(int x) {
  if (x <= 0) return fail(status::invalid_argument, "x must be > 0, got " + std::to_string(x));
  if (x > 100) return {100, status::numerical_issue, "clamped to 100"};
  return x;
}
}  // namespace

TEST_CASE("status names are stable and numerical outcomes are told apart") {
  CHECK(std::strcmp(to_string(status::success), "success") == 0);
  CHECK(std::strcmp(to_string(status::invalid_shape), "invalid_shape") == 0);
  CHECK(std::strcmp(to_string(status::non_finite_input), "non_finite_input") == 0);
  CHECK(std::strcmp(to_string(status::no_convergence), "no_convergence") == 0);
  CHECK(std::strcmp(to_string(static_cast<status>(999)), "unknown_status") == 0);
  static_assert(is_numerical_outcome(status::numerical_issue) && is_numerical_outcome(status::no_convergence));
  for (status s : {status::success, status::invalid_argument, status::invalid_shape, status::invalid_layout,
                   status::non_finite_input, status::unsupported, status::workspace_too_small,
                   status::malformed_input, status::io_error, status::device_error})
    CHECK_FALSE(is_numerical_outcome(s));
}

TEST_CASE("result: value") {
  const auto r = parse_positive(7);
  CHECK(r.ok());
  CHECK(r.has_value());
  CHECK(r.code() == status::success);
  CHECK(r.message().empty());
  CHECK(r.value() == 7);
  CHECK(*r == 7);
  CHECK(r.as_outcome().ok());
}

TEST_CASE("result: input error has no value") {
  auto r = parse_positive(-3);
  CHECK_FALSE(r.ok());
  CHECK_FALSE(r.has_value());
  CHECK(r.code() == status::invalid_argument);
  CHECK(r.message() == "x must be > 0, got -3");
  const outcome o = r.as_outcome();
  CHECK_FALSE(o);
  CHECK(o.code() == status::invalid_argument);
  CHECK(o.message() == r.message());
  CHECK_THROWS_AS(std::move(r).value_or_throw(), sageptq::error);
  try {
    (void)parse_positive(0).value_or_throw();
  } catch (const sageptq::error& e) {
    CHECK(e.code() == status::invalid_argument);
    CHECK(std::string(e.what()) == "sageptq: invalid_argument: x must be > 0, got 0");
  }
}

TEST_CASE("result: numerical outcome keeps the best-effort value and says so") {
  auto r = parse_positive(500);
  CHECK_FALSE(r.ok());
  CHECK(r.has_value());
  CHECK(r.code() == status::numerical_issue);
  CHECK(r.message() == "clamped to 100");
  CHECK(r.value() == 100);
  CHECK(std::move(r).value_or_throw() == 100);  // a numerical outcome is not an exception
}

TEST_CASE("result: move-only values and member access") {
  struct payload {
    std::vector<int> v;
    int size() const { return static_cast<int>(v.size()); }
  };
  result<payload> r = payload{{1, 2, 3}};
  CHECK(r->size() == 3);
  payload p = std::move(r).value();
  CHECK(p.v.size() == 3);
  static_assert(!std::is_default_constructible_v<result<int>>, "a result is a value or an error, never empty");
}

TEST_CASE("outcome: default is success; errors carry code and message") {
  const outcome ok;
  CHECK(ok.ok());
  CHECK(static_cast<bool>(ok));
  CHECK_NOTHROW(ok.throw_if_error());
  const outcome bad = fail(status::io_error, "cannot open x.bin");
  CHECK_FALSE(bad.ok());
  CHECK(bad.code() == status::io_error);
  CHECK(bad.message() == "cannot open x.bin");
  CHECK_THROWS_WITH_AS(bad.throw_if_error(), "sageptq: io_error: cannot open x.bin", sageptq::error);
  const result<int> from_outcome = bad;
  CHECK_FALSE(from_outcome.has_value());
  CHECK(from_outcome.code() == status::io_error);
}
