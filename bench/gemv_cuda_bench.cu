// GEMV timing on the GPU: sage default format (1% salient columns at 4 bits, 4 column groups, ~1.04-1.06 full bpw;
// the default path, activation planes on binary tensor cores, and the fp16 kernels of sm90_fp16_policy side by side),
// q1_0 and rtn (4 bits, scale and zero per 128) against cuBLAS fp16 (cublasGemmEx, n = batch) and a streaming kernel
// that reads the same bytes (the floor).
// Weights are rotated over >= 256 MB of copies so they come from HBM; each figure is the median over 15 replays of a
// CUDA graph of >= 64 launches, divided by the launches. Then fused q/k/v and gate/up (fused_gemv) against the same
// matrices in separate run() calls. Writes markdown tables to stdout (and argv[1] if given).
//
//   nvcc -std=c++20 -O3 -arch=sm_90 -Iinclude -Itests/cpu bench/gemv_cuda_bench.cu -lcublas -o /tmp/gemv_bench
//   /tmp/gemv_bench /tmp/gemv_cuda.md          # every shape and batch
//   /tmp/gemv_bench /tmp/t.md targets          # the two target shapes only
//   /tmp/gemv_bench /tmp/p.md profile          # 3 run() of 8192 x 28672 per batch 1, 2, 4, 8, for ncu
//   /tmp/gemv_bench /tmp/f.md fused            # the fused q/k/v and gate/up table only
//   /tmp/gemv_bench /tmp/p.md planes           # planes path only: target shapes, batch 1-8, run() / kernel / floor
//                                              # / run() right after a norm-like kernel that writes x
//
// Built with -DSAGEPTQ_BENCH_PLANES_ONLY, main() is the `planes` mode alone (a quick build: no cuBLAS, q1_0, rtn or
// fp16 instances), for sage_gemv<__half, float, planes_bench_policy>: sm90_policy, or with -DSAGEPTQ_BENCH_STAGES_ONE=s,
// -DSAGEPTQ_BENCH_STAGES_TWO=s, -DSAGEPTQ_BENCH_TWO_TILES_MIN_BATCH=b and -DSAGEPTQ_BENCH_MIN_BLOCKS=m (planes_min_blocks)
// its ring depths, tile rule and register bound (old headers
// ignore the knobs, so one source times old and new trees: -I<old tree>/include).

#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "random_packed.hpp"
#include "sageptq/cuda/gemv/gemv.cuh"

namespace sp = sageptq;
namespace g = sageptq::cuda::gemv;
using sp::index_t;

#define CUDA_OK(call)                                                                                      \
  do {                                                                                                     \
    cudaError_t e_ = (call);                                                                               \
    if (e_ != cudaSuccess) {                                                                               \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #call);        \
      std::exit(2);                                                                                        \
    }                                                                                                      \
  } while (0)

namespace {

constexpr std::size_t rotation_bytes = 256u << 20;

std::string card_line(const cudaDeviceProp& prop) {
  return std::string("Card: ") + prop.name + ", " + std::to_string(prop.multiProcessorCount) + " SMs, " +
         std::to_string(prop.l2CacheSize >> 20) + " MB L2\n\n";
}
/// The device every launch here runs on (device 0), as run() queries it.
g::detail::device_target target_of(const cudaDeviceProp& prop) { return {0, prop.multiProcessorCount}; }

__global__ void fill_random(std::uint32_t* p, std::size_t words, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < words; i += std::size_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 0x9e3779b9u ^ seed;
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    p[i] = h;
  }
}
/// Random fp16 values in [-1, 1) (exponent kept small so cuBLAS sees ordinary numbers).
__global__ void fill_half(__half* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 0x9e3779b9u ^ seed;
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13;
    p[i] = __float2half(static_cast<float>(h & 0xffff) / 32768.0f - 1.0f);
  }
}
/// The floor: read `bytes` with 16-byte streaming loads, as the GEMV reads its weights.
__global__ void stream_read(const uint4* p, std::size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;  // never true in practice; keeps the loads alive
}

/// A norm-like kernel (RMSNorm of each activation row, one block per row): the kernel a decoder runs right before
/// a GEMV. It writes x and neither triggers nor waits for programmatic dependent launch, so it times run() after a
/// kernel that does not know about PDL (the `planes` mode's "after norm" column).
__global__ void norm_like(__half* x, const __half* src, index_t cols) {
  const __half* in = src + blockIdx.x * cols;
  float sum = 0.0f;
  for (index_t j = threadIdx.x; j < cols; j += blockDim.x) sum += __half2float(in[j]) * __half2float(in[j]);
  __shared__ float part[32];
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = sum;
  __syncthreads();
  sum = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) sum += part[w];
  const float r = rsqrtf(sum / static_cast<float>(cols) + 1e-6f);
  for (index_t j = threadIdx.x; j < cols; j += blockDim.x) x[blockIdx.x * cols + j] = __float2half(__half2float(in[j]) * r);
}

/// Our scalar path on the GPU: one thread per row, every weight decoded through the format view's accessors (the
/// arithmetic of the CPU reference; no tiling, no tensor cores): the baseline the tuned kernel is measured against.
__global__ void sage_scalar_gemv(sp::format::sage_view<sp::device_space> w, const __half* x, index_t cols, float* y,
                                 index_t rows, int batch) {
  const index_t r = blockIdx.x * index_t{blockDim.x} + threadIdx.x;
  if (r >= rows) return;
  float acc[8] = {};
  for (index_t j = 0; j < cols; ++j) {
    const float v = w.stored_value(r, j);
    const index_t c = w.source_column(j);
    for (int b = 0; b < batch; ++b) acc[b] += v * __half2float(x[b * cols + c]);
  }
  for (int b = 0; b < batch; ++b) y[b * rows + r] = acc[b];
}

/// Median time of one launch: a graph of `launches` calls of launch(i) replayed 15 times.
double time_us(int launches, const std::function<void(int, cudaStream_t)>& launch, cudaStream_t s) {
  for (int i = 0; i < 3; ++i) launch(i, s);  // warm up (module load, cuBLAS heuristics) outside the graph
  CUDA_OK(cudaStreamSynchronize(s));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < launches; ++i) launch(i, s);
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CUDA_OK(cudaEventCreate(&a));
  CUDA_OK(cudaEventCreate(&b));
  CUDA_OK(cudaGraphLaunch(exec, s));
  std::vector<double> t;
  for (int r = 0; r < 15; ++r) {
    CUDA_OK(cudaEventRecord(a, s));
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaEventRecord(b, s));
    CUDA_OK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(1000.0 * ms / launches);
  }
  CUDA_OK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// A sage matrix of the benchmark's layout with fp16 scales and random codes, built on the host (signs left 0:
/// they are randomized on the device).
sp::format::sage_matrix bench_sage(index_t rows, index_t cols) {
  sp::random_generator rng(rows * 31 + cols);
  sp::format::sage_spec spec;
  spec.rows = rows;
  spec.cols = cols;
  const index_t ks = (cols + 50) / 100;
  for (auto c : sp::sample_without_replacement(rng, static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(ks)))
    spec.salient_columns.push_back(static_cast<index_t>(c));
  spec.salient_bits = 4;
  spec.groups = 4;
  for (index_t c = 0; c < cols; ++c) spec.column_group.push_back(static_cast<std::int32_t>(rng.below(4)));
  auto b = sp::format::sage_builder::create(spec).value();
  for (index_t r = 0; r < rows; ++r) b.set_row_scale(0, r, sageptq_test::random_scale(rng));
  for (int gi = 0; gi < 4; ++gi) b.set_group_scale(0, gi, sageptq_test::random_scale(rng));
  for (index_t r = 0; r < rows; ++r) {
    sp::quant::uniform_grid grid;
    grid.max_code = 15;
    grid.scale = sageptq_test::random_scale(rng);
    grid.zero = static_cast<float>(rng.below(16));
    b.set_salient_grid(r, grid);
    for (index_t c : spec.salient_columns) b.set_salient_code(r, c, static_cast<std::uint32_t>(rng.below(16)));
  }
  return std::move(b).finish().value();
}

/// Device copies of each format, enough to rotate over >= `total` bytes (at least 2), with random payloads. Each copy
/// is one allocation; `bytes` is what one copy streams.
struct sage_copies {
  std::vector<std::uint8_t*> buffers;
  std::vector<sp::format::sage_view<sp::device_space>> views;
  std::size_t bytes = 0;
  sage_copies(const sp::format::sage_matrix& m, int copies, std::uint32_t seed) {
    const auto serialized = sp::format::serialize(m);
    const auto offsets = sp::format::serialized_offsets(m.shape);
    bytes = serialized.size();
    for (int i = 0; i < copies; ++i) {
      std::uint8_t* p;
      CUDA_OK(cudaMalloc(&p, bytes));
      CUDA_OK(cudaMemcpy(p, serialized.data(), bytes, cudaMemcpyHostToDevice));
      const auto sign_at = offsets.section[static_cast<int>(sp::format::sage_section::signs)];
      const auto sign_words = sp::format::section_info(m.shape, sp::format::sage_section::signs).elements;
      fill_random<<<1024, 256>>>(reinterpret_cast<std::uint32_t*>(p + sign_at), sign_words, seed + i);
      buffers.push_back(p);
      views.push_back(sp::format::view_serialized<sp::device_space>(m.shape, p));
    }
  }
  ~sage_copies() { for (auto p : buffers) cudaFree(p); }
};

struct q1_0_copies {
  std::vector<void*> buffers;
  std::vector<sp::format::q1_0_view<sp::device_space>> views;
  std::size_t bytes = 0;
  q1_0_copies(index_t rows, index_t cols, int copies, std::uint32_t seed) {
    const auto words = static_cast<std::size_t>(rows * sp::format::q1_0::words_per_row(cols)),
               groups = static_cast<std::size_t>(rows * sp::format::q1_0::groups_per_row(cols));
    bytes = 4 * words + 2 * groups;
    for (int i = 0; i < copies; ++i) {
      std::uint32_t* signs;
      __half* scales;
      CUDA_OK(cudaMalloc(&signs, 4 * words));
      CUDA_OK(cudaMalloc(&scales, 2 * groups));
      fill_random<<<1024, 256>>>(signs, words, seed + i);
      fill_half<<<1024, 256>>>(scales, groups, seed + 1000 + i);
      buffers.push_back(signs);
      buffers.push_back(scales);
      views.push_back({signs, reinterpret_cast<const sp::fp16*>(scales), rows, cols});
    }
  }
  ~q1_0_copies() { for (auto p : buffers) cudaFree(p); }
};

/// rtn at 4 bits, one scale and one zero per 128 columns (GPTQ's usual layout: 4.19 full bpw); each copy is one
/// allocation (codes, scales, zeros), so the floor streams exactly its bytes.
struct rtn_copies {
  std::vector<std::uint8_t*> buffers;
  std::vector<sp::format::rtn_view<sp::device_space>> views;
  std::size_t bytes = 0;
  static constexpr sp::format::rtn_layout layout{4, 128, false};
  rtn_copies(index_t rows, index_t cols, int copies, std::uint32_t seed) {
    const auto words = static_cast<std::size_t>(rows * layout.words_per_row(cols)),
               groups = static_cast<std::size_t>(rows * layout.groups_per_row(cols));
    const std::size_t scales_at = 4 * words, zeros_at = (scales_at + 2 * groups + 3) / 4 * 4;
    bytes = (zeros_at + groups + 15) / 16 * 16;
    for (int i = 0; i < copies; ++i) {
      std::uint8_t* p;
      CUDA_OK(cudaMalloc(&p, bytes));
      fill_random<<<1024, 256>>>(reinterpret_cast<std::uint32_t*>(p), bytes / 4, seed + i);
      fill_half<<<1024, 256>>>(reinterpret_cast<__half*>(p + scales_at), groups, seed + 1000 + i);
      buffers.push_back(p);
      views.push_back({reinterpret_cast<const std::uint32_t*>(p), reinterpret_cast<const sp::fp16*>(p + scales_at),
                       p + zeros_at, rows, cols, layout});
    }
  }
  ~rtn_copies() { for (auto p : buffers) cudaFree(p); }
};

/// The weight copies of each matrix of a fused call: views(i, k) is copy i of matrix k.
template <class Copies>
struct fused_copies {
  std::vector<std::unique_ptr<Copies>> per_matrix;
  auto views(int i, std::size_t k) const { return per_matrix[k]->views[static_cast<std::size_t>(i)]; }
};

int copies_for(std::size_t bytes) {
  return static_cast<int>(std::max<std::size_t>(2, (rotation_bytes + bytes - 1) / bytes));
}

/// Fused q/k/v (or gate/up) against separate calls, per format: the same matrices, the same rotation over >= 256 MB
/// (sets of `rows.size()` matrices), batch 1 and 8; returns the markdown rows.
std::string bench_fused(const std::string& label, const std::vector<index_t>& rows, index_t cols,
                        const cudaDeviceProp& prop, cudaStream_t s) {
  std::string out;
  const auto count = rows.size();
  __half* x;
  CUDA_OK(cudaMalloc(&x, 8 * cols * 2));
  fill_half<<<64, 256>>>(x, 8 * cols, 4243u);
  std::vector<float*> y(count);
  for (auto& p : y) CUDA_OK(cudaMalloc(&p, 8 * 28672 * 4));
  void* ws;
  CUDA_OK(cudaMalloc(&ws, 64u << 20));  // >> any workspace here (x' of 3 matrices at batch 8: < 3 MB)
  // Each format: a set is `count` matrices; sets rotate.
  auto run_format = [&](const std::string& format, auto op_tag, auto make_set, std::size_t set_bytes) {
    using single = typename decltype(op_tag)::type;
    using fused = g::fused_gemv<single>;
    const int sets = copies_for(set_bytes);
    auto weights = make_set(sets);  // weights[set][matrix]
    CUDA_OK(cudaDeviceSynchronize());
    for (index_t batch : {1, 8}) {
      const int launches = std::max(64, sets);
      const double separate = time_us(launches, [&](int i, cudaStream_t st) {
        for (std::size_t k = 0; k < count; ++k) {
          typename single::arguments a{weights.views(i % sets, k), x, cols, y[k], rows[k], batch};
          if (auto ok = single::run(a, ws, st); !ok) std::printf("%s\n", ok.message().c_str());
        }
      }, s);
      const double together = time_us(launches, [&](int i, cudaStream_t st) {
        typename fused::arguments a;
        for (std::size_t k = 0; k < count; ++k) {
          a.weights[k] = weights.views(i % sets, k);
          a.y[k] = y[k];
          a.y_stride[k] = rows[k];
        }
        a.count = static_cast<int>(count);
        a.x = x;
        a.x_stride = cols;
        a.batch = batch;
        if (auto ok = fused::run(a, ws, st); !ok) std::printf("%s\n", ok.message().c_str());
      }, s);
      char line[512];
      std::snprintf(line, sizeof line, "| %s | %s | %lld | %.2f | %.2f | %.2fx | %.1f | %.0f |\n", label.c_str(),
                    format.c_str(), static_cast<long long>(batch), separate, together, separate / together,
                    static_cast<double>(set_bytes) / 1e6, static_cast<double>(set_bytes) / together / 1e3);
      std::printf("%s", line);
      std::fflush(stdout);
      out += line;
    }
  };
  {
    std::vector<sp::format::sage_matrix> ms;
    std::size_t bytes = 0;
    for (auto r : rows) {
      ms.push_back(bench_sage(r, cols));
      bytes += sp::format::serialize(ms.back()).size();
    }
    run_format("sage", std::type_identity<g::sage_gemv<__half, float>>{}, [&](int sets) {
      fused_copies<sage_copies> st;
      for (std::size_t k = 0; k < count; ++k) st.per_matrix.push_back(std::make_unique<sage_copies>(ms[k], sets, 300u + 50 * k));
      return st;
    }, bytes);
  }
  {
    std::size_t bytes = 0;
    for (auto r : rows) bytes += q1_0_copies(r, cols, 0, 0).bytes;
    run_format("q1_0", std::type_identity<g::q1_0_gemv<__half, float>>{}, [&](int sets) {
      fused_copies<q1_0_copies> st;
      for (std::size_t k = 0; k < count; ++k) st.per_matrix.push_back(std::make_unique<q1_0_copies>(rows[k], cols, sets, 400u + 50 * k));
      return st;
    }, bytes);
  }
  {
    std::size_t bytes = 0;
    for (auto r : rows) bytes += rtn_copies(r, cols, 0, 0).bytes;
    run_format("rtn 4-bit g128", std::type_identity<g::rtn_gemv<__half, float>>{}, [&](int sets) {
      fused_copies<rtn_copies> st;
      for (std::size_t k = 0; k < count; ++k) st.per_matrix.push_back(std::make_unique<rtn_copies>(rows[k], cols, sets, 500u + 50 * k));
      return st;
    }, bytes);
  }
  for (auto p : y) cudaFree(p);
  cudaFree(x);
  cudaFree(ws);
  return out;
}

struct planes8_bench_policy : g::sm90_policy {
  static constexpr int plane_bits = 8;
};
struct planes_two_tiles_bench_policy : g::sm90_policy {
  static constexpr int planes_two_tiles_min_batch = 1;
};

#if defined(SAGEPTQ_BENCH_STAGES_ONE) || defined(SAGEPTQ_BENCH_STAGES_TWO) || \
    defined(SAGEPTQ_BENCH_TWO_TILES_MIN_BATCH) || defined(SAGEPTQ_BENCH_MIN_BLOCKS)
struct planes_bench_policy : g::sm90_policy {
#ifdef SAGEPTQ_BENCH_MIN_BLOCKS
  static constexpr int planes_min_blocks = SAGEPTQ_BENCH_MIN_BLOCKS;
#endif
#ifdef SAGEPTQ_BENCH_STAGES_ONE
  static constexpr int planes_stages_one_tile = SAGEPTQ_BENCH_STAGES_ONE;
#endif
#ifdef SAGEPTQ_BENCH_STAGES_TWO
  static constexpr int planes_stages_two_tiles = SAGEPTQ_BENCH_STAGES_TWO;
#endif
#ifdef SAGEPTQ_BENCH_TWO_TILES_MIN_BATCH
  static constexpr int planes_two_tiles_min_batch = SAGEPTQ_BENCH_TWO_TILES_MIN_BATCH;
#endif
};
#else
using planes_bench_policy = g::sm90_policy;
#endif

/// run() and the GEMV alone of sage_gemv<__half, float, Policy> at the two target shapes and these batches (rotated
/// copies as above), with the streaming floor of each shape when `sink` is given; returns the markdown rows
/// (| rows x cols | batch | label | run() | kernel | floor |).
template <class Policy>
std::string bench_variant(const std::string& label, const cudaDeviceProp& prop, cudaStream_t s,
                          std::vector<index_t> batches = {1, 8}, unsigned* sink = nullptr) {
  const auto gpu = target_of(prop);
  std::string out;
  for (auto [rows, cols] : {std::pair<index_t, index_t>{4096, 14336}, {8192, 28672}}) {
    const auto m = bench_sage(rows, cols);
    const std::size_t n_bytes = sp::format::serialize(m).size();
    const int copies = copies_for(n_bytes);
    sage_copies sage(m, copies, 77u);
    double floor_us = 0.0;
    if (sink != nullptr)
      floor_us = time_us(std::max(64, copies), [&](int i, cudaStream_t st) {
        stream_read<<<prop.multiProcessorCount * 4, 512, 0, st>>>(
            reinterpret_cast<const uint4*>(sage.buffers[i % copies]), n_bytes / 16, sink);
      }, s);
    using op = g::sage_gemv<__half, float, Policy>;
    using impl = g::detail::binary_gemv<g::detail::sage_rows, __half, float, Policy>;
    __half *x, *x_src;
    float* y;
    void* ws;
    CUDA_OK(cudaMalloc(&x, 8 * cols * 2));
    CUDA_OK(cudaMalloc(&x_src, 8 * cols * 2));
    fill_half<<<64, 256>>>(x_src, 8 * cols, 4343u);
    CUDA_OK(cudaMalloc(&y, 8 * rows * 4));
    fill_half<<<64, 256>>>(x, 8 * cols, 4242u);
    CUDA_OK(cudaMalloc(&ws, op::workspace_size({sage.views[0], x, cols, y, rows, 8})));
    const int launches = std::max(64, copies);
    for (index_t batch : batches) {
      const double run_us = time_us(launches, [&](int i, cudaStream_t st) {
        if (auto ok = op::run({sage.views[i % copies], x, cols, y, rows, batch}, ws, st); !ok)
          std::printf("%s\n", ok.message().c_str());
      }, s);
      CUDA_OK(cudaDeviceSynchronize());
      (void)op::run({sage.views[0], x, cols, y, rows, batch}, ws, s);
      CUDA_OK(cudaStreamSynchronize(s));
      const double kernel_us = time_us(launches, [&](int i, cudaStream_t st) {
        const auto p = typename impl::problem_type{g::detail::sage_rows{sage.views[i % copies]}, y, rows};
        (void)impl::template launch_gemv<1>(&p, 1, ws, static_cast<int>(batch), gpu, st);
      }, s);
      double norm_us = 0.0, after_norm_us = 0.0;  // the norm alone, and norm + run() per launch
      if (sink != nullptr) {
        norm_us = time_us(launches, [&](int, cudaStream_t st) {
          norm_like<<<static_cast<unsigned>(batch), 512, 0, st>>>(x, x_src, cols);
        }, s);
        after_norm_us = time_us(launches, [&](int i, cudaStream_t st) {
          norm_like<<<static_cast<unsigned>(batch), 512, 0, st>>>(x, x_src, cols);
          (void)op::run({sage.views[i % copies], x, cols, y, rows, batch}, ws, st);
        }, s);
      }
      char line[256];
      if (sink != nullptr)
        std::snprintf(line, sizeof line, "| %lld x %lld | %lld | %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
                      static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(batch),
                      label.c_str(), run_us, kernel_us, floor_us, after_norm_us - norm_us, norm_us);
      else
        std::snprintf(line, sizeof line, "| %lld x %lld | %lld | %s | %.2f | %.2f |\n", static_cast<long long>(rows),
                      static_cast<long long>(cols), static_cast<long long>(batch), label.c_str(), run_us, kernel_us);
      std::printf("%s", line);
      std::fflush(stdout);
      out += line;
    }
    cudaFree(x); cudaFree(x_src); cudaFree(y); cudaFree(ws);
  }
  return out;
}

}  // namespace

/// The `planes` mode: the default planes path (or planes_bench_policy) at the target shapes, batch 1, 2, 4, 8.
std::string bench_planes(const cudaDeviceProp& prop, cudaStream_t s, unsigned* sink) {
  return card_line(prop) + "| rows x cols | batch | variant | run() us | GEMV kernel only us | floor us | run() after a norm us "
                "(norm + run() - norm) | norm alone us |\n" +
         "| --- | --- | --- | --- | --- | --- | --- | --- |\n" +
         bench_variant<planes_bench_policy>("planes", prop, s, {1, 2, 4, 8}, sink);
}

/// Prints the report and writes it to argv[1] where given.
int write_report(const std::string& out, int argc, char** argv) {
  std::printf("\n%s", out.c_str());
  if (argc > 1) {
    FILE* f = std::fopen(argv[1], "w");
    if (f == nullptr || std::fputs(out.c_str(), f) < 0 || std::fclose(f) != 0) {
      std::fprintf(stderr, "gemv_cuda_bench: cannot write %s\n", argv[1]);
      return 1;
    }
  }
  return 0;
}

#ifdef SAGEPTQ_BENCH_PLANES_ONLY
int main(int argc, char** argv) {
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  unsigned* sink;
  CUDA_OK(cudaMalloc(&sink, 4));
  return write_report(bench_planes(prop, s, sink), argc, argv);
}
#else
int main(int argc, char** argv) {
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  cublasHandle_t blas;
  cublasCreate(&blas);
  cublasSetStream(blas, s);
  unsigned* sink;
  CUDA_OK(cudaMalloc(&sink, 4));

  const std::string card = card_line(prop);
  const auto gpu = target_of(prop);
  std::string out = card +
                    "| rows x cols | batch | sage run() us | run() without PDL us | GEMV kernel only us | "
                    "fp16 path run() us | fp16 path kernel only us | weight GB/s | "
                    "% of floor | floor us | cuBLAS fp16 us | vs cuBLAS | q1_0 run() us | full bpw | rtn4 g128 run() us | "
                    "rtn4 GB/s | rtn4 % of its floor | sage scalar path us | run() vs scalar |\n"
                    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
                    "| --- |\n";
  const std::string mode = argc > 2 ? argv[2] : "";
  const bool profile = mode == "profile";  // 3 run() of 8192 x 28672 per batch, for ncu
  std::vector<std::pair<index_t, index_t>> shapes = {{4096, 4096},  {11008, 4096}, {4096, 11008}, {14336, 4096},
                                                            {4096, 14336}, {28672, 8192}, {8192, 28672}};
  if (profile) shapes = {{8192, 28672}};
  if (mode == "targets") shapes = {{4096, 14336}, {8192, 28672}};  // the two shapes issue 5 sets targets for
  if (mode == "fused" || mode == "planes") shapes = {};
  for (auto [rows, cols] : shapes) {
    const auto m = bench_sage(rows, cols);
    const std::size_t n_bytes = sp::format::serialize(m).size();
    const int copies = copies_for(n_bytes);
    sage_copies sage(m, copies, 77u);
    q1_0_copies q(rows, cols, copies_for(q1_0_copies(rows, cols, 0, 0).bytes), 99u);
    rtn_copies rtn(rows, cols, copies_for(rtn_copies(rows, cols, 0, 0).bytes), 199u);
    const int qcopies = static_cast<int>(q.views.size()), rcopies = static_cast<int>(rtn.views.size());
    // fp16 dense copies for cuBLAS.
    const std::size_t w16 = static_cast<std::size_t>(rows * cols);
    const int dcopies = copies_for(2 * w16);
    std::vector<__half*> dense(dcopies);
    for (int i = 0; i < dcopies; ++i) {
      CUDA_OK(cudaMalloc(&dense[i], 2 * w16));
      fill_half<<<1024, 256>>>(dense[i], w16, 1234u + i);
    }
    __half *x, *y16;
    float* y;
    CUDA_OK(cudaMalloc(&x, 8 * cols * 2));
    CUDA_OK(cudaMalloc(&y, 8 * rows * 4));
    CUDA_OK(cudaMalloc(&y16, 8 * rows * 2));
    fill_half<<<64, 256>>>(x, 8 * cols, 4242u);
    using sage_op = g::sage_gemv<__half, float>;
    using sage_fp16_op = g::sage_gemv<__half, float, g::sm90_fp16_policy>;  // the previous default, same process
    using q_op = g::q1_0_gemv<__half, float>;
    using rtn_op = g::rtn_gemv<__half, float>;
    void* ws;
    CUDA_OK(cudaMalloc(&ws, sage_op::workspace_size({sage.views[0], x, cols, y, rows, 8}) +
                                sage_fp16_op::workspace_size({sage.views[0], x, cols, y, rows, 8}) +
                                q_op::workspace_size({q.views[0], x, cols, y, rows, 8})));
    CUDA_OK(cudaDeviceSynchronize());

    const int launches = std::max(64, copies);
    const double floor_us = time_us(launches, [&](int i, cudaStream_t st) {
      stream_read<<<prop.multiProcessorCount * 4, 512, 0, st>>>(reinterpret_cast<const uint4*>(sage.buffers[i % copies]),
                                                               n_bytes / 16, sink);
    }, s);
    const double rtn_floor_us = time_us(std::max(64, rcopies), [&](int i, cudaStream_t st) {
      stream_read<<<prop.multiProcessorCount * 4, 512, 0, st>>>(
          reinterpret_cast<const uint4*>(rtn.buffers[i % rcopies]), rtn.bytes / 16, sink);
    }, s);
    const double bpw = 8.0 * static_cast<double>(n_bytes) / static_cast<double>(rows * cols);
    for (index_t batch : {1, 2, 4, 8}) {
      auto sage_args = [&](int i) { return sage_op::arguments{sage.views[i % copies], x, cols, y, rows, batch}; };
      if (profile) {  // 3 run() per batch (1, 2, 4, 8)
        for (int i = 0; i < 3; ++i) (void)sage_op::run(sage_args(i), ws, s);
        CUDA_OK(cudaDeviceSynchronize());
        continue;
      }
      const double run_us = time_us(launches, [&](int i, cudaStream_t st) {
        if (auto ok = sage_op::run(sage_args(i), ws, st); !ok) std::printf("%s\n", ok.message().c_str());
      }, s);
      using impl = g::detail::binary_gemv<g::detail::sage_rows, __half, float, g::sm90_policy>;
      auto problem = [&](int i) { return impl::problem_type{g::detail::sage_rows{sage.views[i % copies]}, y, rows}; };
      const double serial_us = time_us(launches, [&](int i, cudaStream_t st) {
        const auto p = problem(i);
        (void)impl::run<1>(&p, 1, x, cols, batch, ws, st, false);
      }, s);
      // The GEMV kernel alone, x folded once beforehand (what fusing the fold into the previous kernel would give).
      CUDA_OK(cudaDeviceSynchronize());
      (void)sage_op::run(sage_args(0), ws, s);
      CUDA_OK(cudaStreamSynchronize(s));
      const double kernel_us = time_us(launches, [&](int i, cudaStream_t st) {
        const auto p = problem(i);
        (void)impl::launch_gemv<1>(&p, 1, ws, static_cast<int>(batch), gpu, st);
      }, s);
      // The fp16 kernels (sm90_fp16_policy): run() and the GEMV alone, as above.
      const double fp16_run_us = time_us(launches, [&](int i, cudaStream_t st) {
        if (auto ok = sage_fp16_op::run({sage.views[i % copies], x, cols, y, rows, batch}, ws, st); !ok)
          std::printf("%s\n", ok.message().c_str());
      }, s);
      using fp16_impl = g::detail::binary_gemv<g::detail::sage_rows, __half, float, g::sm90_fp16_policy>;
      CUDA_OK(cudaDeviceSynchronize());
      (void)sage_fp16_op::run({sage.views[0], x, cols, y, rows, batch}, ws, s);
      CUDA_OK(cudaStreamSynchronize(s));
      const double fp16_kernel_us = time_us(launches, [&](int i, cudaStream_t st) {
        const auto p = fp16_impl::problem_type{g::detail::sage_rows{sage.views[i % copies]}, y, rows};
        (void)fp16_impl::launch_gemv<1>(&p, 1, ws, static_cast<int>(batch), gpu, st);
      }, s);
      // Few launches: the scalar path is ~2-3 orders of magnitude slower.
      const double scalar_us = time_us(4, [&](int i, cudaStream_t st) {
        sage_scalar_gemv<<<static_cast<unsigned>((rows + 127) / 128), 128, 0, st>>>(sage.views[i % copies], x, cols, y,
                                                                                     rows, static_cast<int>(batch));
      }, s);
      const float one = 1.0f, zero = 0.0f;
      const double blas_us = time_us(std::max(64, dcopies), [&](int i, cudaStream_t) {
        cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), static_cast<int>(batch), static_cast<int>(cols),
                     &one, dense[i % dcopies], CUDA_R_16F, static_cast<int>(cols), x, CUDA_R_16F, static_cast<int>(cols),
                     &zero, y16, CUDA_R_16F, static_cast<int>(rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      }, s);
      const double q_us = time_us(std::max(64, qcopies), [&](int i, cudaStream_t st) {
        if (auto ok = q_op::run({q.views[i % qcopies], x, cols, y, rows, batch}, ws, st); !ok)
          std::printf("%s\n", ok.message().c_str());
      }, s);
      const double rtn_us = time_us(std::max(64, rcopies), [&](int i, cudaStream_t st) {
        if (auto ok = rtn_op::run({rtn.views[i % rcopies], x, cols, y, rows, batch}, nullptr, st); !ok)
          std::printf("%s\n", ok.message().c_str());
      }, s);
      char line[768];
      std::snprintf(line, sizeof line,
                    "| %lld x %lld | %lld | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f%% | %.2f | %.2f | %.1fx | %.2f | "
                    "%.3f | %.2f | %.0f | %.0f%% | %.0f | %.0fx |\n",
                    static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(batch), run_us,
                    serial_us, kernel_us, fp16_run_us, fp16_kernel_us, static_cast<double>(n_bytes) / run_us / 1e3,
                    100.0 * floor_us / run_us,
                    floor_us, blas_us, blas_us / run_us, q_us, bpw, rtn_us,
                    static_cast<double>(rtn.bytes) / rtn_us / 1e3, 100.0 * rtn_floor_us / rtn_us, scalar_us,
                    scalar_us / run_us);
      std::printf("%s", line);
      std::fflush(stdout);
      out += line;
    }
    if (profile) return 0;
    for (auto p : dense) cudaFree(p);
    cudaFree(x); cudaFree(y); cudaFree(y16); cudaFree(ws);
  }
  if (mode == "targets") {  // policy variants of the planes path (the knobs of policy.cuh), kernel alone and run()
    out += "\n" + card + "| rows x cols | batch | variant | run() us | GEMV kernel only us |\n| --- | --- | --- | --- | --- |\n";
    out += bench_variant<planes8_bench_policy>("8-bit planes", prop, s);
    out += bench_variant<planes_two_tiles_bench_policy>("two row tiles at every batch", prop, s);
  }
  if (mode == "planes") out = bench_planes(prop, s, sink);
  if (mode.empty() || mode == "fused") {
    out += "\n" + card +
           "| matrices (rows x cols) | format | batch | 3 separate run() us | fused run() us | speed-up | weight MB | "
           "fused weight GB/s |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n";
    out += bench_fused("q/k/v 3 x 4096 x 4096", {4096, 4096, 4096}, 4096, prop, s);
    out += bench_fused("q/k/v GQA 4096 + 1024 + 1024 x 4096", {4096, 1024, 1024}, 4096, prop, s);
    out += bench_fused("gate/up 2 x 14336 x 4096", {14336, 14336}, 4096, prop, s);
  }
  return write_report(out, argc, argv);
}
#endif
