// Group-count estimators against the searched G on synthetic layers and mixtures of known G: G, error, time.
// Build: g++ -std=c++20 -O2 -DNDEBUG -Iinclude -isystem /usr/include/eigen3 bench/group_estimators.cpp -lpthread
#include <chrono>
#include <cstdio>
#include <string>
#include <sageptq/graph/builder.hpp>
#include <sageptq/group/estimators.hpp>
#include <sageptq/group/search.hpp>
#include <sageptq/saliency/split.hpp>
#include <sageptq/synthetic/layer.hpp>
using namespace sageptq;
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct matrix { std::string name; index_t rows, cols; std::vector<float> w; };

static matrix column_scale_mixture(int G, std::uint64_t seed) {
  matrix m{"colscale-mix G=" + std::to_string(G) + " s" + std::to_string(seed), 512, 1024, {}};
  random_generator rng(seed);
  std::vector<int> cls(1024);
  for (auto& c : cls) c = static_cast<int>(rng.below(G));
  for (index_t r = 0; r < 512; ++r)
    for (index_t c = 0; c < 1024; ++c) m.w.push_back(static_cast<float>(0.02 * std::exp2(cls[c]) * rng.normal()));
  return m;
}
static matrix value_mixture(int G, std::uint64_t seed) {
  matrix m{"|w|-mix G=" + std::to_string(G) + " s" + std::to_string(seed), 512, 1024, {}};
  random_generator rng(seed);
  for (index_t i = 0; i < 512 * 1024; ++i) {
    const double mode = 0.01 * (1 + 8 * static_cast<double>(rng.below(G)));  // |w| modes 0.01, 0.09, 0.17
    const double a = mode + 0.00125 * rng.normal();                           // sigma 0.00125: 64 sigma apart
    m.w.push_back(static_cast<float>(rng.below(2) ? a : -a));
  }
  return m;
}

template <class Features, class Policy>
void run(const matrix& m, const Features& features, const Policy& policy, const char* policy_name) {
  const auto wv = make_matrix_view(static_cast<const float*>(m.w.data()), m.rows, m.cols);
  const auto salient = saliency::find_salient(saliency::magnitude{}, wv, saliency::granularity::input_channel,
                                              saliency::split_rule::top(0.01));
  const auto mask = salient->dense_mask();
  double t0 = now();
  group::search_config sc;
  sc.max_groups = 16;
  const auto s = group::search_groups(policy, wv, mask, sc);
  const double t_search = now() - t0;
  double wsq = 0;
  for (std::size_t p = 0; p < mask.size(); ++p) if (!mask[p]) wsq += double(m.w[p]) * m.w[p];
  const auto& best = s->at(s->best_groups);
  printf("| %-22s | %-16s | search (G=1..16) | %2d | 0 (rel.err %.4f, %.4f bpw) | %.3f s |\n", m.name.c_str(), policy_name,
         s->best_groups, std::sqrt(best.squared_error / wsq), best.bits.full_bpw(), t_search);
  t0 = now();
  graph::build_config bc;
  const auto g = graph::build(features, wv, &*salient, bc);
  const double t_graph = now() - t0;
  auto report = [&](const char* name, auto est) {
    const double t = now();
    const auto r = est.count(g->graph, 16);
    const double dt = now() - t;
    const auto& p = s->at(r->groups);
    printf("| %-22s | %-16s | %-16s | %2d | %+.2f%% (obj %+.3f)%s | %.3f s (+graph %.3f s) |\n", m.name.c_str(), policy_name, name,
           r->groups, 100 * (p.squared_error / best.squared_error - 1), p.objective - best.objective,
           r.ok() ? "" : " [no_convergence]", dt, t_graph);
  };
  group::cut_components cut;
  cut.dims = Features::dims;
  report("cut_components", cut);
  report("modularity", group::modularity{});
  report("eigengap", group::eigengap{});
}

int main() {
  printf("| config | policy | estimator | G | SE(G)/SE(G*) - 1 (objective diff) | time |\n|---|---|---|---|---|---|\n");
  for (auto [dof, seed] : {std::pair{4, 0}, std::pair{4, 1}, std::pair{3, 2}, std::pair{8, 3}}) {
    synthetic::layer_config cfg;
    cfg.rows = 512; cfg.cols = 1024; cfg.samples = 4; cfg.weight_dof = dof; cfg.seed = seed;
    const auto l = synthetic::make_layer(cfg);
    matrix m{"layer t" + std::to_string(dof) + " s" + std::to_string(seed), 512, 1024, l.weights};
    run(m, graph::features::value_and_column_scale{}, group::column_groups{}, "col a_r*b_g");
    run(m, graph::features::magnitude{}, group::value_groups{}, "value (|w|)");
  }
  for (int G : {2, 4}) run(column_scale_mixture(G, 7), graph::features::value_and_column_scale{}, group::column_groups{}, "col a_r*b_g");
  for (int G : {2, 3}) run(value_mixture(G, 8), graph::features::magnitude{}, group::value_groups{}, "value (|w|)");

  // Column scale modes at fixed G on one layer.
  synthetic::layer_config cfg;
  cfg.rows = 512; cfg.cols = 1024; cfg.samples = 4;
  const auto l = synthetic::make_layer(cfg);
  const auto wv = l.weight_view();
  const auto salient = saliency::find_salient(saliency::magnitude{}, wv, saliency::granularity::input_channel, saliency::split_rule::top(0.01));
  const auto mask = salient->dense_mask();
  index_t unsalient = 0; double wsq = 0;
  for (std::size_t p = 0; p < mask.size(); ++p) if (!mask[p]) ++unsalient, wsq += double(l.weights[p]) * l.weights[p];
  printf("\n| scales (layer t4 s0, 512x1024, 1%% salient columns excluded) | G | rel. Frobenius error | full bpw (binarized part) | fit time |\n|---|---|---|---|---|\n");
  for (int G : {1, 2, 4, 8, 16}) {
    for (auto [mode, name] : {std::pair{group::column_scales::shared, "column groups, shared beta_g"},
                              std::pair{group::column_scales::row_times_group, "column groups, alpha_r*beta_g"},
                              std::pair{group::column_scales::per_row_group, "column groups, alpha_{r,g}"}}) {
      const double t = now();
      const auto q = group::fit(group::column_groups{mode, 4}, wv, mask, G);
      const double dt = now() - t;
      printf("| %s | %d | %.4f | %.4f | %.3f s |\n", name, G, std::sqrt(group::squared_error(*q, wv, mask) / wsq), group::bits(*q, unsalient).full_bpw(), dt);
    }
    const double t = now();
    const auto q = group::fit(group::value_groups{}, wv, mask, G);
    const double dt = now() - t;
    printf("| value groups (|w| intervals) | %d | %.4f | %.4f | %.3f s |\n", G, std::sqrt(group::squared_error(*q, wv, mask) / wsq), group::bits(*q, unsalient).full_bpw(), dt);
  }
}
