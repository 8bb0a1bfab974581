// CUDA GEMV kernels (cuda/gemv/gemv.cuh) against a float64 reference of the decoded matrix, on fresh random inputs:
// sage default format and q1_0; activations fp16 / bf16 / f32, outputs f32 / fp16 / bf16; batch 1..8; ragged shapes
// (172 columns; rows not a multiple of any row tile; every row-tile count); both sign decodes (bit_decode for fp16
// at batch <= 2, forced on small shapes by a test policy; sign_decode otherwise); salient tails of 3, 4 and 8 bits;
// outputs poisoned (NaN) before each run; one flipped sign bit, scale or salient code must fail the tolerance; bad
// arguments return their statuses.
//
// Built and run on the GPU machine (one command, from the repository root):
//   nvcc -std=c++20 -O2 -arch=sm_90 -Iinclude -Itests/cpu tests/cuda/gemv_test.cu -o /tmp/gemv_test && /tmp/gemv_test
// and under the sanitizers: compute-sanitizer --tool memcheck /tmp/gemv_test quick (racecheck likewise).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "random_packed.hpp"
#include "sageptq/cuda/gemv/gemv.cuh"

namespace sp = sageptq;
namespace t = sageptq_test;
namespace g = sageptq::cuda::gemv;
using sp::index_t;

namespace {

int failures = 0, checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

#define CUDA_OK(call)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (call);                                                                   \
    if (e_ != cudaSuccess) {                                                                   \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #call); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

template <class T>
struct device_buffer {
  T* ptr = nullptr;
  std::size_t n = 0;
  explicit device_buffer(std::size_t count) : n(count) { CUDA_OK(cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * sizeof(T))); }
  device_buffer(const std::vector<T>& host) : device_buffer(host.size()) {
    CUDA_OK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~device_buffer() { cudaFree(ptr); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  std::vector<T> to_host() const {
    std::vector<T> h(n);
    CUDA_OK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T> const char* name();
template <> const char* name<float>() { return "f32"; }
template <> const char* name<__half>() { return "f16"; }
template <> const char* name<__nv_bfloat16>() { return "bf16"; }

/// Host value of a device type, and the rounding of a float to it (round to nearest even, as the device does).
template <class T> float round_to(float v);
template <> float round_to<float>(float v) { return v; }
template <> float round_to<__half>(float v) { return sp::fp16(v).to_float(); }
template <> float round_to<__nv_bfloat16>(float v) { return sp::bf16(v).to_float(); }
template <class T> T to_device(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __ushort_as_half(sp::fp16(v).bits);
  else return __ushort_as_bfloat16(sp::bf16(v).bits);
}
template <class T> float to_host(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return sp::fp16::from_bits(__half_as_ushort(v)).to_float();
  else return sp::bf16::from_bits(__bfloat16_as_ushort(v)).to_float();
}
template <class T> double unit_roundoff() {
  return std::is_same_v<T, float> ? 0x1p-24 : std::is_same_v<T, __half> ? 0x1p-11 : 0x1p-8;
}

/// One GEMV on the device; returns the largest |y - ref| / tolerance (> 1 fails, inf for NaN / unwritten).
template <class Op, class Act, class Out, class View>
double run_and_compare(const View& host_view, typename Op::arguments args, index_t rows, index_t cols, index_t batch,
                       std::uint64_t seed, double* seconds = nullptr) {
  auto x = t::random_x(batch, cols, seed);
  for (auto& v : x) v = round_to<Act>(v);  // the reference sees exactly the activations the device sees
  std::vector<Act> xd(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) xd[i] = to_device<Act>(x[i]);
  device_buffer<Act> dx(xd);
  device_buffer<Out> dy(static_cast<std::size_t>(batch * rows));
  CUDA_OK(cudaMemset(dy.ptr, 0xff, dy.n * sizeof(Out)));  // NaN in every output type
  args.x = dx.ptr;
  args.x_stride = cols;
  args.y = dy.ptr;
  args.y_stride = rows;
  args.batch = batch;
  if (auto ok = Op::can_implement(args); !ok) {
    expect(false, "can_implement: " + ok.message());
    return INFINITY;
  }
  device_buffer<char> ws(Op::workspace_size(args));
  if (auto done = Op::run(args, ws.ptr, nullptr); !done) {
    expect(false, "run: " + done.message());
    return INFINITY;
  }
  CUDA_OK(cudaDeviceSynchronize());
  (void)seconds;
  const auto yd = dy.to_host();
  const auto ref = t::dense_reference(host_view, rows, cols, x, batch);
  const double u16 = std::is_same_v<Act, __nv_bfloat16> ? 0x1p-8 : 0x1p-11;
  double worst = 0;
  for (std::size_t i = 0; i < yd.size(); ++i) {
    const double y = to_host(yd[i]);
    const double tol = (u16 + 2.0 * static_cast<double>(cols + 8) * 0x1p-24) * ref.bound[i] +
                       unit_roundoff<Out>() * std::fabs(ref.y[i]) + 1e-30;
    const double err = std::fabs(y - ref.y[i]);
    if (!(err == err)) return INFINITY;
    worst = std::max(worst, err / tol);
  }
  return worst;
}

/// The sage matrix serialized into one device buffer and viewed in place.
struct device_sage {
  std::vector<std::uint8_t> bytes;
  device_buffer<std::uint8_t> buffer;
  sp::format::sage_view<sp::device_space> view;
  explicit device_sage(const sp::format::sage_matrix& m)
      : bytes(sp::format::serialize(m)), buffer(bytes),
        view(sp::format::view_serialized<sp::device_space>(m.shape, buffer.ptr)) {}
};

/// sm90_policy with bit_decode for every K (the default takes it from 16 K steps per block on), so small shapes test
/// both decodes.
struct bit_decode_policy : g::sm90_policy {
  static constexpr int bit_decode_min_steps = 0;
};

template <class Act, class Out, class Policy = g::sm90_policy>
void check_sage(const t::sage_case& cs, bool quick) {
  const auto m = t::random_sage(cs);
  device_sage d(m);
  using op = g::sage_gemv<Act, Out, Policy>;
  for (index_t batch = 1; batch <= 8; batch += quick ? 7 : 1) {
    const double worst = run_and_compare<op, Act, Out>(m.view(), typename op::arguments{d.view}, cs.rows, cs.cols,
                                                       batch, cs.seed * 10 + static_cast<std::uint64_t>(batch));
    expect(worst <= 1.0, std::string("sage ") + (std::is_same_v<Policy, bit_decode_policy> ? "(bit_decode) " : "") +
                             name<Act>() + "->" + name<Out>() + " " + std::to_string(cs.rows) + "x" +
                             std::to_string(cs.cols) + " batch " + std::to_string(batch) + ": error/tolerance " +
                             std::to_string(worst));
  }
}

template <class Act, class Out>
void check_q1_0(index_t rows, index_t cols, bool quick) {
  const auto m = t::random_q1_0(rows, cols, static_cast<std::uint64_t>(rows * 7 + cols));
  device_buffer<std::uint32_t> signs(m.signs);
  device_buffer<sp::fp16> scales(m.scales);
  using op = g::q1_0_gemv<Act, Out>;
  typename op::arguments args{sp::format::q1_0_view<sp::device_space>{signs.ptr, scales.ptr, rows, cols}};
  for (index_t batch = 1; batch <= 8; batch += quick ? 7 : 1) {
    const double worst = run_and_compare<op, Act, Out>(m.view(), args, rows, cols, batch, 500 + static_cast<std::uint64_t>(batch));
    expect(worst <= 1.0, std::string("q1_0 ") + name<Act>() + "->" + name<Out>() + " " + std::to_string(rows) + "x" +
                             std::to_string(cols) + " batch " + std::to_string(batch) + ": error/tolerance " +
                             std::to_string(worst));
  }
}

/// The tolerance is tight enough: a flipped sign bit, row scale, group scale or salient code fails it, for either
/// decode (bit_decode_policy at batch 1 runs bit_decode; batch 8 runs sign_decode).
template <class Policy>
void check_detection(index_t batch) {
  const t::sage_case cs{37, 172, 3, 3, 4, false, 71};
  const auto m = t::random_sage(cs);
  using op = g::sage_gemv<__half, float, Policy>;
  const std::uint64_t seed = 72;
  auto x = t::random_x(batch, cs.cols, seed);
  index_t stored = 0;  // the binarized weight with the largest |x|
  auto magnitude = [&](index_t j) { return std::fabs(x[static_cast<std::size_t>(m.view().source_column(j))]); };
  for (index_t j = 0; j < m.shape.binarized_cols(); ++j)
    if (magnitude(j) > magnitude(stored)) stored = j;
  auto run_changed = [&](const sp::format::sage_matrix& changed) {
    device_sage d(changed);  // device holds the changed matrix; the reference comes from the original
    return run_and_compare<op, __half, float>(m.view(), typename op::arguments{d.view}, cs.rows, cs.cols, batch, seed);
  };
  const std::string at = " (batch " + std::to_string(batch) + ")";
  expect(run_changed(m) <= 1.0, "unchanged matrix passes" + at);
  auto flipped = m;
  flipped.signs[static_cast<std::size_t>(5 * m.shape.sign_row_words() + stored / 32)] ^= 1u << (stored % 32);
  expect(run_changed(flipped) > 1.0, "one flipped sign bit fails the tolerance" + at);
  auto alpha = m;
  alpha.row_scales[4] = sp::fp16(alpha.row_scales[4].to_float() * 1.0625f);
  expect(run_changed(alpha) > 1.0, "one changed row scale fails the tolerance" + at);
  auto beta = m;
  beta.group_scales[1] = sp::fp16(beta.group_scales[1].to_float() * 1.0625f);
  expect(run_changed(beta) > 1.0, "one changed group scale fails the tolerance" + at);
  auto code = m;
  code.salient_codes[static_cast<std::size_t>(9 * m.shape.salient_row_words())] ^= 1u;
  expect(run_changed(code) > 1.0, "one flipped salient code bit fails the tolerance" + at);
  auto salient_scale = m;
  salient_scale.salient_scales[3] = sp::fp16(salient_scale.salient_scales[3].to_float() * 2.0f);
  expect(run_changed(salient_scale) > 1.0, "one changed salient scale fails the tolerance" + at);
}

void check_bad_arguments() {
  const auto m = t::random_sage(t::sage_case{});
  device_sage d(m);
  device_buffer<__half> x(8 * 172);
  device_buffer<float> y(9 * 37);
  using op = g::sage_gemv<__half, float>;
  op::arguments a{d.view, x.ptr, 172, y.ptr, 37, 9};
  expect(op::can_implement(a).code() == sp::status::invalid_argument, "batch 9 is invalid_argument");
  a.batch = 2;
  expect(op::can_implement(a).ok(), "batch 2 is fine");
  a.x_stride = 100;
  expect(op::can_implement(a).code() == sp::status::invalid_layout, "short x stride is invalid_layout");
  a.x_stride = 172;
  auto table = a;
  table.weights.shape.scale_mode = sp::format::sage_scale_mode::table;
  expect(op::can_implement(table).code() == sp::status::unsupported, "table scales are unsupported");
  expect(op::run(a, nullptr, nullptr).code() == sp::status::invalid_argument, "missing workspace is invalid_argument");
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";  // for the sanitizers: batch 1 and 8 only
  std::vector<t::sage_case> cases = {t::sage_case{37, 172, 3, 3, 4, false, 1}, t::sage_case{130, 700, 7, 4, 3, true, 2},
                                     t::sage_case{5, 300, 0, 1, 4, false, 3}};
  if (!quick) {
    cases.push_back(t::sage_case{4000, 500, 5, 2, 4, false, 4});  // 2 row tiles per warp on 132 SMs
    cases.push_back(t::sage_case{8200, 300, 3, 4, 8, false, 5});  // 4 row tiles, ragged last block
    cases.push_back(t::sage_case{70, 4200, 42, 4, 4, false, 6});  // many K steps per warp
  }
  for (const auto& cs : cases) {
    check_sage<__half, float>(cs, quick);
    check_sage<__half, float, bit_decode_policy>(cs, quick);
    check_sage<__nv_bfloat16, float>(cs, quick);
  }
  check_sage<float, float>(cases[0], quick);
  check_sage<float, float, bit_decode_policy>(cases[0], quick);
  check_sage<__half, __half>(cases[1], quick);
  check_sage<__half, __nv_bfloat16, bit_decode_policy>(cases[1], quick);
  check_sage<__half, float>(t::sage_case{40, 8300, 83, 4, 4, false, 7}, quick);  // bit_decode by the default policy
  check_sage<__nv_bfloat16, __nv_bfloat16>(cases[1], quick);
  for (auto [rows, cols] : {std::pair<index_t, index_t>{37, 172}, {130, 384}, {4000, 1000}}) {
    check_q1_0<__half, float>(rows, cols, quick);
    check_q1_0<__nv_bfloat16, __nv_bfloat16>(rows, cols, quick);
  }
  check_detection<bit_decode_policy>(1);
  check_detection<g::sm90_policy>(1);
  check_detection<g::sm90_policy>(8);
  check_bad_arguments();
  std::printf("%s: %d of %d checks passed\n", failures == 0 ? "PASS" : "FAIL", checks - failures, checks);
  return failures == 0 ? 0 : 1;
}
