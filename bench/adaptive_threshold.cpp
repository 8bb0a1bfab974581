// Adaptive saliency threshold against the best single fixed threshold, matrix by matrix (issue 3, stage 7).
// For each of N seeded synthetic layers: the calibrated error tr((W-Q)H(W-Q)^T) of sage with its per-matrix search,
// and of sage restricted to one fixed threshold t (mu + t sigma); the fixed t for matrix i is the one with the lowest
// total relative error over the OTHER matrices (leave-one-out), so it is chosen without that matrix.
//
//   build/bin/adaptive_threshold [--matrices N] [--rows R] [--cols C] [--budget BPW] [--threads T]

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <sageptq/calib/hessian.hpp>
#include <sageptq/pipeline/sage.hpp>
#include <sageptq/synthetic/layer.hpp>

int main(int argc, char** argv) {
  int matrices = 8;
  sageptq::index_t rows = 512, cols = 1024;
  double budget = 1.1;
  unsigned threads = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--matrices")) matrices = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rows")) rows = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--cols")) cols = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--budget")) budget = std::atof(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) threads = static_cast<unsigned>(std::atoi(argv[i + 1]));
    else { std::fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
  }
  const sageptq::thread_executor exec(threads);
  const sageptq::pipeline::sage_config adaptive{.target_bpw = budget};
  const std::vector<double>& grid = adaptive.sigma_grid;

  // error[i][0] = adaptive, error[i][1 + k] = fixed threshold grid[k] (infinity when nothing fits the budget).
  std::vector<std::vector<double>> error(static_cast<std::size_t>(matrices));
  for (int i = 0; i < matrices; ++i) {
    sageptq::synthetic::layer_config lc;
    lc.rows = rows;
    lc.cols = cols;
    lc.samples = 2 * cols;
    lc.seed = 1000 + static_cast<std::uint64_t>(i);
    lc.weight_dof = 3 + i % 4;                                   // tails from heavy to moderate
    lc.outlier_channel_fraction = 0.002 * (1 + i % 5);           // 0.2% .. 1% outlier channels
    const auto layer = sageptq::synthetic::make_layer(lc);
    sageptq::calib::hessian_accumulator acc(cols);
    if (!acc.add_batch(layer.activation_view(), exec).ok()) return 1;
    auto factor = sageptq::calib::prepare(acc, {}, exec);
    if (!factor.has_value()) return 1;
    const auto run = [&](const sageptq::pipeline::sage_config& cfg) {
      auto q = sageptq::pipeline::quantize_sage(layer.weight_view(), *factor, cfg, exec);
      return q.ok() ? q->report.relative_error : std::numeric_limits<double>::infinity();
    };
    auto& e = error[static_cast<std::size_t>(i)];
    e.push_back(run(adaptive));
    for (double t : grid) {
      sageptq::pipeline::sage_config fixed = adaptive;
      fixed.sigma_grid = {t};
      fixed.fraction_grid = {};
      e.push_back(run(fixed));
    }
  }

  std::printf("%d synthetic %lldx%lld layers, budget %.3f full bpw; relative output error sqrt(tr(EHE')/tr(WHW'))\n",
              matrices, static_cast<long long>(rows), static_cast<long long>(cols), budget);
  std::printf("%-7s %10s %10s %8s %10s\n", "matrix", "adaptive", "fixed_loo", "fixed_t", "gain_%");
  int wins = 0;
  double gain_sum = 0;
  for (int i = 0; i < matrices; ++i) {
    std::size_t best_k = 0;
    double best_total = std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < grid.size(); ++k) {
      double total = 0;
      for (int j = 0; j < matrices; ++j)
        if (j != i) total += error[static_cast<std::size_t>(j)][1 + k];
      if (total < best_total) best_total = total, best_k = k;
    }
    const double a = error[static_cast<std::size_t>(i)][0], f = error[static_cast<std::size_t>(i)][1 + best_k];
    const double gain = 100.0 * (f - a) / f;
    wins += a < f;
    gain_sum += gain;
    std::printf("%-7d %10.5f %10.5f %8.2f %10.2f\n", i, a, f, grid[best_k], gain);
  }
  std::printf("adaptive better on %d of %d matrices; mean gain %.2f%%\n", wins, matrices, gain_sum / matrices);
  return wins == matrices ? 0 : 1;
}
