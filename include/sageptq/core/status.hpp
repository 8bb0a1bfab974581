#pragma once
/// @file status.hpp
/// The one error model of sageptq.
///
///  - Input and setup errors (bad shapes, NaN/Inf weights, malformed files, unsupported dtypes) are returned as a
///    `result<T>` holding a `status` and a message, and *no value*: "a valid value or an error, never both".
///  - Numerical outcomes (damping had to be raised, a search did not converge) are different: the best-effort value is
///    still useful, so the result holds the value *and* `status::numerical_issue` / `status::no_convergence` with a
///    message saying what happened. `ok()` is false for them; `has_value()` is true. Nothing is silent.
///  - Programmer errors (violated preconditions) are SAGEPTQ_ASSERTs. The library never prints, exits or aborts
///    outside an assertion.
///  - Host convenience layers may call `value_or_throw()`, which throws `sageptq::error` (or fails an assertion when
///    built with -fno-exceptions). Everything in core/, format/ and the kernels builds with -fno-exceptions.

#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "../config.hpp"

#if SAGEPTQ_HAS_EXCEPTIONS
#include <stdexcept>
#endif

SAGEPTQ_NAMESPACE_BEGIN

enum class status : int {
  success = 0,
  invalid_argument,     ///< a parameter is out of range (bits = 0, group = 0, ...)
  invalid_shape,        ///< extents disagree or are zero where they must not be
  invalid_layout,       ///< strides/alignment the operation cannot handle
  non_finite_input,     ///< NaN or Inf in weights or statistics
  unsupported,          ///< a dtype, format version or option this build does not implement
  workspace_too_small,  ///< caller-owned workspace is smaller than workspace_size()
  malformed_input,      ///< a file or byte buffer violates its format's rules
  io_error,             ///< the operating system refused a read or write
  numerical_issue,      ///< best-effort value returned (e.g. damping raised until Cholesky succeeded)
  no_convergence,       ///< best-effort value returned by an iteration that hit its limit
  device_error,         ///< a CUDA runtime call failed
};

/// Stable lower-case name of a status, for messages and logs.
SAGEPTQ_HOST_DEVICE constexpr const char* to_string(status s) noexcept {
  switch (s) {
    case status::success: return "success";
    case status::invalid_argument: return "invalid_argument";
    case status::invalid_shape: return "invalid_shape";
    case status::invalid_layout: return "invalid_layout";
    case status::non_finite_input: return "non_finite_input";
    case status::unsupported: return "unsupported";
    case status::workspace_too_small: return "workspace_too_small";
    case status::malformed_input: return "malformed_input";
    case status::io_error: return "io_error";
    case status::numerical_issue: return "numerical_issue";
    case status::no_convergence: return "no_convergence";
    case status::device_error: return "device_error";
  }
  return "unknown_status";
}

/// True for the statuses that come with a best-effort value.
SAGEPTQ_HOST_DEVICE constexpr bool is_numerical_outcome(status s) noexcept {
  return s == status::numerical_issue || s == status::no_convergence;
}

#if SAGEPTQ_HAS_EXCEPTIONS
/// Thrown only by host convenience layers (`value_or_throw`, CLI helpers).
class error : public std::runtime_error {
 public:
  error(status code, const std::string& message)
      : std::runtime_error(std::string("sageptq: ") + to_string(code) + ": " + message), code_(code) {}
  [[nodiscard]] status code() const noexcept { return code_; }

 private:
  status code_;
};
#endif

/// A status with its message and no value: the result of an operation that produces nothing else.
class [[nodiscard]] outcome {
 public:
  outcome() = default;
  outcome(status code, std::string message) : code_(code), message_(std::move(message)) {}

  [[nodiscard]] bool ok() const noexcept { return code_ == status::success; }
  explicit operator bool() const noexcept { return ok(); }
  [[nodiscard]] status code() const noexcept { return code_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }

  void throw_if_error() const {
    if (!ok()) SAGEPTQ_THROW((error(code_, message_)));
  }

 private:
  status code_ = status::success;
  std::string message_;
};

/// Value-or-status. Holds a value when ok(), never a value for input errors, and a best-effort value together with a
/// numerical-outcome status (see the file comment).
template <class T>
class [[nodiscard]] result {
  static_assert(!std::is_reference_v<T>, "result<T&> is not supported");

 public:
  using value_type = T;

  result(T value) : value_(std::move(value)) {}  // NOLINT: implicit on purpose, `return value;` reads well
  result(outcome failure) : code_(failure.code()), message_(failure.message()) {
    SAGEPTQ_ASSERT(!failure.ok());
  }
  /// A best-effort value with a numerical-outcome status.
  result(T value, status numerical, std::string message)
      : code_(numerical), message_(std::move(message)), value_(std::move(value)) {
    SAGEPTQ_ASSERT(numerical == status::success || is_numerical_outcome(numerical));
  }

  [[nodiscard]] bool ok() const noexcept { return code_ == status::success; }
  [[nodiscard]] bool has_value() const noexcept { return value_.has_value(); }
  [[nodiscard]] status code() const noexcept { return code_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  [[nodiscard]] outcome as_outcome() const { return {code_, message_}; }

  T& value() & { SAGEPTQ_ASSERT(has_value()); return *value_; }
  const T& value() const& { SAGEPTQ_ASSERT(has_value()); return *value_; }
  T&& value() && { SAGEPTQ_ASSERT(has_value()); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  /// The value, accepting numerical outcomes; throws (or asserts) on input errors.
  T value_or_throw() && {
    if (!has_value()) SAGEPTQ_THROW((error(code_, message_)));
    return std::move(*value_);
  }

 private:
  status code_ = status::success;
  std::string message_;
  std::optional<T> value_;
};

/// Shorthand for returning an error: `return fail(status::invalid_shape, "rows must be > 0");`
inline outcome fail(status code, std::string message) { return {code, std::move(message)}; }

SAGEPTQ_NAMESPACE_END
