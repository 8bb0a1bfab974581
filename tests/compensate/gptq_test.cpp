#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/compensate/gptq.hpp>
#include <sageptq/core/random.hpp>
#include <sageptq/synthetic/layer.hpp>

using namespace sageptq;

namespace {

struct problem {
  synthetic::layer layer;
  Eigen::MatrixXd hessian;  // undamped (2/N) Σ x xᵀ
  calib::hessian_factor factor;

  [[nodiscard]] matrix_view<const float> w() const { return layer.weight_view(); }
};

problem make_problem(index_t rows, index_t cols, index_t samples, std::uint64_t seed,
                     const calib::prepare_options& opt = {}, index_t dead_column = -1) {
  synthetic::layer_config cfg;
  cfg.rows = rows;
  cfg.cols = cols;
  cfg.samples = samples;
  cfg.seed = seed;
  problem p{synthetic::make_layer(cfg), {}, {}};
  if (dead_column >= 0)
    for (index_t s = 0; s < samples; ++s) p.layer.activations[static_cast<std::size_t>(s * cols + dead_column)] = 0;
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(p.layer.activation_view()).ok());
  p.hessian = acc.hessian();
  auto f = calib::prepare(acc, opt);
  REQUIRE(f.ok());
  p.factor = std::move(f).value();
  return p;
}

/// The GPTQ loop with plain loops and immediate (not lazy) updates, identity column order, min-max grids refitted
/// at every group start (group = cols: per row). Kept entries take the updated weight.
std::vector<float> scalar_gptq(const problem& p, int bits, index_t group, const std::vector<std::uint8_t>& keep,
                               double& loss) {
  const index_t rows = p.layer.rows, n = p.layer.cols;
  std::vector<float> w = p.layer.weights, q(w.size());
  loss = 0;
  for (index_t r = 0; r < rows; ++r) {
    float* row = w.data() + r * n;
    quant::uniform_grid grid;
    for (index_t i = 0; i < n; ++i) {
      if (i % group == 0) {
        float lo = row[i], hi = row[i];
        for (index_t c = i; c < std::min(n, i + group); ++c) lo = std::min(lo, row[c]), hi = std::max(hi, row[c]);
        grid = quant::fit_minmax_grid(lo, hi, bits, false);
      }
      float qi = grid.quantize(row[i]);
      if (!keep.empty() && keep[static_cast<std::size_t>(r * n + i)]) qi = row[i];
      const float err = (row[i] - qi) / static_cast<float>(p.factor.u(i, i));
      loss += static_cast<double>(err) * err;
      q[static_cast<std::size_t>(r * n + i)] = qi;
      for (index_t j = i + 1; j < n; ++j) row[j] -= err * static_cast<float>(p.factor.u(i, j));
    }
  }
  return q;
}

/// GPTQ's fasterquant transliterated into plain loops (one row at a time: rows never mix): lazy block updates, and
/// at each group start a min-max grid fitted on W[:, c:c+g] as the lazily updated W holds it.
std::vector<float> scalar_gptq_lazy(const problem& p, int bits, index_t group, index_t block) {
  const index_t rows = p.layer.rows, n = p.layer.cols;
  std::vector<float> q(p.layer.weights.size());
  for (index_t r = 0; r < rows; ++r) {
    std::vector<float> w(p.layer.weights.begin() + r * n, p.layer.weights.begin() + (r + 1) * n);
    quant::uniform_grid grid;
    for (index_t b0 = 0; b0 < n; b0 += block) {
      const index_t b1 = std::min(n, b0 + block);
      std::vector<float> w1(w.begin() + b0, w.begin() + b1), err(static_cast<std::size_t>(b1 - b0));
      for (index_t i = 0; i < b1 - b0; ++i) {
        const index_t col = b0 + i;
        if (col % group == 0) {
          float lo = w[col], hi = w[col];
          for (index_t c = col; c < std::min(n, col + group); ++c) lo = std::min(lo, w[c]), hi = std::max(hi, w[c]);
          grid = quant::fit_minmax_grid(lo, hi, bits, false);
        }
        const float qi = grid.quantize(w1[i]);
        q[static_cast<std::size_t>(r * n + col)] = qi;
        err[i] = (w1[i] - qi) / static_cast<float>(p.factor.u(col, col));
        for (index_t j = i + 1; j < b1 - b0; ++j) w1[j] -= err[i] * static_cast<float>(p.factor.u(col, b0 + j));
      }
      for (index_t j = b1; j < n; ++j)
        for (index_t i = 0; i < b1 - b0; ++i) w[j] -= err[i] * static_cast<float>(p.factor.u(b0 + i, j));
    }
  }
  return q;
}

std::vector<std::uint8_t> random_mask(index_t rows, index_t cols, double fraction, std::uint64_t seed) {
  random_generator rng(seed);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(rows * cols));
  for (auto& v : m) v = rng.uniform() < fraction;
  return m;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

}  // namespace

TEST_CASE("blocked GPTQ matches the plain GPTQ loop (scalar reference), with and without groups and masks") {
  const problem p = make_problem(12, 72, 256, 21);
  for (int bits : {2, 3})
    for (index_t group : {index_t{0}, index_t{32}})  // 32 = 2 blocks of 16: group starts are block starts
      for (bool masked : {false, true}) {
        CAPTURE(bits);
        CAPTURE(group);
        CAPTURE(masked);
        const auto keep = masked ? random_mask(12, 72, 0.1, 22) : std::vector<std::uint8_t>{};
        double ref_loss = 0;
        const auto ref = scalar_gptq(p, bits, group == 0 ? 72 : group, keep, ref_loss);
        compensate::gptq_options opt;
        opt.block_size = 16;
        if (masked) opt.keep = make_matrix_view(keep.data(), 12, 72);
        auto got = compensate::gptq_uniform(p.w(), p.factor, {bits, group, false, false, {}}, opt);
        REQUIRE(got.ok());
        CHECK(max_abs_diff(got->compensated.q, ref) <= 1e-6f);
        CHECK(got->compensated.loss == doctest::Approx(ref_loss).epsilon(1e-5));
        int code_mismatches = 0;
        for (index_t r = 0; r < 12; ++r)
          for (index_t c = 0; c < 72; ++c)
            if (!masked || !keep[static_cast<std::size_t>(r * 72 + c)])
              code_mismatches += got->codes.value(r, c) != got->compensated.q[static_cast<std::size_t>(r * 72 + c)];
        CHECK(code_mismatches == 0);
      }
}

TEST_CASE("groups starting inside a block are fitted as GPTQ fits them (on the lazily updated weights)") {
  const problem p = make_problem(12, 72, 256, 23);
  for (index_t group : {index_t{24}, index_t{40}}) {  // group starts in the middle of 16-column blocks
    CAPTURE(group);
    const auto ref = scalar_gptq_lazy(p, 2, group, 16);
    compensate::gptq_options opt;
    opt.block_size = 16;
    auto got = compensate::gptq_uniform(p.w(), p.factor, {2, group, false, false, {}}, opt);
    REQUIRE(got.ok());
    CHECK(max_abs_diff(got->compensated.q, ref) <= 1e-6f);
  }
}

TEST_CASE("GPTQ lowers the Hessian-weighted error of RTN with the same grids (20 synthetic layers)") {
  for (int bits : {2, 3}) {
    double gptq = 0, rtn = 0;
    int wins = 0;
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
      const problem p = make_problem(64, 256, 512, 100 + seed);
      const quant::uniform_config cfg{bits, 0, false, false, {}};
      auto q = compensate::gptq_uniform(p.w(), p.factor, cfg);
      auto r = quant::quantize_uniform(p.w(), cfg);
      REQUIRE(q.ok());
      REQUIRE(r.ok());
      CHECK(q->codes.grids.size() == r->grids.size());
      for (std::size_t i = 0; i < r->grids.size(); ++i) CHECK(q->codes.grids[i].scale == r->grids[i].scale);
      const auto rq = r->dequantize();
      const double eg =
          calib::hessian_weighted_error(p.w(), make_matrix_view(q->compensated.q.data(), 64, 256), p.hessian);
      const double er = calib::hessian_weighted_error(p.w(), make_matrix_view(rq.data(), 64, 256), p.hessian);
      gptq += eg / 20;
      rtn += er / 20;
      wins += eg < er;
    }
    CAPTURE(bits);
    CAPTURE(gptq / rtn);
    CHECK(gptq < 0.8 * rtn);
    CHECK(wins == 20);
  }
}

TEST_CASE("GPTQ loss equals tr((W0 - Q) H (W0 - Q)^T) with the damped H; dead columns are zeroed; act order") {
  for (bool act_order : {false, true}) {
    CAPTURE(act_order);
    calib::prepare_options popt;
    popt.act_order = act_order;
    const problem p = make_problem(64, 256, 512, 31, popt, 5);
    REQUIRE(p.factor.dead_columns == std::vector<index_t>{5});
    for (index_t group : {index_t{0}, index_t{64}}) {
      auto got = compensate::gptq_uniform(p.w(), p.factor, {2, group, false, false, {}});
      REQUIRE(got.ok());
      std::vector<float> w0 = p.layer.weights;
      for (index_t r = 0; r < 64; ++r) {
        w0[static_cast<std::size_t>(r * 256 + 5)] = 0;
        CHECK(got->compensated.q[static_cast<std::size_t>(r * 256 + 5)] == 0.0f);
      }
      const double trace = calib::hessian_weighted_error(
          make_matrix_view(w0.data(), 64, 256), make_matrix_view(got->compensated.q.data(), 64, 256), p.factor.h);
      CHECK(got->compensated.loss == doctest::Approx(trace).epsilon(1e-4));
      CHECK(got->compensated.perm == p.factor.perm);
      int mismatches = 0;  // codes and grids (GPTQ's g_idx under act order) reproduce Q
      for (index_t r = 0; r < 64; ++r)
        for (index_t c = 0; c < 256; ++c)
          mismatches += got->codes.value(r, c) != got->compensated.q[static_cast<std::size_t>(r * 256 + c)];
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("GPTQ masks: kept entries have zero error") {
  const problem p = make_problem(40, 64, 128, 41);
  const quant::uniform_config cfg{2, 0, false, false, {}};
  compensate::gptq_options opt;

  std::vector<std::uint8_t> all(40 * 64, 1);  // everything kept: no error, nothing moves, loss 0
  opt.keep = make_matrix_view(all.data(), 40, 64);
  auto kept = compensate::gptq_uniform(p.w(), p.factor, cfg, opt);
  REQUIRE(kept.ok());
  CHECK(kept->compensated.q == p.layer.weights);
  CHECK(kept->compensated.loss == 0.0);

  const auto some = random_mask(40, 64, 0.2, 42);
  opt.keep = make_matrix_view(some.data(), 40, 64);
  auto exact = compensate::gptq_uniform(p.w(), p.factor, cfg, opt);
  opt.keep_as = compensate::kept_precision::fp16;
  auto half = compensate::gptq_uniform(p.w(), p.factor, cfg, opt);
  REQUIRE(exact.ok());
  REQUIRE(half.ok());
  for (index_t r = 0; r < 40; ++r)
    for (index_t c = 0; c < 64; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * 64 + c);
      if (!some[i]) continue;
      if (c == 0) CHECK(exact->compensated.q[i] == p.layer.weights[i]);  // column 0 receives no update
      CHECK(static_cast<float>(fp16(half->compensated.q[i])) == half->compensated.q[i]);
    }
}

TEST_CASE("GPTQ output is bit-identical for 1 and 2 threads") {
  calib::prepare_options popt;
  popt.act_order = true;
  const problem p = make_problem(300, 200, 256, 51, popt);  // 3 row chunks
  const auto keep = random_mask(300, 200, 0.05, 52);
  compensate::gptq_options opt;
  opt.keep = make_matrix_view(keep.data(), 300, 200);
  opt.block_size = 64;
  const quant::uniform_config cfg{3, 48, false, true, {}};
  auto one = compensate::gptq_uniform(p.w(), p.factor, cfg, opt, inline_executor{});
  auto two = compensate::gptq_uniform(p.w(), p.factor, cfg, opt, thread_executor(2));
  REQUIRE(one.ok());
  REQUIRE(two.ok());
  CHECK(one->compensated.q == two->compensated.q);
  CHECK(one->compensated.loss == two->compensated.loss);
  CHECK(one->codes.codes == two->codes.codes);
  CHECK(one->codes.column_group == two->codes.column_group);
  for (std::size_t i = 0; i < one->codes.grids.size(); ++i)
    CHECK(one->codes.grids[i].scale == two->codes.grids[i].scale);
}

TEST_CASE("GPTQ rejects bad input") {
  const problem p = make_problem(8, 32, 64, 61);
  const quant::uniform_config cfg{2, 0, false, false, {}};
  std::vector<float> w = p.layer.weights;
  w[3] = INFINITY;
  CHECK(compensate::gptq_uniform(make_matrix_view(w.data(), 8, 32), p.factor, cfg).code() == status::non_finite_input);
  CHECK(compensate::gptq_uniform(make_matrix_view(p.layer.weights.data(), 16, 16), p.factor, cfg).code() ==
        status::invalid_shape);
  CHECK(compensate::gptq_uniform(p.w(), p.factor, {0, 0, false, false, {}}).code() == status::invalid_argument);
  compensate::gptq_options opt;
  opt.block_size = 0;
  CHECK(compensate::gptq_uniform(p.w(), p.factor, cfg, opt).code() == status::invalid_argument);
  std::vector<std::uint8_t> keep(8 * 31, 0);
  opt.block_size = 128;
  opt.keep = make_matrix_view(keep.data(), 8, 31);
  CHECK(compensate::gptq_uniform(p.w(), p.factor, cfg, opt).code() == status::invalid_shape);
  w[3] = 1e30f;  // finite, but no fp16 scale holds its range
  CHECK(compensate::gptq_uniform(make_matrix_view(w.data(), 8, 32), p.factor, cfg).code() == status::unsupported);
}

namespace {

/// A block-wise policy in BiLLM's manner: binarize each row of the whole block up front (α = mean |w| over the
/// block, q = α sign w) and propagate errors only after the block.
struct block_sign {
  static constexpr bool propagate_within_block = false;
  std::vector<float> q;  // rows x block width of the current block
  index_t begin = 0, width = 0;

  template <executor Exec>
  outcome begin_block(const compensate::block_context& ctx, const Exec& exec) {
    begin = ctx.begin;
    width = ctx.end - ctx.begin;
    q.assign(static_cast<std::size_t>(ctx.weights.rows() * width), 0.0f);
    exec.parallel_for(ctx.weights.rows(), [&](index_t r) {
      double sum = 0;
      for (index_t c = ctx.begin; c < ctx.end; ++c) sum += std::abs(ctx.weights(r, c));
      const auto alpha = static_cast<float>(sum / static_cast<double>(width));
      for (index_t c = 0; c < width; ++c)
        q[static_cast<std::size_t>(r * width + c)] = ctx.weights(r, ctx.begin + c) >= 0 ? alpha : -alpha;
    });
    return {};
  }
  void quantize_column(index_t col, index_t row_begin, std::span<const float> w, std::span<float> out) const {
    for (std::size_t i = 0; i < w.size(); ++i)
      out[i] = q[static_cast<std::size_t>((row_begin + static_cast<index_t>(i)) * width + col - begin)];
  }
};
static_assert(compensate::column_quantizer<block_sign>);

}  // namespace

TEST_CASE("block-wise policies (BiLLM's quantize-the-block-then-compensate) match a scalar reference") {
  const problem p = make_problem(10, 80, 200, 71);
  const index_t rows = 10, n = 80, block = 32;
  // Reference: BiLLM's loop with plain loops.
  std::vector<float> w = p.layer.weights, ref(w.size());
  for (index_t r = 0; r < rows; ++r) {
    float* row = w.data() + r * n;
    for (index_t b0 = 0; b0 < n; b0 += block) {
      const index_t b1 = std::min(n, b0 + block);
      double sum = 0;
      for (index_t c = b0; c < b1; ++c) sum += std::abs(row[c]);
      const auto alpha = static_cast<float>(sum / static_cast<double>(b1 - b0));
      for (index_t i = b0; i < b1; ++i) {
        const float qi = row[i] >= 0 ? alpha : -alpha;
        ref[static_cast<std::size_t>(r * n + i)] = qi;
        const float err = (row[i] - qi) / static_cast<float>(p.factor.u(i, i));
        for (index_t j = b1; j < n; ++j) row[j] -= err * static_cast<float>(p.factor.u(i, j));
      }
    }
  }
  block_sign policy;
  compensate::gptq_options opt;
  opt.block_size = block;
  auto got = compensate::gptq(p.w(), p.factor, policy, opt, thread_executor(2));
  REQUIRE(got.ok());
  CHECK(max_abs_diff(got->q, ref) <= 1e-6f);
}
