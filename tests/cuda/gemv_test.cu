// CUDA GEMV kernels (cuda/gemv/gemv.cuh) against a float64 reference of the decoded matrix, on fresh random inputs:
// sage default format (activation planes on binary tensor cores, 16 and 8 bits, and the fp16 kernels), q1_0 and rtn (1..8 bits, group or per-row scales, symmetric or with zeros), alone and fused
// (2 and 3 matrices of different rows sharing x); activations fp16 / bf16 / f32, outputs f32 / fp16 / bf16; batch 1..8; ragged shapes
// (172 columns; rows not a multiple of any row tile; every row-tile count); both sign decodes (bit_decode for fp16
// at batch <= 2, forced on small shapes by a test policy; sign_decode otherwise); salient tails of 3, 4 and 8 bits;
// outputs poisoned (NaN) before each run, and x's row padding NaN; one flipped sign bit, scale, salient code or rtn
// code bit / scale / zero must fail the tolerance; bad arguments return their statuses; the same input gives
// bit-identical output; run() calls back to back on one stream (PDL between them, a kernel writing x before some)
// give the same bits as each call alone. The planes path is checked twice: against the reference on the activations it quantizes
// (x^ = d q, emulated here) within an fp32 bound, and against the reference on x within the fp16 bound plus the
// a-priori quantization bound |alpha| sum_j d_block(j) (1/2 + Q 2^-20) (binary_planes.cuh).
//
// Built and run on the GPU machine (one command, from the repository root):
//   nvcc -std=c++20 -O2 -arch=sm_90 -Iinclude -Itests/cpu tests/cuda/gemv_test.cu -o /tmp/gemv_test && /tmp/gemv_test
// and under the sanitizers: compute-sanitizer --tool memcheck /tmp/gemv_test quick (racecheck likewise).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
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
  device_buffer(device_buffer&& other) noexcept : ptr(std::exchange(other.ptr, nullptr)), n(other.n) {}
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer& operator=(device_buffer&&) = delete;
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

/// The activation rounding of the binary formats (x' is rounded once to the 16-bit operand type); rtn uses x as given.
template <class Act> double binary_roundoff() { return std::is_same_v<Act, __nv_bfloat16> ? 0x1p-8 : 0x1p-11; }

/// Activations on the device: rows x_stride = cols rounded up to 8 elements apart (16 bytes for 16-bit types), the
/// padding NaN so that a kernel reading past cols fails; `host` holds exactly the values the device sees.
template <class Act>
struct device_x {
  std::vector<float> host;
  index_t stride;
  device_buffer<Act> buffer;
  device_x(index_t batch, index_t cols, std::uint64_t seed)
      : host(t::random_x(batch, cols, seed)), stride((cols + 7) / 8 * 8),
        buffer(static_cast<std::size_t>(batch * stride)) {
    std::vector<Act> padded(buffer.n, to_device<Act>(NAN));
    for (index_t b = 0; b < batch; ++b)
      for (index_t c = 0; c < cols; ++c) {
        auto& v = host[static_cast<std::size_t>(b * cols + c)];
        v = round_to<Act>(v);
        padded[static_cast<std::size_t>(b * stride + c)] = to_device<Act>(v);
      }
    CUDA_OK(cudaMemcpy(buffer.ptr, padded.data(), padded.size() * sizeof(Act), cudaMemcpyHostToDevice));
  }
};

/// Outputs batch x rows with row stride rows + pad, NaN in every output type before the run.
template <class Out>
device_buffer<Out> poisoned_y(index_t batch, index_t y_stride) {
  device_buffer<Out> y(static_cast<std::size_t>(batch * y_stride));
  CUDA_OK(cudaMemset(y.ptr, 0xff, y.n * sizeof(Out)));
  return y;
}

/// Largest |y - ref| / tolerance over a matrix's outputs (> 1 fails, inf for NaN / unwritten), with the tolerance of
/// gemv.cuh: (u_in + 2 (K + 8) 2^-24) sum_j |w_j x_j| + u_out |y|.
template <class Out, class View>
double compare(const View& host_view, index_t rows, index_t cols, const std::vector<float>& x, index_t batch,
               const device_buffer<Out>& y, index_t y_stride, double u_in) {
  const auto yd = y.to_host();
  const auto ref = t::dense_reference(host_view, rows, cols, x, batch);
  double worst = 0;
  for (index_t b = 0; b < batch; ++b)
    for (index_t r = 0; r < rows; ++r) {
      const auto i = static_cast<std::size_t>(b * rows + r);
      const double v = to_host(yd[static_cast<std::size_t>(b * y_stride + r)]);
      const double tol = (u_in + 2.0 * static_cast<double>(cols + 8) * 0x1p-24) * ref.bound[i] +
                         unit_roundoff<Out>() * std::fabs(ref.y[i]) + 1e-30;
      const double err = std::fabs(v - ref.y[i]);
      if (!(err == err)) return INFINITY;
      worst = std::max(worst, err / tol);
    }
  return worst;
}

/// What the planes path quantizes (binary_planes.cuh), emulated with the same float operations: per batch column
/// and 512-column block of stored order, d and q; effective() gives x^ in source order (d q / beta for the binarized
/// columns, the salient ones rounded to the operand type T), bound() the a-priori |x - x^| term per [batch][row].
struct plane_emulation {
  index_t batch, blocks;
  std::vector<float> d;   // [batch][block]
  std::vector<int> q;     // [batch][block * 512]
  int bits;
  plane_emulation(const sp::format::sage_view<sp::host_space>& w, const std::vector<float>& x, index_t batch_,
                  int bits_)
      : batch(batch_), blocks(g::detail::plane_blocks(w.shape.sign_row_words())), bits(bits_) {
    const index_t cols = w.shape.cols, per = g::detail::plane_block_cols;
    d.assign(static_cast<std::size_t>(batch * blocks), 0.0f);
    q.assign(static_cast<std::size_t>(batch * blocks * per), 0);
    const float q_max = static_cast<float>((1 << (bits - 1)) - 1);
    for (index_t b = 0; b < batch; ++b)
      for (index_t k = 0; k < blocks; ++k) {
        std::vector<float> v(static_cast<std::size_t>(per), 0.0f);
        float m = 0.0f;
        for (index_t i = 0; i < per; ++i)
          if (const index_t j = k * per + i; j < w.shape.binarized_cols()) {
            v[static_cast<std::size_t>(i)] = w.group_scales[w.group(0, j)].to_float() *
                                             x[static_cast<std::size_t>(b * cols + w.source_column(j))];
            m = std::max(m, std::fabs(v[static_cast<std::size_t>(i)]));
          }
        const float inverse = m > 0.0f ? q_max / m : 0.0f;
        d[static_cast<std::size_t>(b * blocks + k)] = m / q_max;
        for (index_t i = 0; i < per; ++i)
          q[static_cast<std::size_t>((b * blocks + k) * per + i)] =
              static_cast<int>(std::nearbyint(v[static_cast<std::size_t>(i)] * inverse));
      }
  }
  template <class T>
  std::vector<float> effective(const sp::format::sage_view<sp::host_space>& w, const std::vector<float>& x) const {
    const index_t cols = w.shape.cols, kb = w.shape.binarized_cols(), per = g::detail::plane_block_cols;
    std::vector<float> e = x;
    for (index_t b = 0; b < batch; ++b) {
      for (index_t j = 0; j < kb; ++j) {
        const double beta = w.group_scales[w.group(0, j)].to_float();
        if (beta != 0.0)
          e[static_cast<std::size_t>(b * cols + w.source_column(j))] = static_cast<float>(
              static_cast<double>(d[static_cast<std::size_t>(b * blocks + j / per)]) *
              q[static_cast<std::size_t>(b * blocks * per + j)] / beta);
      }
      for (index_t k = 0; k < w.shape.salient_cols; ++k) {
        auto& v = e[static_cast<std::size_t>(b * cols + w.source_column(kb + k))];
        v = round_to<T>(v);
      }
    }
    return e;
  }
  std::vector<double> bound(const sp::format::sage_view<sp::host_space>& w) const {
    const double per_step = 0.5 + std::ldexp(static_cast<double>((1 << (bits - 1)) - 1), -20);
    std::vector<double> out(static_cast<std::size_t>(batch * w.shape.rows));
    for (index_t b = 0; b < batch; ++b) {
      double d_sum = 0;
      for (index_t j = 0; j < w.shape.binarized_cols(); ++j)
        d_sum += d[static_cast<std::size_t>(b * blocks + j / g::detail::plane_block_cols)];
      for (index_t r = 0; r < w.shape.rows; ++r)
        out[static_cast<std::size_t>(b * w.shape.rows + r)] = std::fabs(w.row_scales[r].to_float()) * d_sum * per_step;
    }
    return out;
  }
};

/// Which tolerance a planes-path result must meet: both (the fp32 bound against x^, and the fp16 + quantization
/// bound against x), or only the latter (detection: a changed matrix must fail the bound derived from the step).
enum class plane_check { both, quantization_bound };

/// The planes path's largest error/tolerance over a sage matrix's outputs (see plane_check).
template <class Act, class Out>
double compare_planes(const sp::format::sage_view<sp::host_space>& w, const std::vector<float>& x, index_t batch,
                      const device_buffer<Out>& y, index_t y_stride, int bits, plane_check check) {
  using T = typename g::detail::operand<Act>::type;
  const index_t rows = w.shape.rows, cols = w.shape.cols;
  const plane_emulation planes(w, x, batch, bits);
  const auto x_hat = planes.template effective<T>(w, x);
  const auto quantization = planes.bound(w);
  const auto yd = y.to_host();
  const auto ref = t::dense_reference(w, rows, cols, x, batch), ref_hat = t::dense_reference(w, rows, cols, x_hat, batch);
  double worst = 0;
  for (index_t b = 0; b < batch; ++b)
    for (index_t r = 0; r < rows; ++r) {
      const auto i = static_cast<std::size_t>(b * rows + r);
      const double v = to_host(yd[static_cast<std::size_t>(b * y_stride + r)]);
      const double fp32 = 2.0 * static_cast<double>(cols + 8) * 0x1p-24;
      const double tol = (binary_roundoff<Act>() + fp32) * ref.bound[i] + quantization[i] +
                         unit_roundoff<Out>() * std::fabs(ref.y[i]) + 1e-30;
      const double tol_hat = fp32 * ref_hat.bound[i] + unit_roundoff<Out>() * std::fabs(ref_hat.y[i]) + 1e-30;
      const double err = std::fabs(v - ref.y[i]), err_hat = std::fabs(v - ref_hat.y[i]);
      if (!(err == err)) return INFINITY;
      worst = std::max(worst, err / tol);
      if (check == plane_check::both) worst = std::max(worst, err_hat / tol_hat);
    }
  return worst;
}

template <class Op>
bool launch(const typename Op::arguments& args) {
  if (auto ok = Op::can_implement(args); !ok) {
    expect(false, "can_implement: " + ok.message());
    return false;
  }
  device_buffer<char> ws(Op::workspace_size(args));
  if (auto done = Op::run(args, ws.ptr, nullptr); !done) {
    expect(false, "run: " + done.message());
    return false;
  }
  CUDA_OK(cudaDeviceSynchronize());
  return true;
}

/// One GEMV on the device; returns the largest |y - ref| / tolerance (> 1 fails, inf for NaN / unwritten).
/// plane_bits > 0: the call runs the planes path with that many bits (compare_planes with `check`).
template <class Op, class Act, class Out, class View>
double run_and_compare(const View& host_view, typename Op::arguments args, index_t rows, index_t cols, index_t batch,
                       std::uint64_t seed, double u_in, int plane_bits = 0, plane_check check = plane_check::both) {
  device_x<Act> x(batch, cols, seed);
  const index_t y_stride = rows + 3;
  auto y = poisoned_y<Out>(batch, y_stride);
  args.x = x.buffer.ptr;
  args.x_stride = x.stride;
  args.y = y.ptr;
  args.y_stride = y_stride;
  args.batch = batch;
  if (!launch<Op>(args)) return INFINITY;
  if constexpr (std::is_same_v<View, sp::format::sage_view<sp::host_space>>)
    if (plane_bits > 0) {
      // Deterministic: a second run on the same input gives the same bits.
      const auto first = y.to_host();
      CUDA_OK(cudaMemset(y.ptr, 0xff, y.n * sizeof(Out)));
      if (!launch<Op>(args)) return INFINITY;
      const auto second = y.to_host();
      expect(std::memcmp(first.data(), second.data(), first.size() * sizeof(Out)) == 0,
             "planes path: the same input gives bit-identical output");
      return compare_planes<Act>(host_view, x.host, batch, y, y_stride, plane_bits, check);
    }
  return compare(host_view, rows, cols, x.host, batch, y, y_stride, u_in);
}

index_t rows_of(const sp::format::sage_view<sp::host_space>& v) { return v.shape.rows; }
template <class View> index_t rows_of(const View& v) { return v.rows; }

/// A fused call over host_views.size() matrices (weights already in args); the largest error/tolerance of any.
template <class Fused, class View>
double run_fused(const std::vector<View>& host_views, typename Fused::arguments args, index_t cols, index_t batch,
                 std::uint64_t seed, double u_in, int plane_bits = 0) {
  using Act = typename Fused::activation_type;
  using Out = typename Fused::output_type;
  device_x<Act> x(batch, cols, seed);
  std::vector<device_buffer<Out>> ys;
  ys.reserve(host_views.size());
  args.count = static_cast<int>(host_views.size());
  for (std::size_t i = 0; i < host_views.size(); ++i) {
    args.y_stride[i] = rows_of(host_views[i]) + 1;
    ys.push_back(poisoned_y<Out>(batch, args.y_stride[i]));
    args.y[i] = ys.back().ptr;
  }
  args.x = x.buffer.ptr;
  args.x_stride = x.stride;
  args.batch = batch;
  if (!launch<Fused>(args)) return INFINITY;
  double worst = 0;
  for (std::size_t i = 0; i < host_views.size(); ++i) {
    if constexpr (std::is_same_v<View, sp::format::sage_view<sp::host_space>>)
      if (plane_bits > 0) {
        worst = std::max(worst, compare_planes<Act>(host_views[i], x.host, batch, ys[i], args.y_stride[i], plane_bits,
                                                    plane_check::both));
        continue;
      }
    worst = std::max(worst, compare(host_views[i], rows_of(host_views[i]), cols, x.host, batch, ys[i], args.y_stride[i],
                                    u_in));
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

/// The fp16 kernels (sm90_fp16_policy) with bit_decode for every K (the default takes it from 16 K steps per block
/// on), so small shapes test both decodes.
struct bit_decode_policy : g::sm90_fp16_policy {
  static constexpr int bit_decode_min_steps = 0;
};
/// The planes path with 8-bit planes (one plane half).
struct planes8_policy : g::sm90_policy {
  static constexpr int plane_bits = 8;
};
/// The planes path with two row tiles at every batch (the default takes them from batch 4 on).
struct planes_two_tiles_policy : g::sm90_policy {
  static constexpr int planes_two_tiles_min_batch = 1;
};

/// The planes path with a shallow sign ring (3 stages at one tile, 2 at two) and two row tiles at every batch, so the
/// steps of a warp wrap around the ring at test sizes (the default ring, 5 stages, holds 4 steps per warp).
struct planes_shallow_ring_policy : g::sm90_policy {
  static constexpr int planes_stages_one_tile = 3;
  static constexpr int planes_stages_two_tiles = 2;
  static constexpr int planes_two_tiles_min_batch = 1;
};

/// Bits of the planes path that op's policy runs at this batch, 0 for the fp16 kernels.
template <class Act, class Out, class Policy>
int plane_bits_of(index_t batch) {
  using impl = g::detail::binary_gemv<g::detail::sage_rows, Act, Out, Policy>;
  return impl::use_planes(batch) ? impl::plane_bits : 0;
}
template <class Policy>
const char* policy_name() {
  if constexpr (std::is_same_v<Policy, bit_decode_policy>) return "(fp16, bit_decode) ";
  else if constexpr (std::is_same_v<Policy, g::sm90_fp16_policy>) return "(fp16) ";
  else if constexpr (std::is_same_v<Policy, planes8_policy>) return "(planes 8) ";
  else if constexpr (std::is_same_v<Policy, planes_two_tiles_policy>) return "(planes, 2 tiles) ";
  else if constexpr (std::is_same_v<Policy, planes_shallow_ring_policy>) return "(planes, shallow ring) ";
  else return "";
}

template <class Act, class Out, class Policy = g::sm90_policy>
void check_sage(const t::sage_case& cs, bool quick) {
  const auto m = t::random_sage(cs);
  device_sage d(m);
  using op = g::sage_gemv<Act, Out, Policy>;
  for (index_t batch = 1; batch <= 8; batch += quick ? 7 : 1) {
    const double worst = run_and_compare<op, Act, Out>(m.view(), typename op::arguments{d.view}, cs.rows, cs.cols,
                                                       batch, cs.seed * 10 + static_cast<std::uint64_t>(batch),
                                                       binary_roundoff<Act>(), plane_bits_of<Act, Out, Policy>(batch));
    expect(worst <= 1.0, std::string("sage ") + policy_name<Policy>() +
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
    const double worst = run_and_compare<op, Act, Out>(m.view(), args, rows, cols, batch,
                                                       500 + static_cast<std::uint64_t>(batch), binary_roundoff<Act>());
    expect(worst <= 1.0, std::string("q1_0 ") + name<Act>() + "->" + name<Out>() + " " + std::to_string(rows) + "x" +
                             std::to_string(cols) + " batch " + std::to_string(batch) + ": error/tolerance " +
                             std::to_string(worst));
  }
}

/// The tolerance is tight enough: a flipped sign bit, row scale, group scale or salient code fails it, for either
/// fp16 decode (bit_decode_policy at batch 1 runs bit_decode; sm90_fp16_policy at batch 8 runs sign_decode) and the
/// planes path (16 bits: the bound derived from the quantization step alone must catch it; 8 bits: the step is too
/// coarse for a changed scale at K = 172, so the emulated-x^ bound must).
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
    const int bits = plane_bits_of<__half, float, Policy>(batch);
    return run_and_compare<op, __half, float>(m.view(), typename op::arguments{d.view}, cs.rows, cs.cols, batch, seed,
                                              binary_roundoff<__half>(), bits,
                                              bits >= 16 ? plane_check::quantization_bound : plane_check::both);
  };
  const std::string at = std::string(" ") + policy_name<Policy>() + "(batch " + std::to_string(batch) + ")";
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

struct device_q1_0 {
  device_buffer<std::uint32_t> signs;
  device_buffer<sp::fp16> scales;
  sp::format::q1_0_view<sp::device_space> view;
  explicit device_q1_0(const sp::format::q1_0_matrix& m)
      : signs(m.signs), scales(m.scales), view{signs.ptr, scales.ptr, m.rows, m.cols} {}
};

struct device_rtn {
  device_buffer<std::uint32_t> codes;
  device_buffer<sp::fp16> scales;
  device_buffer<std::uint8_t> zeros;
  sp::format::rtn_view<sp::device_space> view;
  explicit device_rtn(const sp::format::rtn_matrix& m)
      : codes(m.codes), scales(m.scales), zeros(m.zeros),
        view{codes.ptr, scales.ptr, m.layout.symmetric ? nullptr : zeros.ptr, m.rows, m.cols, m.layout} {}
};

std::string layout_name(const sp::format::rtn_layout& l) {
  return std::to_string(l.bits) + "-bit g" + std::to_string(l.group_size) + (l.symmetric ? " sym" : " asym");
}

template <class Act, class Out>
void check_rtn(index_t rows, index_t cols, sp::format::rtn_layout layout, bool quick) {
  const auto m = t::random_rtn(rows, cols, layout, static_cast<std::uint64_t>(rows * 13 + cols + layout.bits));
  device_rtn d(m);
  using op = g::rtn_gemv<Act, Out>;
  for (index_t batch = 1; batch <= 8; batch += quick ? 7 : 1) {
    const double worst = run_and_compare<op, Act, Out>(m.view(), typename op::arguments{d.view}, rows, cols, batch,
                                                       900 + static_cast<std::uint64_t>(batch), 0.0);
    expect(worst <= 1.0, "rtn " + layout_name(layout) + " " + name<Act>() + "->" + name<Out>() + " " +
                             std::to_string(rows) + "x" + std::to_string(cols) + " batch " + std::to_string(batch) +
                             ": error/tolerance " + std::to_string(worst));
  }
}

/// rtn's tolerance (no activation rounding) catches one flipped code bit (the lowest, at 4 and 8 bits), one changed
/// scale and one changed zero.
void check_rtn_detection(index_t batch) {
  for (int bits : {4, 8}) {
    const index_t rows = 37, cols = 172;
    const sp::format::rtn_layout layout{bits, 64, false};
    const auto m = t::random_rtn(rows, cols, layout, 77);
    using op = g::rtn_gemv<__half, float>;
    const std::uint64_t seed = 78;
    const auto x = t::random_x(batch, cols, seed);
    index_t col = 0;  // the weight with the largest |x| in batch column 0
    for (index_t c = 0; c < cols; ++c)
      if (std::fabs(x[static_cast<std::size_t>(c)]) > std::fabs(x[static_cast<std::size_t>(col)])) col = c;
    auto run_changed = [&](const sp::format::rtn_matrix& changed) {
      device_rtn d(changed);
      return run_and_compare<op, __half, float>(m.view(), typename op::arguments{d.view}, rows, cols, batch, seed, 0.0);
    };
    const std::string at = " (rtn " + std::to_string(bits) + "-bit, batch " + std::to_string(batch) + ")";
    expect(run_changed(m) <= 1.0, "unchanged matrix passes" + at);
    const index_t row = 5, words = layout.words_per_row(cols), groups = layout.groups_per_row(cols);
    auto flipped = m;
    const index_t bit = col * bits;
    flipped.codes[static_cast<std::size_t>(row * words + bit / 32)] ^= 1u << (bit % 32);
    expect(run_changed(flipped) > 1.0, "one flipped code bit fails the tolerance" + at);
    auto scale = m;
    auto& s = scale.scales[static_cast<std::size_t>(row * groups + col / 64)];
    s = sp::fp16(s.to_float() * 1.0625f);
    expect(run_changed(scale) > 1.0, "one changed scale fails the tolerance" + at);
    auto zero = m;
    auto& z = zero.zeros[static_cast<std::size_t>(row * groups + col / 64)];
    z = static_cast<std::uint8_t>(z == 0 ? 1 : z - 1);
    expect(run_changed(zero) > 1.0, "one changed zero fails the tolerance" + at);
  }
}

/// One fused call over the `count` matrices make(0), make(1), ...: the worst error/tolerance of its outputs.
template <class Fused, class Device, class Make>
double run_fused_matrices(std::size_t count, index_t cols, index_t batch, std::uint64_t seed, double u_in,
                          int plane_bits, Make make) {
  using matrix = decltype(make(std::size_t{0}));
  std::vector<matrix> ms;
  std::vector<std::unique_ptr<Device>> ds;
  typename Fused::arguments args;
  for (std::size_t i = 0; i < count; ++i) {
    ms.push_back(make(i));
    ds.push_back(std::make_unique<Device>(ms.back()));
    args.weights[i] = ds.back()->view;
  }
  std::vector<decltype(ms.front().view())> views;
  for (const auto& m : ms) views.push_back(m.view());
  return run_fused<Fused>(views, args, cols, batch, seed, u_in, plane_bits);
}

/// Fused calls (2 and 3 matrices of different rows sharing x) of every format, each output against its own reference.
template <class Act, class Out>
void check_fused(bool quick) {
  const std::string types = std::string(name<Act>()) + "->" + name<Out>();
  auto report = [&](const std::string& what, std::size_t count, index_t batch, double worst) {
    expect(worst <= 1.0, "fused " + what + " x" + std::to_string(count) + " " + types + " batch " +
                             std::to_string(batch) + ": error/tolerance " + std::to_string(worst));
  };
  for (std::size_t count : {std::size_t{2}, std::size_t{3}})
    for (index_t batch = 1; batch <= 8; batch += quick ? 7 : 1) {
      const auto seed = 1000 + static_cast<std::uint64_t>(batch);
      {  // sage: x' differs per matrix (own beta, permutation and salient columns)
        for (index_t cols : {index_t{172}, index_t{8300}}) {
          const std::vector<t::sage_case> cases = {{37, cols, 3, 3, 4, false, 11}, {130, cols, 0, 2, 4, false, 12},
                                                   {64, cols, 5, 4, 8, true, 13}};
          report("sage " + std::to_string(cols) + " cols", count, batch,
                 run_fused_matrices<g::fused_gemv<g::sage_gemv<Act, Out>>, device_sage>(
                     count, cols, batch, seed, binary_roundoff<Act>(), plane_bits_of<Act, Out, g::sm90_policy>(batch),
                     [&](std::size_t i) { return t::random_sage(cases[i]); }));
        }
      }
      // q1_0: one fold for all
      report("q1_0", count, batch,
             run_fused_matrices<g::fused_gemv<g::q1_0_gemv<Act, Out>>, device_q1_0>(
                 count, 384, batch, seed, binary_roundoff<Act>(), 0,
                 [](std::size_t i) { return t::random_q1_0(static_cast<index_t>(40 + 50 * i), 384, 20 + i); }));
      // rtn: one code width, groups may differ
      const sp::format::rtn_layout layouts[3] = {{4, 64, false}, {4, 1000, true}, {4, 32, false}};
      report("rtn", count, batch,
             run_fused_matrices<g::fused_gemv<g::rtn_gemv<Act, Out>>, device_rtn>(
                 count, 172, batch, seed, 0.0, 0, [&](std::size_t i) {
                   return t::random_rtn(static_cast<index_t>(37 + 40 * i), 172, layouts[i], 30 + i);
                 }));
    }
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

  using fused = g::fused_gemv<op>;
  fused::arguments f{{d.view, d.view}, {y.ptr, y.ptr}, {37, 37}, 0, x.ptr, 172, 1};
  expect(fused::can_implement(f).code() == sp::status::invalid_argument, "fused count 0 is invalid_argument");
  f.count = 2;
  expect(fused::can_implement(f).ok(), "fused count 2 is fine");
  const auto wide = t::random_sage(t::sage_case{37, 300, 3, 3, 4, false, 5});
  device_sage dw(wide);
  f.weights[1] = dw.view;
  expect(fused::can_implement(f).code() == sp::status::invalid_shape, "fused matrices of different cols are invalid_shape");

  const auto r = t::random_rtn(37, 172, sp::format::rtn_layout{4, 64, false}, 3);
  device_rtn dr(r);
  using rop = g::rtn_gemv<__half, float>;
  rop::arguments ra{dr.view, x.ptr, 176, y.ptr, 37, 1};
  expect(rop::can_implement(ra).ok(), "rtn with a 16-byte x stride is fine");
  ra.x_stride = 172;
  expect(rop::can_implement(ra).code() == sp::status::invalid_layout, "rtn x stride of 344 bytes is invalid_layout");
  ra.x_stride = 176;
  ra.weights.layout.group_size = 100;
  expect(rop::can_implement(ra).code() == sp::status::unsupported, "rtn groups of 100 columns are unsupported");
  const auto r3 = t::random_rtn(37, 172, sp::format::rtn_layout{3, 64, false}, 4);
  device_rtn dr3(r3);
  using rfused = g::fused_gemv<rop>;
  rfused::arguments rf{{dr.view, dr3.view}, {y.ptr, y.ptr}, {37, 37}, 2, x.ptr, 176, 1};
  expect(rfused::can_implement(rf).code() == sp::status::unsupported, "fused rtn of 4 and 3 bits is unsupported");
}

/// A kernel that writes x (as a norm or the previous layer would): the kernel right before a run() on the stream.
__global__ void copy_x(__half* dst, const __half* src, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x)
    dst[i] = src[i];
}

/// run() calls back to back on one stream with no synchronization between them (programmatic dependent launch: the
/// planes fold may start under the previous kernel, the next fold under the GEMV, whose trigger sits at its start
/// for grids of more than one block per SM (matrix c on 132 SMs) and after its wait otherwise), three matrices and
/// batches 1-8 sharing one workspace, and a kernel writing x right before some calls: every output bit-identical to
/// the same call run alone (after a stream synchronization).
void check_stream_chain(bool quick) {
  using op = g::sage_gemv<__half, float>;
  const index_t cols = 8300;
  const std::vector<sp::format::sage_matrix> ms = {
      t::random_sage(t::sage_case{quick ? 300 : 4000, cols, 83, 4, 4, false, 21}),
      t::random_sage(t::sage_case{quick ? 100 : 1000, cols, 83, 3, 4, false, 22}),
      t::random_sage(t::sage_case{4400, cols, 83, 4, 4, false, 23})};
  std::vector<std::unique_ptr<device_sage>> ds;
  for (const auto& m : ms) ds.push_back(std::make_unique<device_sage>(m));
  device_x<__half> x0(8, cols, 31), x1(8, cols, 32);
  device_buffer<__half> x(x0.buffer.n);
  struct call {
    int m;
    index_t batch;
    const device_x<__half>* write_x;  // copy_x before the call (nullptr: the previous run() is the kernel before)
  };
  const std::vector<call> calls = {{0, 1, &x0},    {1, 1, nullptr}, {0, 8, nullptr}, {2, 1, &x1},
                                   {0, 1, nullptr}, {2, 8, nullptr}, {1, 3, nullptr}, {0, 2, &x0},
                                   {2, 2, nullptr}, {1, 1, nullptr}};
  std::size_t ws_bytes = 0;
  for (const auto& c : calls)
    ws_bytes = std::max(ws_bytes, op::workspace_size({ds[c.m]->view, x.ptr, x0.stride, nullptr,
                                                      ms[c.m].shape.rows, c.batch}));
  device_buffer<char> ws(ws_bytes);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::vector<device_buffer<float>> ys;
  for (const auto& c : calls) ys.push_back(poisoned_y<float>(c.batch, ms[c.m].shape.rows));
  auto enqueue = [&](std::size_t i, bool alone) {
    const auto& c = calls[i];
    if (c.write_x != nullptr) copy_x<<<64, 256, 0, s>>>(x.ptr, c.write_x->buffer.ptr, x.n);
    const auto done = op::run({ds[c.m]->view, x.ptr, x0.stride, ys[i].ptr, ms[c.m].shape.rows, c.batch}, ws.ptr, s);
    expect(done.ok(), "stream chain: run " + std::to_string(i));
    if (alone) CUDA_OK(cudaStreamSynchronize(s));
  };
  // Alone: each call after the previous has finished (x as the chain sees it at that call).
  std::vector<std::vector<float>> alone;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    enqueue(i, true);
    alone.push_back(ys[i].to_host());
  }
  for (int rep = 0; rep < 3; ++rep) {
    for (auto& y : ys) CUDA_OK(cudaMemset(y.ptr, 0xff, y.n * sizeof(float)));
    CUDA_OK(cudaDeviceSynchronize());
    for (std::size_t i = 0; i < calls.size(); ++i) enqueue(i, false);  // adjacent kernels on the stream
    CUDA_OK(cudaStreamSynchronize(s));
    CUDA_OK(cudaGetLastError());
    for (std::size_t i = 0; i < calls.size(); ++i) {
      const auto y = ys[i].to_host();
      bool finite = true;
      for (float v : alone[i]) finite = finite && std::isfinite(v);
      expect(finite && std::memcmp(y.data(), alone[i].data(), y.size() * sizeof(float)) == 0,
             "stream chain (repeat " + std::to_string(rep) + "): call " + std::to_string(i) +
                 " back to back is bit-identical to the call alone");
    }
  }
  CUDA_OK(cudaStreamDestroy(s));
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
    check_sage<__half, float>(cs, quick);                          // planes, 16 bits
    check_sage<__half, float, planes8_policy>(cs, quick);
    check_sage<__half, float, planes_two_tiles_policy>(cs, quick);
    check_sage<__half, float, g::sm90_fp16_policy>(cs, quick);     // fp16: bit_decode at batch <= 2 where K is long
    check_sage<__half, float, bit_decode_policy>(cs, quick);
    check_sage<__nv_bfloat16, float>(cs, quick);
    check_sage<__nv_bfloat16, float, g::sm90_fp16_policy>(cs, quick);
  }
  check_sage<float, float>(cases[0], quick);
  check_sage<float, float, g::sm90_fp16_policy>(cases[0], quick);
  check_sage<float, float, bit_decode_policy>(cases[0], quick);
  check_sage<__half, __half>(cases[1], quick);
  check_sage<__half, __nv_bfloat16, bit_decode_policy>(cases[1], quick);
  check_sage<__half, float>(t::sage_case{40, 8300, 83, 4, 4, false, 7}, quick);
  check_sage<__half, float, planes8_policy>(t::sage_case{40, 8300, 83, 4, 4, false, 7}, quick);
  check_sage<__half, float, g::sm90_fp16_policy>(t::sage_case{40, 8300, 83, 4, 4, false, 7}, quick);  // bit_decode
  check_sage<__nv_bfloat16, __nv_bfloat16>(cases[1], quick);
  // The planes kernel's sign ring wrapping around (default depth: 40 steps, 5 per warp; shallow: 3 per warp), and the
  // fold's group table in shared memory at its limit (512 groups) and past it (600: fold_scale reads the weights' table).
  check_sage<__half, float>(t::sage_case{40, 20000, 200, 4, 4, false, 11}, quick);
  check_sage<__half, float, planes_shallow_ring_policy>(t::sage_case{40, 8300, 83, 4, 4, false, 7}, quick);
  if (!quick) check_sage<__half, float, planes_shallow_ring_policy>(t::sage_case{3900, 9000, 90, 4, 4, false, 9}, quick);
  check_sage<__half, float>(t::sage_case{40, 3000, 30, 512, 4, false, 10}, quick);
  check_sage<__half, float>(t::sage_case{40, 6000, 60, 600, 4, false, 8}, quick);
  for (auto [rows, cols] : {std::pair<index_t, index_t>{37, 172}, {130, 384}, {4000, 1000}}) {
    check_q1_0<__half, float>(rows, cols, quick);
    check_q1_0<__nv_bfloat16, __nv_bfloat16>(rows, cols, quick);
  }
  for (auto [rows, cols] : {std::pair<index_t, index_t>{37, 172}, {130, 700}})
    for (sp::format::rtn_layout layout : {sp::format::rtn_layout{4, 64, false}, sp::format::rtn_layout{3, 1000, true}}) {
      check_rtn<__half, float>(rows, cols, layout, quick);
      check_rtn<__nv_bfloat16, __nv_bfloat16>(rows, cols, layout, quick);
    }
  for (sp::format::rtn_layout layout : {sp::format::rtn_layout{1, 32, false}, sp::format::rtn_layout{2, 128, true},
                                        sp::format::rtn_layout{5, 96, false}, sp::format::rtn_layout{6, 64, true},
                                        sp::format::rtn_layout{7, 256, false}, sp::format::rtn_layout{8, 32, false}})
    check_rtn<__half, float>(37, 172, layout, quick);
  check_rtn<float, float>(37, 172, sp::format::rtn_layout{4, 64, false}, quick);
  check_rtn<__half, __half>(130, 700, sp::format::rtn_layout{8, 128, true}, quick);
  if (!quick) check_rtn<__half, float>(4000, 4096, sp::format::rtn_layout{4, 128, false}, quick);
  check_stream_chain(quick);
  check_fused<__half, float>(quick);
  check_fused<__nv_bfloat16, __nv_bfloat16>(quick);
  check_rtn_detection(1);
  check_rtn_detection(8);
  check_detection<bit_decode_policy>(1);
  check_detection<g::sm90_fp16_policy>(1);
  check_detection<g::sm90_fp16_policy>(8);
  check_detection<g::sm90_policy>(1);
  check_detection<g::sm90_policy>(8);
  check_detection<planes8_policy>(1);
  check_detection<planes8_policy>(8);
  check_bad_arguments();
  std::printf("%s: %d of %d checks passed\n", failures == 0 ? "PASS" : "FAIL", checks - failures, checks);
  return failures == 0 ? 0 : 1;
}
