#pragma once
/// @file hessian.hpp
/// Calibration statistics of one linear layer, as GPTQ, BiLLM and SEPTQ compute them.
///
///  - `hessian_accumulator`: H = (2/N) Σ x xᵀ over calibration rows x (the layer's inputs), in double, updated as a
///    running average exactly like GPTQ's `add_batch` (H *= n/(n+t); n += t; H += (2/n) XᵀX), so H is valid after
///    every batch and does not depend on how the rows were batched, up to rounding.
///  - `prepare`: dead columns (H_jj = 0) get H_jj = 1 and are reported (the caller, or compensate::gptq, zeroes
///    W[:, j]); damping λ = percdamp · mean(diag H) on the diagonal, raised ×10 while the Cholesky factorization
///    fails; optional act-order permutation; and U, the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), the matrix GPTQ
///    obtains as cholesky(cholesky_inverse(cholesky(H)), upper=True).
///  - `column_block_factor`: the factor of a block of columns once the columns before it are fixed and those after it
///    are compensated (block GPTQ, pipeline/column_runs.hpp).
///  - `hessian_weighted_error(W, Q, H)` = tr((W−Q) H (W−Q)ᵀ), the calibrated error every stage minimizes.
///
/// Threading: products run over fixed tiles (rows of W, tiles of H, column blocks of U) on the caller's executor;
/// each tile is computed the same way whoever runs it, so results are bit-identical for every thread count.

#include <algorithm>
#include <cmath>
#include <iterator>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "../config.hpp"
#include "../core/executor.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_traits.hpp"
#include "../core/validate.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace calib {

namespace detail {
/// Tile edge of the parallel products. Fixed, so that the thread count cannot change any result.
inline constexpr index_t tile = 256;

inline index_t tiles(index_t n) { return (n + tile - 1) / tile; }

/// Rows per task of a product (rows x n) · (n x n): the right factor is packed once per task, so tall matrices
/// take more rows per task (256 from 8192 rows: packing was a quarter of the time at 64); a function of the shape
/// only, so that the thread count cannot change any result.
inline index_t product_block_rows(index_t rows) { return std::clamp<index_t>(rows / 32 / 64 * 64, 64, 256); }

/// Tile (i, j), j <= i, of a lower triangle of tiles numbered row by row.
inline std::pair<index_t, index_t> lower_tile(index_t task) {
  index_t i = 0;
  while ((i + 1) * (i + 2) / 2 <= task) ++i;
  return {i, task - i * (i + 1) / 2};
}

/// Right-looking tiled Cholesky of the lower triangle of `a`, in place (the strict upper triangle is left as it
/// was): factor a diagonal tile, solve the tiles below it, update the trailing lower triangle; the last two steps
/// run tile by tile on the executor. False when a pivot is not positive or below `min_relative_pivot` times its
/// diagonal entry.
template <class Exec>
bool cholesky_in_place(Eigen::MatrixXd& a, double min_relative_pivot, const Exec& exec) {
  const index_t n = a.rows(), nt = tiles(n);
  const Eigen::VectorXd diag = a.diagonal();
  const auto extent = [n](index_t t) { return std::min(tile, n - t * tile); };
  for (index_t k = 0; k < nt; ++k) {
    const index_t k0 = k * tile, nk = extent(k);
    auto akk = a.block(k0, k0, nk, nk);
    Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> llt(akk);
    if (llt.info() != Eigen::Success) return false;
    for (index_t i = k0; i < k0 + nk; ++i)
      if (!(a(i, i) * a(i, i) >= min_relative_pivot * diag(i))) return false;
    const index_t below = nt - k - 1;
    exec.parallel_for(below, [&](index_t t) {
      auto aik = a.block((k + 1 + t) * tile, k0, extent(k + 1 + t), nk);
      akk.template triangularView<Eigen::Lower>().transpose().template solveInPlace<Eigen::OnTheRight>(aik);
    });
    exec.parallel_for(below * (below + 1) / 2, [&](index_t task) {
      const auto [i, j] = lower_tile(task);
      const index_t i0 = (k + 1 + i) * tile, j0 = (k + 1 + j) * tile;
      a.block(i0, j0, extent(k + 1 + i), extent(k + 1 + j)).noalias() -=
          a.block(i0, k0, extent(k + 1 + i), nk) * a.block(j0, k0, extent(k + 1 + j), nk).transpose();
    });
  }
  return true;
}
}  // namespace detail

/// Streaming H = (2/N) Σ x xᵀ in double.
class hessian_accumulator {
 public:
  explicit hessian_accumulator(index_t cols) : h_(Eigen::MatrixXd::Zero(cols, cols)) {}

  [[nodiscard]] index_t cols() const noexcept { return h_.cols(); }
  [[nodiscard]] index_t samples() const noexcept { return samples_; }
  /// The current (2/N) Σ x xᵀ, full and exactly symmetric; zero before the first batch.
  [[nodiscard]] const Eigen::MatrixXd& hessian() const noexcept { return h_; }

  /// Add calibration rows (samples x cols; float, fp16, bf16 or any element `to_float` accepts).
  /// A batch with a NaN/Inf or the wrong width is rejected as a whole and leaves the accumulator unchanged.
  template <host_matrix_like Rows, executor Exec = inline_executor>
  outcome add_batch(const Rows& rows, const Exec& exec = {}) {
    const auto x = sageptq::view(rows);
    if (x.rows() <= 0 || x.cols() != cols())
      return fail(status::invalid_shape, "calibration batch is " + std::to_string(x.rows()) + " x " +
                                             std::to_string(x.cols()) + ", expected n x " + std::to_string(cols()) +
                                             " with n > 0");
    if (auto ok = check_finite_matrix(x, "calibration batch"); !ok) return ok;
    // Bounded conversion buffer (~128 MiB); each chunk is one running-average step, as a separate batch would be.
    const index_t chunk = std::max<index_t>(1, (index_t{1} << 24) / cols());
    for (index_t r0 = 0; r0 < x.rows(); r0 += chunk)
      add_rows(x.block(r0, 0, std::min(chunk, x.rows() - r0), cols()), exec);
    return {};
  }

 private:
  template <class View, class Exec>
  void add_rows(const View& x, const Exec& exec) {
    const index_t t = x.rows(), n = cols(), nt = detail::tiles(n);
    Eigen::MatrixXd xd(t, n);  // column-major: each column tile is contiguous for the products below
    exec.parallel_for(nt, [&](index_t tj) {
      for (index_t c = tj * detail::tile; c < std::min(n, (tj + 1) * detail::tile); ++c)
        for (index_t s = 0; s < t; ++s) xd(s, c) = static_cast<double>(to_float(x(s, c)));
    });
    const double keep = static_cast<double>(samples_) / static_cast<double>(samples_ + t);
    samples_ += t;
    const double scale = 2.0 / static_cast<double>(samples_);
    // One task per tile (i, j) of the lower triangle; it also writes the mirrored upper tile.
    exec.parallel_for(nt * (nt + 1) / 2, [&](index_t task) {
      const auto [i, j] = detail::lower_tile(task);
      const index_t i0 = i * detail::tile, j0 = j * detail::tile;
      const index_t ni = std::min(detail::tile, n - i0), nj = std::min(detail::tile, n - j0);
      auto hij = h_.block(i0, j0, ni, nj);
      hij = keep * hij + scale * (xd.middleCols(i0, ni).transpose() * xd.middleCols(j0, nj));
      if (i != j) {
        h_.block(j0, i0, nj, ni) = hij.transpose();
      } else {  // a product need not be bitwise symmetric: mirror the diagonal tile's lower half
        for (index_t c = 1; c < nj; ++c)
          for (index_t r = 0; r < c; ++r) hij(r, c) = hij(c, r);
      }
    });
  }

  Eigen::MatrixXd h_;
  index_t samples_ = 0;
};

struct prepare_options {
  double percdamp = 0.01;      ///< λ = percdamp · mean(diag H) (GPTQ's default 1%)
  bool act_order = false;      ///< process columns by descending diag H (GPTQ --act-order)
  int max_damping_raises = 8;  ///< ×10 raises of λ tried when the factorization fails
  /// A pivot below this fraction of its diagonal entry means the factor is made of rounding error (a singular H
  /// that floating point happened to keep positive): treated as a failed factorization.
  double min_relative_pivot = 1e-10;
};

/// What the compensation loop needs from the calibration statistics.
struct hessian_factor {
  Eigen::MatrixXd h;                  ///< damped H, original column order (dead diagonals set to 1, then + λ)
  Eigen::MatrixXd u;                  ///< upper Cholesky factor of H⁻¹ in working order: H_perm⁻¹ = uᵀu
  std::vector<index_t> perm;          ///< working column k is original column perm[k] (identity without act order)
  std::vector<index_t> dead_columns;  ///< original columns with H_jj = 0: their weights must be zeroed
  double damping = 0;                 ///< λ actually added to the diagonal
  double damping_fraction = 0;        ///< λ / mean(diag H)

  [[nodiscard]] index_t cols() const noexcept { return h.cols(); }
};

/// Prepare a Hessian given directly (symmetric, cols x cols). See the file comment for the steps.
/// @return the factor; status::numerical_issue with the factor when λ had to be raised (the message says to what);
///         invalid_shape / invalid_argument / non_finite_input for bad input; numerical_issue without a value if
///         no damping up to percdamp · 10^max_damping_raises made H positive definite.
template <executor Exec = inline_executor>
result<hessian_factor> prepare(const Eigen::MatrixXd& hessian, const prepare_options& opt = {}, const Exec& exec = {}) {
  const index_t n = hessian.rows();
  if (n <= 0 || hessian.cols() != n)
    return fail(status::invalid_shape, "Hessian must be square and non-empty, got " + std::to_string(hessian.rows()) +
                                           " x " + std::to_string(hessian.cols()));
  if (!(opt.percdamp >= 0) || opt.max_damping_raises < 0 || !(opt.min_relative_pivot >= 0))
    return fail(status::invalid_argument, "percdamp, max_damping_raises and min_relative_pivot must be >= 0");
  for (index_t c = 0; c < n; ++c)
    for (index_t r = 0; r < n; ++r)
      if (!is_finite(hessian(r, c)))
        return fail(status::non_finite_input,
                    "Hessian has a non-finite value at (" + std::to_string(r) + ", " + std::to_string(c) + ")");

  hessian_factor f;
  f.h = hessian;
  for (index_t j = 0; j < n; ++j)
    if (f.h(j, j) == 0.0) {
      f.h(j, j) = 1.0;
      f.dead_columns.push_back(j);
    }
  f.perm.resize(static_cast<std::size_t>(n));
  std::iota(f.perm.begin(), f.perm.end(), index_t{0});
  if (opt.act_order)  // stable: equal diagonals keep their column order
    std::stable_sort(f.perm.begin(), f.perm.end(), [&](index_t a, index_t b) { return f.h(a, a) > f.h(b, b); });

  // U = P L⁻¹ P with L = chol(P H_perm P) and P the reversal: UᵀU = P L⁻ᵀ L⁻¹ P = H_perm⁻¹ and U is upper with a
  // positive diagonal, hence the unique factor GPTQ computes, from one factorization and one triangular inverse.
  const double mean_diag = f.h.diagonal().mean();
  Eigen::MatrixXd l(n, n);
  double fraction = opt.percdamp;
  for (int raise = 0;; ++raise) {
    const double lambda = fraction * mean_diag;
    for (index_t c = 0; c < n; ++c)
      for (index_t r = 0; r < n; ++r) l(r, c) = f.h(f.perm[n - 1 - r], f.perm[n - 1 - c]);
    l.diagonal().array() += lambda;
    if (detail::cholesky_in_place(l, opt.min_relative_pivot, exec)) {
      f.damping = lambda;
      f.damping_fraction = fraction;
      break;
    }
    if (raise == opt.max_damping_raises)
      return fail(status::numerical_issue, "the damped Hessian is not positive definite even with damping " +
                                               std::to_string(fraction) + " x mean(diag H)");
    fraction = fraction > 0 ? 10 * fraction : 1e-6;
  }
  f.h.diagonal().array() += f.damping;

  // L⁻¹ column block by column block: L[j0:, j0:] X = I[j0:, j0:block], independent blocks.
  Eigen::MatrixXd linv = Eigen::MatrixXd::Zero(n, n);
  exec.parallel_for(detail::tiles(n), [&](index_t tj) {
    const index_t j0 = tj * detail::tile, nj = std::min(detail::tile, n - j0);
    auto x = linv.block(j0, j0, n - j0, nj);
    x.topRows(nj).setIdentity();
    l.bottomRightCorner(n - j0, n - j0).template triangularView<Eigen::Lower>().solveInPlace(x);
  });
  f.u = linv.reverse();

  if (f.damping_fraction != opt.percdamp)
    return {std::move(f), status::numerical_issue,
            "Cholesky of the damped Hessian failed with damping " + std::to_string(opt.percdamp) +
                " x mean(diag H); raised to " + std::to_string(f.damping_fraction) +
                " x mean(diag H) (lambda = " + std::to_string(f.damping) + ")"};
  return f;
}

/// Prepare the accumulated Hessian. invalid_argument when no sample was added.
template <executor Exec = inline_executor>
result<hessian_factor> prepare(const hessian_accumulator& acc, const prepare_options& opt = {}, const Exec& exec = {}) {
  if (acc.samples() == 0) return fail(status::invalid_argument, "no calibration rows were added to the Hessian");
  return prepare(acc.hessian(), opt, exec);
}

/// The factor of columns [begin, end) conditioned on the columns after them being compensated (GPTQ's view once
/// every column before `begin` is fixed): u' = u[begin:end, begin:end], h' = (u'^T u')^-1 (the Schur complement
/// H_bb - H_bL H_LL^-1 H_Lb), dead columns shifted into the block, damping carried over. Needs the identity column
/// order.
///
/// h' = u'⁻¹ u'⁻ᵀ from the triangular inverse of u', symmetrized. For a block that ends at the last column there is
/// nothing to condition on and h' = H_bb exactly (since H = U⁻¹ U⁻ᵀ with U⁻¹ upper): it is then copied from f.h,
/// which avoids the inverse's rounding, so that the whole range [0, cols) gives back f itself bit for bit.
/// @return the block's factor; invalid_argument for an empty range, one outside [0, cols) or an act-order factor;
///         invalid_shape for a factor whose u or perm does not match h.
inline result<hessian_factor> column_block_factor(const hessian_factor& f, index_t begin, index_t end) {
  const index_t n = f.cols();
  if (f.h.rows() != n || f.u.rows() != n || f.u.cols() != n || std::ssize(f.perm) != n)
    return fail(status::invalid_shape, "the Hessian factor's h, u and perm do not have the same size");
  if (begin < 0 || end > n || begin >= end)
    return fail(status::invalid_argument, "column block [" + std::to_string(begin) + ", " + std::to_string(end) +
                                              ") is empty or outside [0, " + std::to_string(n) + ")");
  for (index_t k = 0; k < n; ++k)
    if (f.perm[static_cast<std::size_t>(k)] != k)
      return fail(status::invalid_argument, "column_block_factor needs the identity column order; the factor was "
                                            "prepared in act order");
  const index_t nb = end - begin;
  hessian_factor out;
  out.u = f.u.block(begin, begin, nb, nb);
  if (end == n) {
    out.h = f.h.block(begin, begin, nb, nb);
  } else {
    Eigen::MatrixXd inv = Eigen::MatrixXd::Identity(nb, nb);
    out.u.triangularView<Eigen::Upper>().solveInPlace(inv);  // u'⁻¹, upper
    out.h = inv * inv.transpose();
  }
  out.h = 0.5 * (out.h + out.h.transpose()).eval();
  out.perm.resize(static_cast<std::size_t>(nb));
  std::iota(out.perm.begin(), out.perm.end(), index_t{0});
  for (index_t j : f.dead_columns)
    if (j >= begin && j < end) out.dead_columns.push_back(j - begin);
  out.damping = f.damping;
  out.damping_fraction = f.damping_fraction;
  return out;
}

/// tr((W−Q) H (W−Q)ᵀ) = Σ_rows e H eᵀ with e = w − q. The products run in float (a report metric, not a quantity
/// anything is solved from: relative error ~1e-6, and 4-8x faster than double at LLaMA widths); each row's sum is
/// accumulated in double. W and Q are rows x cols, H is cols x cols.
/// Rows run in fixed blocks on the executor and block sums are added in order: deterministic for any thread count.
template <host_matrix_like Weights, host_matrix_like Quantized, executor Exec = inline_executor>
double hessian_weighted_error(const Weights& weights, const Quantized& quantized, const Eigen::MatrixXd& h,
                              const Exec& exec = {}) {
  const auto w = sageptq::view(weights);
  const auto q = sageptq::view(quantized);
  SAGEPTQ_ASSERT(w.rows() == q.rows() && w.cols() == q.cols() && h.rows() == w.cols() && h.cols() == w.cols());
  const index_t block_rows = detail::product_block_rows(w.rows());
  const index_t blocks = (w.rows() + block_rows - 1) / block_rows;
  const Eigen::MatrixXf hf = h.cast<float>();
  std::vector<double> partial(static_cast<std::size_t>(blocks));
  exec.parallel_for(blocks, [&](index_t b) {
    const index_t r0 = b * block_rows, nr = std::min(block_rows, w.rows() - r0);
    Eigen::MatrixXf e(nr, w.cols());
    for (index_t r = 0; r < nr; ++r)
      for (index_t c = 0; c < w.cols(); ++c) e(r, c) = to_float(w(r0 + r, c)) - to_float(q(r0 + r, c));
    const Eigen::MatrixXf eh = e * hf;
    double sum = 0;
    for (index_t r = 0; r < nr; ++r) sum += static_cast<double>(eh.row(r).dot(e.row(r)));
    partial[static_cast<std::size_t>(b)] = sum;
  });
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

}  // namespace calib
SAGEPTQ_NAMESPACE_END
