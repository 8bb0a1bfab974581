// Throughput of warp-level mma.sync shapes on the current GPU: which tensor-core path a binary GEMV should take.
// Each warp runs `chains` independent accumulator chains of one mma for `iterations` steps; every SM holds
// `warps_per_sm` warps. Reports mma per SM per clock (cycles from clock64 inside the kernel) and weights (A elements)
// per second at the measured time (CUDA events, median of 5).
//
//   nvcc -std=c++20 -O3 -arch=sm_90 bench/mma_throughput_cuda.cu -o /tmp/mma_bench && /tmp/mma_bench
//   cuobjdump -sass /tmp/mma_bench | grep -E 'BMMA|IMMA|HMMA|POPC'   # native instructions or an emulation

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#define CUDA_OK(call)                                                                                \
  do {                                                                                               \
    cudaError_t e_ = (call);                                                                         \
    if (e_ != cudaSuccess) {                                                                         \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #call);  \
      std::exit(2);                                                                                  \
    }                                                                                                \
  } while (0)

namespace {

/// One mma shape: A (4 registers), B (2 registers), C/D (4 registers, s32 or f32 bits).
struct b1_and {
  static constexpr const char* name = "m16n8k256 b1 and.popc";
  static constexpr int weights = 16 * 256;
  __device__ static void mma(std::uint32_t (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
struct b1_xor {
  static constexpr const char* name = "m16n8k256 b1 xor.popc";
  static constexpr int weights = 16 * 256;
  __device__ static void mma(std::uint32_t (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
struct s4_s4 {
  static constexpr const char* name = "m16n8k64 s4.s4";
  static constexpr int weights = 16 * 64;
  __device__ static void mma(std::uint32_t (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
struct s8_s8 {
  static constexpr const char* name = "m16n8k32 s8.s8";
  static constexpr int weights = 16 * 32;
  __device__ static void mma(std::uint32_t (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
struct u8_s8 {
  static constexpr const char* name = "m16n8k32 u8.s8";
  static constexpr int weights = 16 * 32;
  __device__ static void mma(std::uint32_t (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
struct f16_f32 {
  static constexpr const char* name = "m16n8k16 f16 (f32 acc)";
  static constexpr int weights = 16 * 16;
  __device__ static void mma(std::uint32_t (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <class Op, int Chains>
__global__ void mma_loop(const std::uint32_t* in, std::uint32_t* out, int iterations, long long* cycles) {
  std::uint32_t a[4], b[2], d[Chains][4] = {};
  for (int i = 0; i < 4; ++i) a[i] = in[(threadIdx.x + i) % 64];
  for (int i = 0; i < 2; ++i) b[i] = in[(threadIdx.x + 7 + i) % 64];
  if (std::is_same_v<Op, f16_f32>)  // ordinary fp16 values, no NaN/Inf
    for (auto* r : {&a[0], &a[1], &a[2], &a[3], &b[0], &b[1]}) *r &= 0x3bff3bffu;
  __syncthreads();
  const long long start = clock64();
  for (int it = 0; it < iterations; ++it)
#pragma unroll
    for (int c = 0; c < Chains; ++c) Op::mma(d[c], a, b);
  const long long stop = clock64();
  std::uint32_t sum = 0;
#pragma unroll
  for (int c = 0; c < Chains; ++c) sum += d[c][0] ^ d[c][1] ^ d[c][2] ^ d[c][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
  if (threadIdx.x == 0) cycles[blockIdx.x] = stop - start;
}

template <class Op, int Chains>
void measure(const cudaDeviceProp& prop, int warps_per_block, int blocks_per_sm, const std::uint32_t* in,
             std::uint32_t* out, long long* cycles) {
  const int iterations = 4096, blocks = prop.multiProcessorCount * blocks_per_sm;
  auto launch = [&] { mma_loop<Op, Chains><<<blocks, 32 * warps_per_block>>>(in, out, iterations, cycles); };
  launch();
  CUDA_OK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  std::vector<float> times;
  for (int r = 0; r < 5; ++r) {
    CUDA_OK(cudaEventRecord(e0));
    launch();
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    times.push_back(ms);
  }
  CUDA_OK(cudaGetLastError());
  std::sort(times.begin(), times.end());
  std::vector<long long> c(static_cast<std::size_t>(blocks));
  CUDA_OK(cudaMemcpy(c.data(), cycles, c.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  const long long max_cycles = *std::max_element(c.begin(), c.end());
  const double mma_per_sm = static_cast<double>(blocks_per_sm) * warps_per_block * iterations * Chains;
  const double seconds = times[2] * 1e-3;
  const double total_mma = mma_per_sm * prop.multiProcessorCount;
  std::printf("| %s | %d | %d | %.3f | %.1f | %.0f | %.2f |\n", Op::name, warps_per_block * blocks_per_sm, Chains,
              mma_per_sm / static_cast<double>(max_cycles),
              4.0 * static_cast<double>(max_cycles) / mma_per_sm, total_mma * Op::weights / seconds / 1e12,
              total_mma / seconds / 1e12);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

template <class Op>
void measure_all(const cudaDeviceProp& prop, const std::uint32_t* in, std::uint32_t* out, long long* cycles) {
  measure<Op, 1>(prop, 4, 1, in, out, cycles);   // latency: one chain per scheduler
  measure<Op, 4>(prop, 8, 2, in, out, cycles);
  measure<Op, 8>(prop, 8, 2, in, out, cycles);
  measure<Op, 4>(prop, 16, 2, in, out, cycles);
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("Card: %s, %d SMs\n\n", prop.name, prop.multiProcessorCount);
  std::vector<std::uint32_t> host(64);
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::uint32_t>(i * 0x9e3779b9u) ^ 0x5bd1e995u;
  std::uint32_t *in, *out;
  long long* cycles;
  CUDA_OK(cudaMalloc(&in, 64 * 4));
  CUDA_OK(cudaMemcpy(in, host.data(), 64 * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMalloc(&out, 4 << 20));
  CUDA_OK(cudaMalloc(&cycles, 4096 * sizeof(long long)));
  std::printf("| mma | warps per SM | chains per warp | mma per SM per clock | cycles per mma per scheduler | "
              "T weights/s | T mma/s |\n| --- | --- | --- | --- | --- | --- | --- |\n");
  measure_all<b1_and>(prop, in, out, cycles);
  measure_all<b1_xor>(prop, in, out, cycles);
  measure_all<s4_s4>(prop, in, out, cycles);
  measure_all<s8_s8>(prop, in, out, cycles);
  measure_all<u8_s8>(prop, in, out, cycles);
  measure_all<f16_f32>(prop, in, out, cycles);
  return 0;
}
