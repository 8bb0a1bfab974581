#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include <sageptq/graph/builder.hpp>
#include <sageptq/synthetic/layer.hpp>

using namespace sageptq;

namespace {

// Plain O(n² log n) reference: every other point, sorted by (squared distance, index), first k.
graph::knn_result brute_force_knn(const std::vector<double>& coords, int dims, int k) {
  const auto n = coords.size() / static_cast<std::size_t>(dims);
  graph::knn_result out{static_cast<index_t>(n), k, {}, {}};
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<std::pair<double, std::uint32_t>> all;
    for (std::size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      double d2 = 0;
      for (int d = 0; d < dims; ++d) {
        const double diff = coords[i * dims + d] - coords[j * dims + d];
        d2 += diff * diff;
      }
      all.emplace_back(d2, static_cast<std::uint32_t>(j));
    }
    std::sort(all.begin(), all.end());
    for (int t = 0; t < k; ++t) {
      out.distance2.push_back(all[t].first);
      out.index.push_back(all[t].second);
    }
  }
  return out;
}

// Coordinates from a small set of values (many exact duplicates, as bf16 weights have), or bf16-rounded normals.
std::vector<double> duplicate_heavy_points(std::size_t n, int dims, std::uint64_t seed, bool bf16_normals) {
  random_generator rng(seed);
  std::vector<double> c(n * static_cast<std::size_t>(dims));
  for (auto& v : c)
    v = bf16_normals ? round_to_bf16(static_cast<float>(rng.normal())) : static_cast<double>(rng.below(7)) * 0.25;
  return c;
}

}  // namespace

TEST_CASE("knn equals brute force with (distance, index) tie-breaking on duplicate-heavy data") {
  for (const int dims : {1, 2, 3})
    for (const bool bf16_normals : {false, true})
      for (const int k : {1, 5, 12}) {
        CAPTURE(dims);
        CAPTURE(bf16_normals);
        CAPTURE(k);
        const auto coords = duplicate_heavy_points(700, dims, 11u * dims + k, bf16_normals);
        const auto expected = brute_force_knn(coords, dims, k);
        for (const unsigned threads : {1u, 3u}) {
          const auto got = graph::knn(coords, dims, k, thread_executor(threads));
          REQUIRE(got.ok());
          CHECK(got->index == expected.index);
          CHECK(got->distance2 == expected.distance2);
        }
      }
}

TEST_CASE("knn rejects bad input with a clear status") {
  const std::vector<double> three{0.0, 1.0, 2.0};
  CHECK(graph::knn(three, 1, 3).code() == status::invalid_argument);  // k >= n
  CHECK(graph::knn(three, 1, 0).code() == status::invalid_argument);
  CHECK(graph::knn(three, 2, 1).code() == status::invalid_shape);     // not a multiple of dims
  CHECK(graph::knn({1.0}, 1, 1).code() == status::invalid_shape);     // one point
  CHECK(graph::knn({}, 1, 1).code() == status::invalid_shape);
  CHECK(graph::knn({0.0, std::nan(""), 2.0}, 1, 1).code() == status::non_finite_input);
  CHECK(graph::knn(three, 1, 2).ok());
}

TEST_CASE("the graph is symmetric, sorted, loop-free, and the union of the kNN edges") {
  const auto coords = duplicate_heavy_points(400, 2, 5, true);
  const auto nn = graph::knn(coords, 2, 6);
  REQUIRE(nn.ok());
  for (const auto weighting : {graph::edge_weighting::self_tuning_gaussian, graph::edge_weighting::inverse_distance}) {
    const auto g = graph::symmetric_graph(*nn, weighting);
    REQUIRE(g.node_count() == 400);
    auto find = [&](index_t i, index_t j) -> index_t {
      const auto first = g.targets.begin() + g.offsets[i], last = g.targets.begin() + g.offsets[i + 1];
      const auto it = std::lower_bound(first, last, j);
      return it != last && *it == j ? it - g.targets.begin() : -1;
    };
    for (index_t i = 0; i < 400; ++i) {
      CHECK(g.degree(i) >= 6);
      CHECK(std::is_sorted(g.targets.begin() + g.offsets[i], g.targets.begin() + g.offsets[i + 1]));
      for (index_t e = g.offsets[i]; e < g.offsets[i + 1]; ++e) {
        const index_t j = g.targets[e];
        REQUIRE(j != i);
        const index_t back = find(j, i);
        REQUIRE(back >= 0);
        CHECK(g.weights[back] == g.weights[e]);
        CHECK(g.lengths[back] == g.lengths[e]);
        CHECK(g.weights[e] > 0.0);
        CHECK(g.weights[e] <= 1.0);
        // An edge exists only if one endpoint lists the other among its k nearest.
        const auto in_knn = [&](index_t a, index_t b) {
          for (int t = 0; t < 6; ++t)
            if (nn->index[a * 6 + t] == static_cast<std::uint32_t>(b)) return true;
          return false;
        };
        CHECK((in_knn(i, j) || in_knn(j, i)));
      }
    }
    CHECK(g.edge_count() * 2 == static_cast<index_t>(g.targets.size()));
  }
}

TEST_CASE("graph::build: subsample of unsalient weights, deterministic for any thread count") {
  synthetic::layer_config cfg;
  cfg.rows = 64;
  cfg.cols = 96;
  cfg.seed = 3;
  const auto layer = synthetic::make_layer(cfg);
  // bf16-round the weights so that many values coincide.
  std::vector<bf16> w(layer.weights.size());
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = bf16(layer.weights[i]);
  const auto wv = make_matrix_view(static_cast<const bf16*>(w.data()), cfg.rows, cfg.cols);

  saliency::salient_set salient{saliency::granularity::input_channel, cfg.rows, cfg.cols, {3, 17, 50}, 0.0};
  graph::build_config bc;
  bc.max_points = 1500;
  bc.k = 8;
  bc.seed = 42;
  const auto a = graph::build(graph::features::value_and_row_scale{}, wv, &salient, bc);
  const auto b = graph::build(graph::features::value_and_row_scale{}, wv, &salient, bc, thread_executor(2));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->points.size() == 1500);
  CHECK(a->points.positions == b->points.positions);
  CHECK(a->points.coords == b->points.coords);
  CHECK(a->graph.offsets == b->graph.offsets);
  CHECK(a->graph.targets == b->graph.targets);
  CHECK(a->graph.weights == b->graph.weights);
  CHECK(std::is_sorted(a->points.positions.begin(), a->points.positions.end()));
  for (const index_t p : a->points.positions) CHECK(!salient.contains(p / cfg.cols, p % cfg.cols));
  // Features: (w / mean|w|, row mean|w| / mean|w|).
  double mean_abs = 0;
  for (const auto v : w) mean_abs += std::fabs(v.to_float());
  mean_abs /= static_cast<double>(w.size());
  const index_t p0 = a->points.positions[0];
  CHECK(a->points.coords[0] == doctest::Approx(w[p0].to_float() / mean_abs));

  bc.seed = 43;
  const auto c = graph::build(graph::features::value_and_row_scale{}, wv, &salient, bc);
  REQUIRE(c.ok());
  CHECK(c->points.positions != a->points.positions);

  // Fewer candidates than max_points: every unsalient weight becomes a node.
  bc.max_points = 1 << 20;
  const auto all = graph::build(graph::features::magnitude{}, wv, &salient, bc);
  REQUIRE(all.ok());
  CHECK(all->points.size() == cfg.rows * (cfg.cols - 3));
}

TEST_CASE("graph::build rejects bad input with a clear status") {
  std::vector<float> w(6 * 5, 0.5f);
  const auto wv = make_matrix_view(static_cast<const float*>(w.data()), 6, 5);
  graph::build_config bc;
  bc.k = 30;  // 30 points: k must be < 30
  CHECK(graph::build(graph::features::value{}, wv, nullptr, bc).code() == status::invalid_argument);
  bc.k = 4;
  CHECK(graph::build(graph::features::value{}, wv, nullptr, bc).ok());
  w[7] = std::numeric_limits<float>::infinity();
  CHECK(graph::build(graph::features::value{}, wv, nullptr, bc).code() == status::non_finite_input);
  w[7] = 0.5f;
  CHECK(graph::build(graph::features::value{}, make_matrix_view(w.data(), 0, 5), nullptr, bc).code() ==
        status::invalid_shape);
  saliency::salient_set every{saliency::granularity::output_channel, 6, 5, {0, 1, 2, 3, 4, 5}, 0.0};
  CHECK(graph::build(graph::features::value{}, wv, &every, bc).code() == status::invalid_shape);
  saliency::salient_set other{saliency::granularity::output_channel, 7, 5, {}, 0.0};
  CHECK(graph::build(graph::features::value{}, wv, &other, bc).code() == status::invalid_shape);
  bc.max_points = 0;
  CHECK(graph::build(graph::features::value{}, wv, nullptr, bc).code() == status::invalid_argument);
}
