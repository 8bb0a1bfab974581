// Time of each named method on one LLaMA-7B-shaped matrix (11008 x 4096, the up projection) with 2048
// calibration rows, on the executor's threads, broken down by stage (Hessian accumulation and factorization
// included). Google Benchmark runs each method once (these are seconds-long runs); the stage times come from the
// method's report and are printed as counters.
//
//   build/bin/quantize_bench [--rows N] [--cols N] [--samples N] [--threads T] [benchmark flags]
//
// Targets (issue 3): gptq <= 10 s and sage with its search <= 60 s on 2 threads.

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/pipeline/quantize_matrix.hpp>
#include <sageptq/synthetic/layer.hpp>

namespace {

struct setup {
  sageptq::synthetic::layer_config shape{.rows = 11008, .cols = 4096, .samples = 2048};
  unsigned threads = 2;
};

setup& config() {
  static setup s;
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct calibrated {
  sageptq::synthetic::layer layer;
  sageptq::calib::hessian_factor factor;
  double hessian_seconds = 0, factor_seconds = 0;
};

// The layer and its statistics are made once and shared by every method.
const calibrated& shared_layer() {
  static const std::unique_ptr<calibrated> c = [] {
    auto out = std::make_unique<calibrated>();
    out->layer = sageptq::synthetic::make_layer(config().shape);
    const sageptq::thread_executor exec(config().threads);
    auto t0 = std::chrono::steady_clock::now();
    sageptq::calib::hessian_accumulator acc(out->layer.cols);
    if (auto ok = acc.add_batch(out->layer.activation_view(), exec); !ok) std::abort();
    out->hessian_seconds = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    auto f = sageptq::calib::prepare(acc, {}, exec);
    if (!f.has_value()) std::abort();
    out->factor = std::move(*f);
    out->factor_seconds = seconds_since(t0);
    return out;
  }();
  return *c;
}

void quantize(benchmark::State& state, const char* name, sageptq::pipeline::method_options options) {
  const calibrated& c = shared_layer();
  const sageptq::thread_executor exec(config().threads);
  auto method = sageptq::pipeline::make_method(name, options);
  if (!method.ok()) {
    state.SkipWithError(method.message().c_str());
    return;
  }
  sageptq::pipeline::matrix_report report;
  for (auto _ : state) {
    auto q = sageptq::pipeline::quantize_matrix(c.layer.weight_view(), &c.factor, *method, exec);
    if (!q.has_value()) {
      state.SkipWithError(q.message().c_str());
      return;
    }
    report = q->report;
  }
  state.counters["hessian_s"] = c.hessian_seconds;
  state.counters["factor_s"] = c.factor_seconds;
  state.counters["saliency_s"] = report.times.saliency;
  state.counters["search_s"] = report.times.search;
  state.counters["quantize_s"] = report.times.quantize;
  state.counters["pack_s"] = report.times.pack;
  state.counters["total_s"] = c.hessian_seconds + c.factor_seconds + report.times.total();
  state.counters["full_bpw"] = report.bits.full_bpw();
  state.counters["rel_err"] = report.relative_error;
}

}  // namespace

int main(int argc, char** argv) {
  // Our flags first; the rest goes to Google Benchmark.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const auto value = [&] { return i + 1 < argc ? std::strtoll(argv[++i], nullptr, 10) : 0; };
    if (!std::strcmp(argv[i], "--rows")) config().shape.rows = value();
    else if (!std::strcmp(argv[i], "--cols")) config().shape.cols = value();
    else if (!std::strcmp(argv[i], "--samples")) config().shape.samples = value();
    else if (!std::strcmp(argv[i], "--threads")) config().threads = static_cast<unsigned>(value());
    else argv[kept++] = argv[i];
  }
  argc = kept;
  using sageptq::pipeline::method_options;
  const struct {
    const char* label;
    const char* name;
    method_options options;
  } cases[] = {
      {"rtn_2bit_g128", "rtn", {.bits = 2, .group = 128}},
      {"q1_0", "q1_0", {}},
      {"gptq_2bit_per_channel", "gptq", {.bits = 2, .group = 0}},
      {"gptq_2bit_g128", "gptq", {.bits = 2, .group = 128}},
      {"septq_2bit", "septq", {.bits = 2}},
      {"billm", "billm", {}},
      {"sage_1.1", "sage", {.target_bpw = 1.1}},
  };
  for (const auto& c : cases)
    benchmark::RegisterBenchmark(c.label, quantize, c.name, c.options)
        ->Iterations(1)
        ->UseRealTime()
        ->Unit(benchmark::kSecond);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
