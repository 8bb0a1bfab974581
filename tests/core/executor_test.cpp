// Executors: every index exactly once for any thread count, exceptions reach the caller.
#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include <sageptq/core/executor.hpp>

using namespace sageptq;

namespace {
template <class Exec>
void check_visits_each_index_once(const Exec& exec, index_t n) {
  std::unique_ptr<std::atomic<int>[]> visits(new std::atomic<int>[static_cast<std::size_t>(n + 1)]);
  for (index_t i = 0; i <= n; ++i) visits[static_cast<std::size_t>(i)] = 0;
  exec.parallel_for(n, [&](index_t i) {
    REQUIRE(i >= 0);
    REQUIRE(i < n);
    visits[static_cast<std::size_t>(i)].fetch_add(1);
  });
  for (index_t i = 0; i < n; ++i) REQUIRE(visits[static_cast<std::size_t>(i)].load() == 1);
  CHECK(visits[static_cast<std::size_t>(n)].load() == 0);
}
}  // namespace

TEST_CASE("inline_executor runs every index once, in order, on the calling thread") {
  const inline_executor exec;
  CHECK(exec.concurrency() == 1);
  std::vector<index_t> order;
  const auto caller = std::this_thread::get_id();
  exec.parallel_for(5, [&](index_t i) {
    CHECK(std::this_thread::get_id() == caller);
    order.push_back(i);
  });
  CHECK(order == std::vector<index_t>{0, 1, 2, 3, 4});
  exec.parallel_for(0, [](index_t) { FAIL("no index for n = 0"); });
}

TEST_CASE("thread_executor visits every index exactly once for 1, 2 and 7 threads") {
  for (unsigned threads : {1u, 2u, 7u}) {
    CAPTURE(threads);
    const thread_executor exec(threads);
    CHECK(exec.concurrency() == threads);
    for (index_t n : {0, 1, 3, 7, 8, 1000, 20011}) {
      CAPTURE(n);
      check_visits_each_index_once(exec, n);
    }
  }
  CHECK(thread_executor(0).concurrency() == 1);  // zero threads would run nothing: it means one
}

TEST_CASE("a negative count runs nothing") {
  int calls = 0;
  inline_executor{}.parallel_for(-3, [&](index_t) { ++calls; });
  for (unsigned threads : {1u, 2u, 7u}) thread_executor(threads).parallel_for(-3, [&](index_t) { ++calls; });
  CHECK(calls == 0);
}

TEST_CASE("thread_executor really runs tasks concurrently") {
  // Two tasks that each wait for the other can only finish if they run at the same time.
  const thread_executor exec(2);
  std::atomic<int> arrived{0};
  exec.parallel_for(2, [&](index_t) {
    arrived.fetch_add(1);
    while (arrived.load() < 2) std::this_thread::yield();
  });
  CHECK(arrived.load() == 2);
}

TEST_CASE("executors propagate exceptions to the caller") {
  const auto throwing = [](index_t i) {
    if (i == 37) throw std::runtime_error("task 37 failed");
  };
  CHECK_THROWS_WITH_AS(inline_executor{}.parallel_for(100, throwing), "task 37 failed", std::runtime_error);
  for (unsigned threads : {1u, 2u, 7u}) {
    CAPTURE(threads);
    CHECK_THROWS_WITH_AS(thread_executor(threads).parallel_for(1000, throwing), "task 37 failed",
                         std::runtime_error);
  }
  // Every task throws: exactly one exception comes back, and the executor stays usable.
  const thread_executor exec(7);
  CHECK_THROWS_AS(exec.parallel_for(64, [](index_t) { throw std::logic_error("all fail"); }), std::logic_error);
  check_visits_each_index_once(exec, 100);
}

namespace {
/// What an engine writes to plug in its own pool.
struct engine_pool {
  unsigned concurrency() const { return 3; }
  template <class F>
  void parallel_for(index_t n, F&& f) const {
    for (index_t i = n - 1; i >= 0; --i) f(i);  // any order is allowed
  }
};
}  // namespace

TEST_CASE("the executor concept accepts an engine's own pool adaptor") {
  static_assert(executor<engine_pool>);
  static_assert(!executor<int>);
  check_visits_each_index_once(engine_pool{}, 10);
}
