#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/core/random.hpp>

using namespace sageptq;

namespace {

std::vector<float> random_rows(index_t rows, index_t cols, std::uint64_t seed) {
  random_generator rng(seed);
  std::vector<float> x(static_cast<std::size_t>(rows * cols));
  for (auto& v : x) v = static_cast<float>(rng.normal());
  return x;
}

/// (2/N) Σ x xᵀ with plain loops in double.
std::vector<double> naive_hessian(const std::vector<float>& x, index_t rows, index_t cols) {
  std::vector<double> h(static_cast<std::size_t>(cols * cols), 0.0);
  for (index_t i = 0; i < cols; ++i)
    for (index_t j = 0; j < cols; ++j) {
      double s = 0;
      for (index_t r = 0; r < rows; ++r)
        s += static_cast<double>(x[static_cast<std::size_t>(r * cols + i)]) * x[static_cast<std::size_t>(r * cols + j)];
      h[static_cast<std::size_t>(i * cols + j)] = 2.0 * s / static_cast<double>(rows);
    }
  return h;
}

/// GPTQ's sequence with plain loops: L = chol(H), H⁻¹ = L⁻ᵀ L⁻¹, U = upper Cholesky factor of H⁻¹.
std::vector<double> naive_u(const Eigen::MatrixXd& h) {
  const index_t n = h.rows();
  auto at = [n](std::vector<double>& m, index_t r, index_t c) -> double& {
    return m[static_cast<std::size_t>(r * n + c)];
  };
  std::vector<double> l(static_cast<std::size_t>(n * n), 0.0), li(l.size(), 0.0), inv(l.size(), 0.0), u(l.size(), 0.0);
  for (index_t j = 0; j < n; ++j) {
    double d = h(j, j);
    for (index_t k = 0; k < j; ++k) d -= at(l, j, k) * at(l, j, k);
    at(l, j, j) = std::sqrt(d);
    for (index_t i = j + 1; i < n; ++i) {
      double s = h(i, j);
      for (index_t k = 0; k < j; ++k) s -= at(l, i, k) * at(l, j, k);
      at(l, i, j) = s / at(l, j, j);
    }
  }
  for (index_t c = 0; c < n; ++c)  // forward substitution L X = I
    for (index_t r = c; r < n; ++r) {
      double s = r == c ? 1.0 : 0.0;
      for (index_t k = c; k < r; ++k) s -= at(l, r, k) * at(li, k, c);
      at(li, r, c) = s / at(l, r, r);
    }
  for (index_t r = 0; r < n; ++r)
    for (index_t c = 0; c < n; ++c) {
      double s = 0;
      for (index_t k = std::max(r, c); k < n; ++k) s += at(li, k, r) * at(li, k, c);
      at(inv, r, c) = s;
    }
  for (index_t i = 0; i < n; ++i) {  // upper Cholesky: inv = Uᵀ U
    double d = at(inv, i, i);
    for (index_t k = 0; k < i; ++k) d -= at(u, k, i) * at(u, k, i);
    at(u, i, i) = std::sqrt(d);
    for (index_t j = i + 1; j < n; ++j) {
      double s = at(inv, i, j);
      for (index_t k = 0; k < i; ++k) s -= at(u, k, i) * at(u, k, j);
      at(u, i, j) = s / at(u, i, i);
    }
  }
  return u;
}

bool all_finite(const Eigen::MatrixXd& m) { return m.allFinite(); }

/// max |(Uᵀ U) H_perm − I|.
double inverse_residual(const calib::hessian_factor& f) {
  const index_t n = f.cols();
  Eigen::MatrixXd hp(n, n);
  for (index_t r = 0; r < n; ++r)
    for (index_t c = 0; c < n; ++c)
      hp(r, c) = f.h(f.perm[static_cast<std::size_t>(r)], f.perm[static_cast<std::size_t>(c)]);
  return ((f.u.transpose() * f.u) * hp - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff();
}

}  // namespace

TEST_CASE("hessian accumulator matches (2/N) sum x x^T for float, fp16 and bf16 rows") {
  const index_t rows = 300, cols = 70;
  const auto x = random_rows(rows, cols, 1);
  std::vector<fp16> xh;
  std::vector<bf16> xb;
  std::vector<float> xh_f, xb_f;  // what the 16-bit inputs hold
  for (float v : x) {
    xh.emplace_back(v);
    xb.emplace_back(v);
    xh_f.push_back(xh.back().to_float());
    xb_f.push_back(xb.back().to_float());
  }
  calib::hessian_accumulator a32(cols), a16(cols), ab16(cols);
  REQUIRE(a32.add_batch(make_matrix_view(x.data(), rows, cols)).ok());
  REQUIRE(a16.add_batch(make_matrix_view(xh.data(), rows, cols)).ok());
  REQUIRE(ab16.add_batch(make_matrix_view(xb.data(), rows, cols)).ok());
  const std::pair<const calib::hessian_accumulator*, std::vector<double>> cases[] = {
      {&a32, naive_hessian(x, rows, cols)},
      {&a16, naive_hessian(xh_f, rows, cols)},
      {&ab16, naive_hessian(xb_f, rows, cols)}};
  for (const auto& [acc, ref] : cases) {
    CHECK(acc->samples() == rows);
    double err = 0, scale = 0;
    for (index_t i = 0; i < cols; ++i)
      for (index_t j = 0; j < cols; ++j) {
        err = std::max(err, std::abs(acc->hessian()(i, j) - ref[static_cast<std::size_t>(i * cols + j)]));
        scale = std::max(scale, std::abs(ref[static_cast<std::size_t>(i * cols + j)]));
        CHECK(acc->hessian()(i, j) == acc->hessian()(j, i));  // exactly symmetric
      }
    CHECK(err <= 1e-12 * scale);
  }
}

TEST_CASE("hessian accumulator: batching changes nothing beyond rounding; threads change nothing at all") {
  const index_t rows = 600, cols = 300;  // > one 256-column tile
  const auto x = random_rows(rows, cols, 2);
  const auto all = make_matrix_view(x.data(), rows, cols);
  calib::hessian_accumulator once(cols), split(cols), threaded(cols);
  REQUIRE(once.add_batch(all).ok());
  index_t r0 = 0;
  for (index_t n : {1, 7, 100, 250, 242}) {
    REQUIRE(split.add_batch(all.block(r0, 0, n, cols)).ok());
    r0 += n;
  }
  REQUIRE(r0 == rows);
  REQUIRE(threaded.add_batch(all, thread_executor(2)).ok());
  CHECK(split.samples() == rows);
  const double scale = once.hessian().cwiseAbs().maxCoeff();
  CHECK((once.hessian() - split.hessian()).cwiseAbs().maxCoeff() <= 1e-13 * scale);
  CHECK((once.hessian() - split.hessian()).cwiseAbs().maxCoeff() > 0);  // the split really took another path
  CHECK(once.hessian() == threaded.hessian());

  auto f1 = calib::prepare(once, {}, inline_executor{});
  auto f2 = calib::prepare(once, {}, thread_executor(2));
  REQUIRE(f1.ok());
  REQUIRE(f2.ok());
  CHECK(f1->u == f2->u);
  CHECK(f1->h == f2->h);
}

TEST_CASE("hessian accumulator rejects bad batches and leaves its state unchanged") {
  const index_t cols = 8;
  calib::hessian_accumulator acc(cols);
  auto x = random_rows(5, cols, 3);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), 5, cols)).ok());
  const Eigen::MatrixXd before = acc.hessian();

  CHECK(acc.add_batch(make_matrix_view(x.data(), 5, cols - 1)).code() == status::invalid_shape);
  CHECK(acc.add_batch(make_matrix_view(x.data(), 0, cols)).code() == status::invalid_shape);
  x[13] = std::nanf("");
  CHECK(acc.add_batch(make_matrix_view(x.data(), 5, cols)).code() == status::non_finite_input);
  x[13] = INFINITY;
  CHECK(acc.add_batch(make_matrix_view(x.data(), 5, cols)).code() == status::non_finite_input);
  CHECK(acc.samples() == 5);
  CHECK(acc.hessian() == before);

  CHECK(calib::prepare(calib::hessian_accumulator(cols)).code() == status::invalid_argument);
  Eigen::MatrixXd bad = before;
  bad(2, 3) = NAN;
  CHECK(calib::prepare(bad).code() == status::non_finite_input);
  CHECK(calib::prepare(Eigen::MatrixXd(3, 4)).code() == status::invalid_shape);
  calib::prepare_options negative;
  negative.percdamp = -1;
  CHECK(calib::prepare(before, negative).code() == status::invalid_argument);
}

TEST_CASE("prepare: U matches GPTQ's cholesky(cholesky_inverse(cholesky(H)), upper) computed with plain loops") {
  const index_t rows = 400, cols = 40;
  const auto x = random_rows(rows, cols, 4);
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), rows, cols)).ok());
  for (bool act_order : {false, true}) {
    CAPTURE(act_order);
    calib::prepare_options opt;
    opt.act_order = act_order;
    auto f = calib::prepare(acc, opt);
    REQUIRE(f.ok());
    CHECK(f->dead_columns.empty());
    const double mean_diag = acc.hessian().diagonal().mean();
    CHECK(f->damping == doctest::Approx(0.01 * mean_diag).epsilon(1e-14));
    CHECK((f->h - acc.hessian() - f->damping * Eigen::MatrixXd::Identity(cols, cols)).cwiseAbs().maxCoeff() <=
          1e-15 * mean_diag);
    // U refers to the permuted damped H.
    Eigen::MatrixXd hp(cols, cols);
    for (index_t r = 0; r < cols; ++r)
      for (index_t c = 0; c < cols; ++c)
        hp(r, c) = f->h(f->perm[static_cast<std::size_t>(r)], f->perm[static_cast<std::size_t>(c)]);
    const auto ref = naive_u(hp);
    double err = 0;
    for (index_t r = 0; r < cols; ++r)
      for (index_t c = 0; c < cols; ++c) {
        err = std::max(err, std::abs(f->u(r, c) - ref[static_cast<std::size_t>(r * cols + c)]));
        if (c < r) CHECK(f->u(r, c) == 0.0);
      }
    CHECK(err <= 1e-10 * f->u.cwiseAbs().maxCoeff());
    CHECK(inverse_residual(*f) < 1e-10);
    if (act_order)
      for (index_t k = 1; k < cols; ++k)
        CHECK(acc.hessian()(f->perm[k - 1], f->perm[k - 1]) >= acc.hessian()(f->perm[k], f->perm[k]));
  }
}

TEST_CASE("prepare: the tiled factorization agrees with Eigen's dense GPTQ sequence over several tiles") {
  const index_t rows = 800, cols = 700;  // 3 tiles, the last partial
  const auto x = random_rows(rows, cols, 10);
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), rows, cols), thread_executor(2)).ok());
  auto f = calib::prepare(acc, {}, thread_executor(2));
  REQUIRE(f.ok());
  const Eigen::MatrixXd hinv = f->h.llt().solve(Eigen::MatrixXd::Identity(cols, cols));
  const Eigen::MatrixXd u = hinv.llt().matrixU();
  CHECK((f->u - u).cwiseAbs().maxCoeff() <= 1e-9 * u.cwiseAbs().maxCoeff());
  CHECK(inverse_residual(*f) < 1e-9);
}

TEST_CASE("prepare: dead columns are reported and set to 1, nothing turns NaN") {
  const index_t rows = 50, cols = 12;
  auto x = random_rows(rows, cols, 5);
  for (index_t r = 0; r < rows; ++r)
    x[static_cast<std::size_t>(r * cols + 3)] = x[static_cast<std::size_t>(r * cols + 9)] = 0;
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), rows, cols)).ok());
  auto f = calib::prepare(acc);
  REQUIRE(f.ok());
  CHECK(f->dead_columns == std::vector<index_t>{3, 9});
  // mean(diag) is taken after the dead diagonals became 1, as GPTQ does.
  Eigen::MatrixXd fixed = acc.hessian();
  fixed(3, 3) = fixed(9, 9) = 1;
  CHECK(f->damping == doctest::Approx(0.01 * fixed.diagonal().mean()));
  CHECK(f->h(3, 3) == doctest::Approx(1 + f->damping));
  CHECK(all_finite(f->u));
  CHECK(inverse_residual(*f) < 1e-10);
}

TEST_CASE("prepare: rank-deficient Hessians (duplicated columns, fewer samples than columns)") {
  const index_t rows = 20, cols = 64;  // rank <= 20
  auto x = random_rows(rows, cols, 6);
  for (index_t r = 0; r < rows; ++r)
    x[static_cast<std::size_t>(r * cols + 7)] = x[static_cast<std::size_t>(r * cols + 8)];
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), rows, cols)).ok());

  auto damped = calib::prepare(acc);  // 1% damping makes H positive definite: no issue to report
  REQUIRE(damped.ok());
  CHECK(all_finite(damped->u));
  CHECK(inverse_residual(*damped) < 1e-8);

  calib::prepare_options none;
  none.percdamp = 0;
  auto raised = calib::prepare(acc, none);
  CHECK(raised.code() == status::numerical_issue);
  REQUIRE(raised.has_value());
  CHECK(raised.message().find("raised to") != std::string::npos);
  CHECK(raised->damping_fraction > 0);
  CHECK(raised->damping == doctest::Approx(raised->damping_fraction * acc.hessian().diagonal().mean()));
  CHECK(all_finite(raised->u));
  CHECK(inverse_residual(*raised) < 1e-6);

  none.max_damping_raises = 0;
  auto failed = calib::prepare(acc, none);
  CHECK(failed.code() == status::numerical_issue);
  CHECK_FALSE(failed.has_value());
}

TEST_CASE("hessian_weighted_error equals tr((W - Q) H (W - Q)^T) computed with plain loops") {
  const index_t rows = 70, cols = 30;  // two row blocks
  const auto w = random_rows(rows, cols, 7);
  auto q = w;
  random_generator rng(8);
  for (auto& v : q) v += static_cast<float>(0.1 * rng.normal());
  const auto x = random_rows(100, cols, 9);
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), 100, cols)).ok());
  const Eigen::MatrixXd& h = acc.hessian();
  double ref = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t i = 0; i < cols; ++i)
      for (index_t j = 0; j < cols; ++j)
        ref += (static_cast<double>(w[static_cast<std::size_t>(r * cols + i)]) -
                q[static_cast<std::size_t>(r * cols + i)]) *
               h(i, j) *
               (static_cast<double>(w[static_cast<std::size_t>(r * cols + j)]) -
                q[static_cast<std::size_t>(r * cols + j)]);
  const matrix_view<const float> wv = make_matrix_view(w.data(), rows, cols),
                                 qv = make_matrix_view(q.data(), rows, cols);
  CHECK(calib::hessian_weighted_error(wv, qv, h) == doctest::Approx(ref).epsilon(1e-5));
  CHECK(calib::hessian_weighted_error(wv, qv, h, thread_executor(2)) == calib::hessian_weighted_error(wv, qv, h));
  CHECK(calib::hessian_weighted_error(wv, wv, h) == 0.0);
}

namespace {
/// A prepared factor of correlated activations (each channel leans on the one before it), column `dead` all zero.
calib::hessian_factor correlated_factor(index_t rows, index_t cols, index_t dead, bool act_order = false) {
  auto x = random_rows(rows, cols, 12);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 1; c < cols; ++c) {
      auto& v = x[static_cast<std::size_t>(r * cols + c)];
      v += 0.7f * x[static_cast<std::size_t>(r * cols + c - 1)];
    }
  for (index_t r = 0; r < rows; ++r) x[static_cast<std::size_t>(r * cols + dead)] = 0;
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), rows, cols)).ok());
  calib::prepare_options opt;
  opt.act_order = act_order;
  auto f = calib::prepare(acc, opt);
  REQUIRE(f.ok());
  return std::move(f).value();
}
}  // namespace

TEST_CASE("column_block_factor: the whole range is the factor itself; a block's h' is the Schur complement") {
  const index_t cols = 90, dead = 37;
  const auto f = correlated_factor(300, cols, dead);
  REQUIRE(f.dead_columns == std::vector<index_t>{dead});

  auto whole = calib::column_block_factor(f, 0, cols);
  REQUIRE(whole.ok());
  CHECK(whole->u == f.u);
  CHECK((whole->h - f.h).cwiseAbs().maxCoeff() <= 1e-12 * f.h.cwiseAbs().maxCoeff());
  CHECK(whole->dead_columns == f.dead_columns);
  CHECK(whole->damping == f.damping);
  CHECK(whole->damping_fraction == f.damping_fraction);
  // The triangular-inverse formula gives f.h back over the whole range too (up to rounding).
  Eigen::MatrixXd uinv = Eigen::MatrixXd::Identity(cols, cols);
  f.u.triangularView<Eigen::Upper>().solveInPlace(uinv);
  CHECK((uinv * uinv.transpose() - f.h).cwiseAbs().maxCoeff() <= 1e-10 * f.h.cwiseAbs().maxCoeff());

  struct block {
    index_t begin, end;
    std::vector<index_t> dead;
  };
  for (const block& b : {block{0, 30, {}}, block{30, 60, {7}}, block{60, 90, {}}, block{36, 38, {1}}}) {
    CAPTURE(b.begin);
    CAPTURE(b.end);
    auto g = calib::column_block_factor(f, b.begin, b.end);
    REQUIRE(g.ok());
    const index_t nb = b.end - b.begin, nl = cols - b.end;
    CHECK(g->cols() == nb);
    CHECK(g->u == f.u.block(b.begin, b.begin, nb, nb));
    CHECK(g->h == g->h.transpose());
    CHECK(g->dead_columns == b.dead);
    CHECK(g->damping == f.damping);
    CHECK(g->perm.size() == static_cast<std::size_t>(nb));
    for (index_t k = 0; k < nb; ++k) CHECK(g->perm[static_cast<std::size_t>(k)] == k);
    // H_bb − H_bL H_LL⁻¹ H_Lb from the damped H, with a general solver.
    Eigen::MatrixXd schur = f.h.block(b.begin, b.begin, nb, nb);
    if (nl > 0)
      schur -= f.h.block(b.begin, b.end, nb, nl) *
               f.h.block(b.end, b.end, nl, nl).llt().solve(f.h.block(b.end, b.begin, nl, nb));
    CHECK((g->h - schur).cwiseAbs().maxCoeff() <= 1e-9 * schur.cwiseAbs().maxCoeff());
    // The conditioning is not a no-op: a block followed by correlated columns has h' below H_bb.
    if (nl > 0) CHECK((f.h.block(b.begin, b.begin, nb, nb) - g->h).trace() > 0.01 * schur.trace());
    CHECK((g->u.transpose() * g->u * g->h - Eigen::MatrixXd::Identity(nb, nb)).cwiseAbs().maxCoeff() < 1e-9);
  }
}

TEST_CASE("column_block_factor rejects act order and empty or out-of-range blocks") {
  const auto f = correlated_factor(200, 40, 5);
  for (const auto& range : {std::pair<index_t, index_t>{0, 0}, {10, 10}, {12, 11}, {-1, 5}, {30, 41}, {40, 40}}) {
    const index_t b = range.first, e = range.second;  // not a structured binding: CAPTURE's lambda captures them
    CAPTURE(b);
    CAPTURE(e);
    auto g = calib::column_block_factor(f, b, e);
    CHECK(g.code() == status::invalid_argument);
    CHECK_FALSE(g.has_value());
  }
  const auto act = correlated_factor(200, 40, 5, true);
  REQUIRE_FALSE(std::is_sorted(act.perm.begin(), act.perm.end()));  // not the identity order
  auto g = calib::column_block_factor(act, 0, 40);
  CHECK(g.code() == status::invalid_argument);
  CHECK(g.message().find("act order") != std::string::npos);
}
