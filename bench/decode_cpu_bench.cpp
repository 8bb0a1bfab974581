// Decode throughput on the CPU (Google Benchmark), one token per iteration, greedy single-sequence decoding:
//   llama20m/f32            - gutenberg-llama-20m as the reference engine loads it (examples/llama, f32 weights)
//   llama20m/packed/<isa>   - the same model from a quantized model file (examples/cli), its linear layers on the
//                             packed GEMV path forced to <isa>; embeddings, norms and the tied f32 output head stay f32
//   llama20m_head/f32       - the tied f32 head alone (4096 x 512 GEMV): the floor the packed model cannot go under
//   layer7b/f32, layer7b/packed/<isa>
//                           - the seven linear layers of one LLaMA-7B decoder layer (q, k, v, o: 4096 x 4096;
//                             gate, up: 11008 x 4096; down: 4096 x 11008) and the SwiGLU between them, on random
//                             sage weights (1% salient columns at 4 bits, 4 column groups) or their f32 decode;
//                             attention over the KV cache and the norms are left out (small next to these GEMVs at
//                             short contexts), so this is an upper bound on a 7B model's per-layer token rate
// Counters: tokens/s = iterations / CPU time. Threads: SAGEPTQ_BENCH_THREADS (default 1: per core).
//
//   g++-12 -std=c++20 -O3 -DNDEBUG -Iinclude -Iexamples -Itests/cpu -DSAGEPTQ_SHARED_DIR='"../shared"'
//       bench/decode_cpu_bench.cpp -lbenchmark -lpthread -o /tmp/decode_cpu
//   build/bin/sageptq quantize --model ../shared/models/gutenberg-llama-20m --method sage --target-bpw 1.1 ... --out q.safetensors
//   SAGEPTQ_QUANTIZED=q.safetensors /tmp/decode_cpu --benchmark_min_time=1

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "llama/model.hpp"
#include "llama/packed_linear.hpp"
#include "llama/quantized_model.hpp"
#include "random_packed.hpp"
#include "sageptq/cpu/gemv.hpp"

#ifndef SAGEPTQ_SHARED_DIR
#define SAGEPTQ_SHARED_DIR "../shared"
#endif

namespace sp = sageptq;
using sp::index_t;
using sp::cpu::isa;

namespace {

sp::thread_executor bench_executor() {
  const char* threads = std::getenv("SAGEPTQ_BENCH_THREADS");
  return sp::thread_executor(threads ? static_cast<unsigned>(std::atoi(threads)) : 1u);
}

/// Sets SAGEPTQ_CPU_ISA for the engine's gemv calls while alive.
class forced_isa {
 public:
  explicit forced_isa(isa path) {
    if (const char* v = std::getenv("SAGEPTQ_CPU_ISA")) saved_ = v;
    ::setenv("SAGEPTQ_CPU_ISA", sp::cpu::to_string(path), 1);
  }
  ~forced_isa() {
    if (saved_.empty())
      ::unsetenv("SAGEPTQ_CPU_ISA");
    else
      ::setenv("SAGEPTQ_CPU_ISA", saved_.c_str(), 1);
  }
  forced_isa(const forced_isa&) = delete;
  forced_isa& operator=(const forced_isa&) = delete;

 private:
  std::string saved_;
};

// --- gutenberg-llama-20m ------------------------------------------------------------------------------------------

const std::string model_dir = SAGEPTQ_SHARED_DIR "/models/gutenberg-llama-20m";

/// Greedy decoding, one token per iteration; the KV cache restarts when full (positions cycle over 1..256).
void decode(benchmark::State& state, const llama::model& m) {
  constexpr index_t context = 256;
  const auto exec = bench_executor();
  const auto vocab = m.config().vocab_size;
  llama::kv_cache cache(m.config(), context);
  std::vector<float> logits(static_cast<std::size_t>(vocab));
  std::uint16_t token = 1;  // BOS
  for (auto _ : state) {
    if (cache.length() == context) cache.clear();
    m.forward(std::span(&token, 1), cache, sp::make_matrix_view(logits.data(), 1, vocab), exec);
    token = static_cast<std::uint16_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  state.counters["tokens/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

void llama20m_f32(benchmark::State& state) {
  static auto m = llama::model::load(model_dir);
  if (!m.ok()) return state.SkipWithError(("cannot load " + model_dir + ": " + m.message()).c_str());
  decode(state, *m);
}

void llama20m_packed(benchmark::State& state, isa path) {
  const char* file = std::getenv("SAGEPTQ_QUANTIZED");
  if (file == nullptr)
    return state.SkipWithError("set SAGEPTQ_QUANTIZED to a quantized model file of gutenberg-llama-20m (sageptq quantize)");
  if (!sp::cpu::supported(path)) return state.SkipWithError("ISA not supported on this CPU");
  static auto m = llama::load_quantized_model(file);
  if (!m.ok()) return state.SkipWithError((std::string("cannot load ") + file + ": " + m.message()).c_str());
  const forced_isa forced(path);
  decode(state, m->engine);
}

/// The tied head alone: logits of one hidden state, as decode() computes them last.
void llama20m_head(benchmark::State& state) {
  static auto m = llama::model::load(model_dir);
  if (!m.ok()) return state.SkipWithError(("cannot load " + model_dir + ": " + m.message()).c_str());
  const auto exec = bench_executor();
  const auto& cfg = m->config();
  const auto hidden = sageptq_test::random_x(1, cfg.hidden_size, 3);
  std::vector<float> logits(static_cast<std::size_t>(cfg.vocab_size));
  for (auto _ : state) {
    m->logits(sp::make_matrix_view(hidden.data(), 1, cfg.hidden_size), sp::make_matrix_view(logits.data(), 1, cfg.vocab_size),
              exec);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

// --- one LLaMA-7B-shaped decoder layer ----------------------------------------------------------------------------

constexpr index_t hidden_7b = 4096, intermediate_7b = 11008;

/// q, k, v, o, gate, up, down: packed (random sage) and dense (their f32 decode) linear layers.
struct layer_7b {
  std::vector<std::unique_ptr<llama::packed_linear>> packed;
  std::vector<std::unique_ptr<llama::dense_linear>> dense;

  layer_7b() {
    const std::pair<index_t, index_t> shapes[] = {{hidden_7b, hidden_7b},       {hidden_7b, hidden_7b},
                                                  {hidden_7b, hidden_7b},       {hidden_7b, hidden_7b},
                                                  {intermediate_7b, hidden_7b}, {intermediate_7b, hidden_7b},
                                                  {hidden_7b, intermediate_7b}};
    std::uint64_t seed = 100;
    for (auto [rows, cols] : shapes) {
      sageptq_test::sage_case cs{rows, cols, cols / 100, 4, 4, false, seed++};
      packed.push_back(std::make_unique<llama::packed_linear>(sp::io::packed_matrix(sageptq_test::random_sage(cs))));
      const auto w = packed.back()->decoded();
      dense.push_back(
          std::make_unique<llama::dense_linear>(rows, cols, std::vector<float>(w.data, w.data + rows * cols)));
    }
  }
};

const layer_7b& shared_layer_7b() {
  static const layer_7b layer;
  return layer;
}

/// One token through the layer's linears: q, k, v and o from the hidden state, then the SwiGLU MLP.
template <class Linears>
void layer_token(const Linears& l, const std::vector<float>& x, std::vector<float>& qkv, std::vector<float>& attn,
                 std::vector<float>& gate, std::vector<float>& up, std::vector<float>& out,
                 const sp::thread_executor& exec) {
  auto row = [](const std::vector<float>& v, index_t n) { return sp::make_matrix_view(v.data(), 1, n); };
  auto row_out = [](std::vector<float>& v, index_t n) { return sp::make_matrix_view(v.data(), 1, n); };
  for (int i = 0; i < 3; ++i)
    l[static_cast<std::size_t>(i)]->forward(row(x, hidden_7b),
                                            sp::make_matrix_view(qkv.data() + i * hidden_7b, 1, hidden_7b), exec);
  l[3]->forward(row(qkv, hidden_7b), row_out(attn, hidden_7b), exec);  // stands in for attention's output
  l[4]->forward(row(attn, hidden_7b), row_out(gate, intermediate_7b), exec);
  l[5]->forward(row(attn, hidden_7b), row_out(up, intermediate_7b), exec);
  for (index_t i = 0; i < intermediate_7b; ++i) {
    const float g = gate[static_cast<std::size_t>(i)];
    gate[static_cast<std::size_t>(i)] = g / (1.0f + std::exp(-g)) * up[static_cast<std::size_t>(i)];
  }
  l[6]->forward(row(gate, intermediate_7b), row_out(out, hidden_7b), exec);
}

template <class Linears>
void layer_7b_decode(benchmark::State& state, const Linears& linears) {
  const auto exec = bench_executor();
  const auto x = sageptq_test::random_x(1, hidden_7b, 5);
  std::vector<float> qkv(3 * hidden_7b), attn(hidden_7b), gate(intermediate_7b), up(intermediate_7b), out(hidden_7b);
  for (auto _ : state) {
    layer_token(linears, x, qkv, attn, gate, up, out, exec);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

void layer7b_f32(benchmark::State& state) { layer_7b_decode(state, shared_layer_7b().dense); }

void layer7b_packed(benchmark::State& state, isa path) {
  if (!sp::cpu::supported(path)) return state.SkipWithError("ISA not supported on this CPU");
  const forced_isa forced(path);
  layer_7b_decode(state, shared_layer_7b().packed);
}

}  // namespace

BENCHMARK(llama20m_f32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(llama20m_packed, avx512_vnni, isa::avx512_vnni)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(llama20m_packed, avx512, isa::avx512)->Unit(benchmark::kMillisecond);
BENCHMARK(llama20m_head)->Unit(benchmark::kMillisecond);
BENCHMARK(layer7b_f32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(layer7b_packed, avx512_vnni, isa::avx512_vnni)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(layer7b_packed, avx512, isa::avx512)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
