// CPU GEMV throughput per core (Google Benchmark): sage default format (1% salient columns at 4 bits, 4 column groups)
// and q1_0 at 4096 x 14336 (out x in), every ISA path, batch 1/2/4/8, single thread (inline_executor):
//   hot     - one weight matrix reused (7.6 MB, fits the L3)
//   rotated - 36 copies (~270 MB) cycled, so the weights come from DRAM
// The counter "weights/s" is rows * cols per call.
//
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Itests/cpu bench/gemv_cpu_bench.cpp -lbenchmark -lpthread -o /tmp/gemv_cpu
//   /tmp/gemv_cpu --benchmark_min_time=0.3
//
// Same-run comparison with an earlier tree (the machine's load changes from minute to minute, so compare only within
// one run): compiled with -DSAGEPTQ_BENCH_BASELINE against that tree's include/ and tests/cpu/, this file registers
// its avx512_vnni and avx512 benchmarks as baseline_* under a wrapped namespace, without a main; link the object in:
//   mkdir -p /tmp/base && git archive REV include tests/cpu | tar -x -C /tmp/base
//   O="-std=c++20 -O3 -DNDEBUG"
//   I="-I/tmp/base/include -I/tmp/base/tests/cpu"
//   g++ $O -DSAGEPTQ_BENCH_BASELINE $I -c bench/gemv_cpu_bench.cpp -o /tmp/base.o
//   g++ $O -Iinclude -Itests/cpu bench/gemv_cpu_bench.cpp /tmp/base.o -lbenchmark -lpthread -o /tmp/gemv_cpu
//   /tmp/gemv_cpu --benchmark_enable_random_interleaving=true ...

#ifdef SAGEPTQ_BENCH_BASELINE
#define SAGEPTQ_WRAPPED_NAMESPACE baseline
#endif

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "sageptq/core/numeric.hpp"
#include "sageptq/core/random.hpp"
#include "sageptq/cpu/gemv.hpp"
#include "sageptq/format/q1_0.hpp"
#include "sageptq/format/rtn.hpp"
#include "sageptq/format/sage.hpp"
#include "sageptq/quant/uniform_grid.hpp"

#ifdef SAGEPTQ_BENCH_BASELINE
namespace baseline {
#include "random_packed.hpp"  // its includes are above, so only its own declarations land in baseline::
}  // namespace baseline
namespace bench_test = baseline::sageptq_test;
#define SAGEPTQ_BENCH_NAME(name) baseline_##name
#else
#include "random_packed.hpp"
namespace bench_test = sageptq_test;
#define SAGEPTQ_BENCH_NAME(name) name
#endif

namespace sp = SAGEPTQ_NS_QUALIFIER;
using sp::index_t;
using sp::cpu::isa;

namespace {

constexpr index_t rows = 4096, cols = 14336;

const std::vector<sp::format::sage_matrix>& sage_copies() {
  static const auto copies = [] {
    bench_test::sage_case cs{rows, cols, 143, 4, 4, false, 7};
    std::vector<sp::format::sage_matrix> m(36, bench_test::random_sage(cs));
    sp::random_generator rng(8);
    for (std::size_t i = 1; i < m.size(); ++i)  // distinct sign bits per copy (row padding stays zero)
      for (std::size_t w = 0; w < m[i].signs.size(); ++w)
        m[i].signs[w] ^= static_cast<std::uint32_t>(rng()) & m[0].signs[w];
    return m;
  }();
  return copies;
}

const std::vector<sp::format::q1_0_matrix>& q1_0_copies() {
  static const auto copies = [] {
    std::vector<sp::format::q1_0_matrix> m(36, bench_test::random_q1_0(rows, cols, 9));
    sp::random_generator rng(10);
    for (std::size_t i = 1; i < m.size(); ++i)
      for (auto& w : m[i].signs) w = static_cast<std::uint32_t>(rng());
    return m;
  }();
  return copies;
}

template <class Copies>
void run(benchmark::State& state, const Copies& copies, isa path, bool rotate) {
  if (!sp::cpu::supported(path)) {
    state.SkipWithError("ISA not supported on this CPU");
    return;
  }
  const index_t batch = state.range(0);
  const auto x = bench_test::random_x(batch, cols, 11);
  std::vector<float> y(static_cast<std::size_t>(batch * rows));
  std::size_t i = 0;
  for (auto _ : state) {
    const auto& m = copies[rotate ? i++ % copies.size() : 0];
    auto done = sp::cpu::gemv(m.view(), sp::make_matrix_view(x.data(), batch, cols),
                              sp::make_matrix_view(y.data(), batch, rows), sp::inline_executor{}, path);
    if (!done) state.SkipWithError(done.message().c_str());
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["weights/s"] =
      benchmark::Counter(static_cast<double>(rows * cols), benchmark::Counter::kIsIterationInvariantRate);
}

void SAGEPTQ_BENCH_NAME(sage_hot)(benchmark::State& s, isa p) { run(s, sage_copies(), p, false); }
void SAGEPTQ_BENCH_NAME(sage_rotated)(benchmark::State& s, isa p) { run(s, sage_copies(), p, true); }
void SAGEPTQ_BENCH_NAME(q1_0_hot)(benchmark::State& s, isa p) { run(s, q1_0_copies(), p, false); }
void SAGEPTQ_BENCH_NAME(q1_0_rotated)(benchmark::State& s, isa p) { run(s, q1_0_copies(), p, true); }

}  // namespace

// BENCHMARK_CAPTURE stringizes its first argument: one more macro level expands SAGEPTQ_BENCH_NAME first.
#define SAGEPTQ_BENCH_CAPTURE(func, ...) BENCHMARK_CAPTURE(func, __VA_ARGS__)
#define SAGEPTQ_BENCH(name, path) SAGEPTQ_BENCH_CAPTURE(SAGEPTQ_BENCH_NAME(name), path, isa::path)

SAGEPTQ_BENCH(sage_hot, avx512_vnni)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(sage_rotated, avx512_vnni)->Arg(1)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(sage_hot, avx512)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(sage_rotated, avx512)->Arg(1)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(q1_0_hot, avx512_vnni)->Arg(1)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(q1_0_rotated, avx512_vnni)->Arg(1)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(q1_0_hot, avx512)->Arg(1)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(q1_0_rotated, avx512)->Arg(1)->Unit(benchmark::kMicrosecond);

#ifndef SAGEPTQ_BENCH_BASELINE
SAGEPTQ_BENCH(sage_hot, avx2)->Arg(1)->Arg(8)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(sage_hot, scalar)->Arg(1)->Unit(benchmark::kMicrosecond);
SAGEPTQ_BENCH(q1_0_hot, avx2)->Arg(1)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
#endif
