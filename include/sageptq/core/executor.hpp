#pragma once
/// @file executor.hpp
/// No hidden threads: a stage that can run in parallel takes an executor from the caller.
///
/// An executor is anything with
///     unsigned concurrency() const;                                     // how many tasks run at once
///     void parallel_for(index_t n, F&& f) const;                         // calls f(i) once for each i in [0, n)
/// `f` must not depend on which thread runs it; stages write per-index results and reduce them in index order, so
/// output is bit-identical for every thread count. Engines adapt their own pool in a few lines.

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "../config.hpp"
#include "tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN

/// Runs everything on the calling thread.
struct inline_executor {
  [[nodiscard]] unsigned concurrency() const noexcept { return 1; }
  template <class F>
  void parallel_for(index_t n, F&& f) const {
    for (index_t i = 0; i < n; ++i) f(i);
  }
};

/// Starts `threads` std::threads per parallel_for (the caller thread is one of them) and joins them before
/// returning; indices are handed out dynamically, so uneven tasks balance.
class thread_executor {
 public:
  explicit thread_executor(unsigned threads) noexcept : threads_(threads == 0 ? 1 : threads) {}
  [[nodiscard]] unsigned concurrency() const noexcept { return threads_; }

  template <class F>
  void parallel_for(index_t n, F&& f) const {
    // n <= 0 runs nothing (as inline_executor); a negative n must not become a huge unsigned worker count.
    const unsigned workers = static_cast<unsigned>(std::clamp<index_t>(n, 0, threads_));
    if (workers <= 1) {
      for (index_t i = 0; i < n; ++i) f(i);
      return;
    }
    std::atomic<index_t> next{0};
#if SAGEPTQ_HAS_EXCEPTIONS
    std::exception_ptr first_error;
    std::atomic<bool> failed{false};
#endif
    auto work = [&] {
      for (index_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
#if SAGEPTQ_HAS_EXCEPTIONS
        try {
          f(i);
        } catch (...) {
          if (!failed.exchange(true)) first_error = std::current_exception();
          next.store(n);
        }
#else
        f(i);
#endif
      }
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    for (unsigned t = 1; t < workers; ++t) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
#if SAGEPTQ_HAS_EXCEPTIONS
    if (first_error) std::rethrow_exception(first_error);
#endif
  }

 private:
  unsigned threads_;
};

namespace detail {
struct index_sink {  // a named callable: nvcc rejects lambdas inside requires-expressions
  void operator()(index_t) const noexcept {}
};
}  // namespace detail

template <class E>
concept executor = requires(const E& e) {
  { e.concurrency() } -> std::convertible_to<unsigned>;
  e.parallel_for(index_t{1}, detail::index_sink{});
};

static_assert(executor<inline_executor> && executor<thread_executor>);

SAGEPTQ_NAMESPACE_END
