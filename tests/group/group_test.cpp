#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <sageptq/graph/builder.hpp>
#include <sageptq/group/estimators.hpp>
#include <sageptq/group/search.hpp>
#include <sageptq/synthetic/layer.hpp>

using namespace sageptq;

namespace {

// n points from `groups` unit Gaussians whose means are `separation` sigmas apart along the first axis.
std::vector<double> mixture(int groups, double separation, int dims, std::size_t n, std::uint64_t seed) {
  random_generator rng(seed);
  std::vector<double> c;
  for (std::size_t i = 0; i < n; ++i) {
    const auto g = static_cast<double>(rng.below(static_cast<std::uint64_t>(groups)));
    for (int d = 0; d < dims; ++d) c.push_back((d == 0 ? g * separation : 0.0) + rng.normal());
  }
  return c;
}

graph::csr_graph mixture_graph(int groups, double separation, int dims, std::uint64_t seed, std::size_t n = 1200) {
  const auto c = mixture(groups, separation, dims, n, seed);
  const auto nn = graph::knn(c, dims, 10);
  REQUIRE(nn.ok());
  return graph::symmetric_graph(*nn, graph::edge_weighting::self_tuning_gaussian,
                                dims == 1 ? graph::chain_edges_1d(c) : std::vector<graph::edge>{});
}

// Plain O(g n²) dynamic programme for the optimal 1-D partition cost.
double brute_force_partition_cost(const std::vector<double>& x, const std::vector<double>& w, int groups) {
  const std::size_t n = x.size();
  auto cost = [&](std::size_t a, std::size_t b) {
    double s0 = 0, s1 = 0;
    for (std::size_t i = a; i < b; ++i) s0 += w[i], s1 += w[i] * x[i];
    double c = 0;
    for (std::size_t i = a; i < b; ++i) c += w[i] * (x[i] - s1 / s0) * (x[i] - s1 / s0);
    return s0 > 0 ? c : 0.0;
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> prev(n + 1, inf), cur(n + 1, inf);
  for (std::size_t i = 1; i <= n; ++i) prev[i] = cost(0, i);
  for (int g = 1; g < std::min<int>(groups, static_cast<int>(n)); ++g) {
    std::fill(cur.begin(), cur.end(), inf);
    for (std::size_t i = 1; i <= n; ++i)
      for (std::size_t j = 1; j < i; ++j) cur[i] = std::min(cur[i], prev[j] + cost(j, i));
    std::swap(prev, cur);
  }
  return prev[n];
}

struct layer_fixture {
  synthetic::layer layer;
  std::vector<std::uint8_t> salient;
  explicit layer_fixture(std::uint64_t seed, index_t rows = 48, index_t cols = 96) {
    synthetic::layer_config cfg;
    cfg.rows = rows;
    cfg.cols = cols;
    cfg.samples = 8;
    cfg.seed = seed;
    layer = synthetic::make_layer(cfg);
    saliency::salient_set set{saliency::granularity::input_channel, rows, cols, layer.outlier_channels, 0.0};
    std::sort(set.indices.begin(), set.indices.end());
    salient = set.dense_mask();
  }
  [[nodiscard]] matrix_view<const float> w() const { return layer.weight_view(); }
};

}  // namespace

TEST_CASE("optimal_partition_1d equals a brute-force DP on weighted data with duplicates") {
  random_generator rng(1);
  for (int trial = 0; trial < 20; ++trial) {
    const auto n = static_cast<std::size_t>(1 + rng.below(40));
    std::vector<double> x(n), w(n);
    for (auto& v : x) v = static_cast<double>(rng.below(12)) * 0.5;
    std::sort(x.begin(), x.end());
    for (auto& v : w) v = 0.5 + rng.uniform();
    for (const int g : {1, 2, 3, 5, 8}) {
      const auto part = group::optimal_partition_1d(x, w, g);
      CHECK(part.ends.size() == std::min<std::size_t>(static_cast<std::size_t>(g), n));
      CHECK(part.ends.back() == static_cast<index_t>(n));
      CHECK(std::is_sorted(part.ends.begin(), part.ends.end()));
      CHECK(part.cost == doctest::Approx(brute_force_partition_cost(x, w, g)).epsilon(1e-9).scale(1.0));
    }
  }
}

TEST_CASE("estimators recover G on separated mixtures") {
  // 1-D, means 6 sigma apart: the cut estimator (the spectral and modularity ones cannot see a valley in 1-D kNN
  // graphs, where every point is already a bottleneck; they are checked in 2-D).
  for (const int groups : {1, 2, 3, 4}) {
    CAPTURE(groups);
    const auto g = mixture_graph(groups, 6.0, 1, 100 + groups, 4000);
    CHECK(group::estimate_groups(g, group::cut_components{}, 16)->groups == groups);
  }
  // 2-D, means 6 sigma apart along x: modularity and eigengap; the cut estimator from 8 sigma. Modularity splits a
  // single blob into a few communities (any split of a blob raises modularity a little), so G = 1 gets a bound.
  for (const int groups : {1, 2, 3, 4}) {
    CAPTURE(groups);
    const auto g6 = mixture_graph(groups, 6.0, 2, 200 + groups);
    const int communities = group::estimate_groups(g6, group::modularity{}, 16)->groups;
    if (groups == 1) CHECK(communities <= 3);
    else CHECK(communities == groups);
    const auto eig = group::estimate_groups(g6, group::eigengap{}, 16);
    CHECK(eig.ok());
    CHECK(eig->groups == groups);
    const auto g8 = mixture_graph(groups, 8.0, 2, 300 + groups);
    group::cut_components cut;
    cut.dims = 2;
    CHECK(group::estimate_groups(g8, cut, 16)->groups == groups);
  }
}

TEST_CASE("estimators stay within a loose bound on overlapping mixtures") {
  // Means 3.5 sigma apart: the density between two groups falls to ~43% of a peak. An estimator may see one group
  // or two, never more.
  const auto g1 = mixture_graph(2, 3.5, 1, 17);
  const auto g2 = mixture_graph(2, 3.5, 2, 18);
  group::cut_components cut2;
  cut2.dims = 2;
  for (const int got : {group::cut_components{}.count(g1, 16)->groups, cut2.count(g2, 16)->groups,
                        group::modularity{}.count(g2, 16)->groups, group::eigengap{}.count(g2, 16)->groups}) {
    CHECK(got >= 1);
    CHECK(got <= 2);
  }
}

TEST_CASE("eigengap: the Lanczos path and the dense path give the same spectrum") {
  const auto g = mixture_graph(3, 6.0, 2, 5, 900);
  group::eigengap dense, lanczos;
  dense.dense_limit = 4000;
  lanczos.dense_limit = 100;
  const auto a = dense.count(g, 8), b = lanczos.count(g, 8);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(a->spectrum.size() == b->spectrum.size());
  for (std::size_t i = 0; i < a->spectrum.size(); ++i) CHECK(b->spectrum[i] == doctest::Approx(a->spectrum[i]).epsilon(1e-6).scale(1e-6));
  CHECK(a->groups == b->groups);
}

TEST_CASE("same seed, same graph and same groups for any thread count") {
  const layer_fixture f(21);
  saliency::salient_set set{saliency::granularity::input_channel, 48, 96, f.layer.outlier_channels, 0.0};
  std::sort(set.indices.begin(), set.indices.end());
  graph::build_config bc;
  bc.max_points = 2000;
  bc.seed = 9;
  const auto a = graph::build(graph::features::value{}, f.w(), &set, bc);
  const auto b = graph::build(graph::features::value{}, f.w(), &set, bc, thread_executor(2));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->graph.targets == b->graph.targets);
  CHECK(a->graph.weights == b->graph.weights);
  for (int run = 0; run < 2; ++run) {
    const auto& g = (run == 0 ? a : b)->graph;
    static std::vector<index_t> cut_labels, modularity_labels;
    const auto cut = group::cut_components{}.count(g, 16);
    const auto mod = group::modularity{}.count(g, 16);
    REQUIRE(cut.ok());
    REQUIRE(mod.ok());
    if (run == 0) {
      cut_labels = cut->labels;
      modularity_labels = mod->labels;
    } else {
      CHECK(cut->labels == cut_labels);
      CHECK(mod->labels == modularity_labels);
    }
  }
  const auto e1 = group::eigengap{}.count(a->graph, 8), e2 = group::eigengap{}.count(b->graph, 8);
  CHECK(e1->spectrum == e2->spectrum);
  const auto q1 = group::fit(group::column_groups{}, f.w(), f.salient, 4);
  const auto q2 = group::fit(group::column_groups{}, f.w(), f.salient, 4);
  CHECK(q1->column_group == q2->column_group);
}

TEST_CASE("value groups: ids, scales = mean |w| of the group, bits and error are consistent") {
  const layer_fixture f(3);
  index_t unsalient = 0;
  for (const auto s : f.salient) unsalient += s == 0;
  for (const int groups : {1, 2, 3, 4, 7}) {
    CAPTURE(groups);
    const auto q = group::fit(group::value_groups{}, f.w(), f.salient, groups);
    REQUIRE(q.ok());
    REQUIRE(q->groups == groups);
    std::vector<double> sum(static_cast<std::size_t>(groups)), count(sum);
    double lo_prev = -1;
    for (int g = 0; g < groups; ++g) {
      double lo = std::numeric_limits<double>::infinity(), hi = 0;
      for (std::size_t p = 0; p < f.salient.size(); ++p)
        if (!f.salient[p] && q->weight_group[p] == g) {
          const double a = std::fabs(f.layer.weights[p]);
          lo = std::min(lo, a), hi = std::max(hi, a);
          sum[g] += a, count[g] += 1;
        }
      CHECK(lo > lo_prev);  // groups are |w| intervals, in order
      lo_prev = hi;
      CHECK(q->group_scale[g] == fp16(static_cast<float>(sum[g] / count[g])));
    }
    const auto b = group::bits(*q, unsalient);
    CHECK(b.sign_bits == static_cast<std::uint64_t>(unsalient));
    CHECK(b.group_id_bits == static_cast<std::uint64_t>(group::id_bits(groups) * unsalient));
    CHECK(b.scale_bits == static_cast<std::uint64_t>(16 * groups));
    // Decoding from (signs, ids, scales) gives sign(w)·α_id, and the error is the plain sum.
    const auto qw = group::dequantize(*q, f.w(), f.salient);
    double e = 0;
    for (std::size_t p = 0; p < qw.size(); ++p) {
      if (f.salient[p]) {
        CHECK(qw[p] == 0.0f);
        continue;
      }
      const float alpha = q->group_scale[q->weight_group[p]].to_float();
      CHECK(qw[p] == (f.layer.weights[p] >= 0 ? alpha : -alpha));
      e += (f.layer.weights[p] - static_cast<double>(qw[p])) * (f.layer.weights[p] - static_cast<double>(qw[p]));
    }
    CHECK(group::squared_error(*q, f.w(), f.salient) == doctest::Approx(e).epsilon(1e-12));
  }
  CHECK(group::id_bits(1) == 0);
  CHECK(group::id_bits(2) == 1);
  CHECK(group::id_bits(5) == 3);
}

TEST_CASE("column groups: per-column ids, shared scale = mean |w|, factorised scales lower the error") {
  const layer_fixture f(4, 64, 128);
  index_t unsalient = 0;
  for (const auto s : f.salient) unsalient += s == 0;
  const int groups = 4;
  group::column_groups shared{group::column_scales::shared, 4}, factorised{group::column_scales::row_times_group, 4},
      per_row{group::column_scales::per_row_group, 4};
  const auto qs = group::fit(shared, f.w(), f.salient, groups);
  const auto qf = group::fit(factorised, f.w(), f.salient, groups);
  const auto qr = group::fit(per_row, f.w(), f.salient, groups);
  REQUIRE(qs.ok());
  REQUIRE(qf.ok());
  REQUIRE(qr.ok());
  // Shared: β_g = mean |w| over the unsalient weights of the group's columns.
  for (int g = 0; g < groups; ++g) {
    double sum = 0, count = 0;
    for (index_t r = 0; r < 64; ++r)
      for (index_t c = 0; c < 128; ++c)
        if (!f.salient[r * 128 + c] && qs->column_group[c] == g) sum += std::fabs(f.layer.weights[r * 128 + c]), count += 1;
    CHECK(qs->group_scale[g].to_float() == doctest::Approx(sum / count).epsilon(1e-3));  // fp16 rounding
  }
  const double es = group::squared_error(*qs, f.w(), f.salient), ef = group::squared_error(*qf, f.w(), f.salient),
               er = group::squared_error(*qr, f.w(), f.salient);
  CHECK(ef < es);
  CHECK(er < es);
  // One G = 1 shared group is plain sign·mean|w|.
  const auto q1 = group::fit(shared, f.w(), f.salient, 1);
  double sum = 0;
  for (std::size_t p = 0; p < f.salient.size(); ++p)
    if (!f.salient[p]) sum += std::fabs(f.layer.weights[p]);
  CHECK(q1->group_scale[0] == fp16(static_cast<float>(sum / static_cast<double>(unsalient))));
  // Bits: ids once per column, scales as stored.
  const auto bf = group::bits(*qf, unsalient), br = group::bits(*qr, unsalient);
  CHECK(bf.group_id_bits == 2u * 128u);
  CHECK(bf.scale_bits == 16u * (64u + 4u));
  CHECK(br.scale_bits == 16u * 64u * 4u);
  CHECK(bf.full_bpw() == doctest::Approx(1.0 + (2.0 * 128 + 16.0 * 68) / static_cast<double>(unsalient)));
  // Decoding: α_r·β_g(c)·sign(w).
  const auto qw = group::dequantize(*qf, f.w(), f.salient);
  for (index_t r = 0; r < 64; r += 7)
    for (index_t c = 0; c < 128; c += 5) {
      if (f.salient[r * 128 + c]) continue;
      const float m = qf->row_scale[r].to_float() * qf->group_scale[qf->column_group[c]].to_float();
      CHECK(qw[r * 128 + c] == (f.layer.weights[r * 128 + c] >= 0 ? m : -m));
    }
}

TEST_CASE("search_groups: the curve, the objective and the chosen G agree") {
  const layer_fixture f(5);
  group::search_config cfg;
  cfg.max_groups = 6;
  const auto s = group::search_groups(group::column_groups{}, f.w(), f.salient, cfg);
  REQUIRE(s.ok());
  REQUIRE(s->curve.size() == 6u);
  for (const auto& p : s->curve) {
    CHECK(p.objective == doctest::Approx(std::log(p.squared_error) + p.bits.full_bpw() * std::log(4.0)));
    CHECK(s->at(s->best_groups).objective <= p.objective);
  }
  // Without a price on bits, value groups keep improving with G, and one stored bit costs 1 bpw.
  cfg.bits_exchange = 1.0;
  const auto v = group::search_groups(group::value_groups{}, f.w(), f.salient, cfg);
  REQUIRE(v.ok());
  CHECK(v->at(2).squared_error < v->at(1).squared_error);
  CHECK(v->at(2).bits.full_bpw() > v->at(1).bits.full_bpw() + 0.99);
  CHECK(v->at(v->best_groups).squared_error == std::min_element(v->curve.begin(), v->curve.end(), [](auto& a, auto& b) {
          return a.squared_error < b.squared_error;
        })->squared_error);
}

TEST_CASE("group stages reject bad input with a clear status") {
  layer_fixture f(6, 8, 16);
  CHECK(group::fit(group::value_groups{}, f.w(), f.salient, 0).code() == status::invalid_argument);
  CHECK(group::fit(group::column_groups{}, f.w(), f.salient, 300).code() == status::invalid_argument);
  CHECK(group::fit(group::column_groups{}, f.w(), std::vector<std::uint8_t>(5, 0), 2).code() == status::invalid_shape);
  CHECK(group::fit(group::value_groups{}, f.w(), std::vector<std::uint8_t>(8 * 16, 1), 2).code() ==
        status::invalid_shape);
  CHECK(group::fit(group::value_groups{}, make_matrix_view(f.layer.weights.data(), 0, 16), {}, 2).code() ==
        status::invalid_shape);
  f.layer.weights[3] = std::numeric_limits<float>::quiet_NaN();
  CHECK(group::fit(group::column_groups{}, f.w(), f.salient, 2).code() == status::non_finite_input);
  CHECK(group::search_groups(group::value_groups{}, f.w(), f.salient, {}).code() == status::non_finite_input);
  CHECK(group::search_groups(group::value_groups{}, f.w(), f.salient, {0, 4.0}).code() == status::invalid_argument);

  graph::csr_graph single;  // one node, no edges
  single.offsets = {0, 0};
  CHECK(group::cut_components{}.count(single, 4).code() == status::invalid_shape);
  const auto g = mixture_graph(2, 6.0, 2, 1, 200);
  CHECK(group::eigengap{}.count(g, 0).code() == status::invalid_argument);
  group::modularity bad;
  bad.resolution = -1;
  CHECK(bad.count(g, 4).code() == status::invalid_argument);
}
