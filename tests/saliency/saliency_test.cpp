#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include <sageptq/core/random.hpp>
#include <sageptq/saliency/split.hpp>

using namespace sageptq;

namespace {

struct problem {
  index_t rows, cols;
  std::vector<float> w, q0, u;
  [[nodiscard]] matrix_view<const float> weights() const { return make_matrix_view(w.data(), rows, cols); }
  [[nodiscard]] matrix_view<const float> reference() const { return make_matrix_view(q0.data(), rows, cols); }
  [[nodiscard]] vector_view<const float> u_diag() const { return make_vector_view(u.data(), cols); }
};

problem make_problem(index_t rows, index_t cols, std::uint64_t seed) {
  random_generator rng(seed);
  problem p{rows, cols, {}, {}, {}};
  for (index_t i = 0; i < rows * cols; ++i) {
    const float w = static_cast<float>(0.02 * rng.student_t(4));
    p.w.push_back(w);
    p.q0.push_back(std::round(w / 0.01f) * 0.01f);  // some reference grid
  }
  for (index_t c = 0; c < cols; ++c) p.u.push_back(static_cast<float>(0.1 + rng.uniform()));
  return p;
}

// A metric the library does not know: |w| times a per-output-channel gain it carries itself.
struct row_gain_metric {
  std::vector<double> gain;
  [[nodiscard]] double score(const saliency::element& e) const {
    return std::fabs(static_cast<double>(e.w)) * gain[static_cast<std::size_t>(e.row)];
  }
};
static_assert(saliency::metric<row_gain_metric>);
static_assert(!saliency::needs_u_diag_v<saliency::magnitude> && saliency::needs_u_diag_v<saliency::hessian>);
static_assert(saliency::needs_reference_v<saliency::rtn_error> && !saliency::needs_reference_v<saliency::hessian>);

}  // namespace

TEST_CASE("metric scores equal a plain reference at every granularity, for any thread count") {
  const auto p = make_problem(37, 53, 1);
  const auto plain = [&](int metric, index_t r, index_t c) {
    const double w = p.w[r * p.cols + c], u = p.u[c], d = w - p.q0[r * p.cols + c];
    return metric == 0 ? std::fabs(w) : metric == 1 ? w * w / (u * u) : d * d / (u * u);
  };
  const auto check = [&](const auto& m, int metric) {
    using saliency::granularity;
    for (const auto unit : {granularity::element, granularity::input_channel, granularity::output_channel}) {
      const auto s = saliency::score(m, p.weights(), unit, p.u_diag(), p.reference());
      const auto s3 = saliency::score(m, p.weights(), unit, p.u_diag(), p.reference(), thread_executor(3));
      REQUIRE(s.ok());
      REQUIRE(s3.ok());
      CHECK(s->values == s3->values);
      for (index_t r = 0; r < p.rows; ++r)
        for (index_t c = 0; c < p.cols; ++c)
          if (unit == granularity::element) CHECK(s->values[r * p.cols + c] == static_cast<float>(plain(metric, r, c)));
      if (unit == granularity::input_channel)
        for (index_t c = 0; c < p.cols; ++c) {
          double sum = 0;
          for (index_t r = 0; r < p.rows; ++r) sum += plain(metric, r, c);
          CHECK(s->values[c] == static_cast<float>(sum));
        }
      if (unit == granularity::output_channel)
        for (index_t r = 0; r < p.rows; ++r) {
          double sum = 0;
          for (index_t c = 0; c < p.cols; ++c) sum += plain(metric, r, c);
          CHECK(s->values[r] == static_cast<float>(sum));
        }
    }
  };
  check(saliency::magnitude{}, 0);
  check(saliency::hessian{}, 1);
  check(saliency::rtn_error{}, 2);
}

TEST_CASE("top-fraction split: exact count, highest scores, ties by index") {
  random_generator rng(7);
  saliency::unit_scores s{saliency::granularity::element, 20, 50, {}};
  for (int i = 0; i < 1000; ++i) s.values.push_back(static_cast<float>(rng.below(40)));  // many ties
  for (const double p : {0.0, 0.013, 0.1, 0.5, 1.0}) {
    const auto got = saliency::split(s, saliency::split_rule::top(p));
    REQUIRE(got.ok());
    std::vector<index_t> order(1000);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return s.values[a] > s.values[b]; });
    std::vector<index_t> expected(order.begin(), order.begin() + std::llround(p * 1000));
    std::sort(expected.begin(), expected.end());
    CHECK(got->indices == expected);
  }
}

TEST_CASE("mean + t sigma split equals the plain rule") {
  const auto p = make_problem(40, 64, 3);
  const auto s = saliency::score(saliency::magnitude{}, p.weights(), saliency::granularity::element);
  REQUIRE(s.ok());
  for (const double t : {-1.0, 0.0, 2.0, 3.0}) {
    double mean = 0, sq = 0;
    for (const float v : s->values) mean += v;
    mean /= static_cast<double>(s->values.size());
    for (const float v : s->values) sq += (v - mean) * (v - mean);
    const double threshold = mean + t * std::sqrt(sq / static_cast<double>(s->values.size()));
    std::vector<index_t> expected;
    for (index_t i = 0; i < static_cast<index_t>(s->values.size()); ++i)
      if (s->values[i] > threshold) expected.push_back(i);
    const auto got = saliency::split(*s, saliency::split_rule::sigmas(t));
    REQUIRE(got.ok());
    CHECK(got->indices == expected);
    CHECK(got->threshold == doctest::Approx(threshold));
  }
}

TEST_CASE("salient_set: contains, weight_count and dense_mask agree at every granularity") {
  using saliency::granularity;
  const auto p = make_problem(9, 13, 5);
  for (const auto unit : {granularity::element, granularity::input_channel, granularity::output_channel}) {
    const auto set = saliency::find_salient(saliency::hessian{}, p.weights(), unit, saliency::split_rule::top(0.2),
                                            p.u_diag());
    REQUIRE(set.ok());
    CHECK(std::is_sorted(set->indices.begin(), set->indices.end()));
    const auto mask = set->dense_mask();
    index_t count = 0;
    for (index_t r = 0; r < p.rows; ++r)
      for (index_t c = 0; c < p.cols; ++c) {
        CHECK(static_cast<bool>(mask[r * p.cols + c]) == set->contains(r, c));
        count += mask[r * p.cols + c];
      }
    CHECK(count == set->weight_count());
  }
}

TEST_CASE("a metric defined outside the library plugs in") {
  const auto p = make_problem(16, 24, 9);
  row_gain_metric m;
  for (index_t r = 0; r < p.rows; ++r) m.gain.push_back(r == 5 ? 100.0 : 1.0);
  const auto set = saliency::find_salient(m, p.weights(), saliency::granularity::output_channel,
                                          saliency::split_rule::top(1.0 / 16.0));
  REQUIRE(set.ok());
  CHECK(set->indices == std::vector<index_t>{5});
}

TEST_CASE("saliency rejects bad input with a clear status") {
  auto p = make_problem(4, 6, 11);
  const auto unit = saliency::granularity::element;
  CHECK(saliency::score(saliency::magnitude{}, make_matrix_view(p.w.data(), 0, 6), unit).code() ==
        status::invalid_shape);
  CHECK(saliency::score(saliency::hessian{}, p.weights(), unit, make_vector_view(p.u.data(), 5)).code() ==
        status::invalid_shape);
  CHECK(saliency::score(saliency::rtn_error{}, p.weights(), unit, p.u_diag(), make_matrix_view(p.q0.data(), 3, 6))
            .code() == status::invalid_shape);
  p.u[2] = 0.0f;
  CHECK(saliency::score(saliency::hessian{}, p.weights(), unit, p.u_diag()).code() == status::invalid_argument);
  p.u[2] = std::numeric_limits<float>::quiet_NaN();
  CHECK(saliency::score(saliency::hessian{}, p.weights(), unit, p.u_diag()).code() == status::non_finite_input);
  p.u[2] = 1.0f;
  p.q0[3] = std::numeric_limits<float>::infinity();
  CHECK(saliency::score(saliency::rtn_error{}, p.weights(), unit, p.u_diag(), p.reference()).code() ==
        status::non_finite_input);
  p.w[1] = std::numeric_limits<float>::quiet_NaN();
  const auto nan = saliency::score(saliency::magnitude{}, p.weights(), unit);
  CHECK(nan.code() == status::non_finite_input);
  CHECK(nan.message().find("(0, 1)") != std::string::npos);
  p.w[1] = 0.0f;
  const auto s = saliency::score(saliency::magnitude{}, p.weights(), unit);
  REQUIRE(s.ok());
  CHECK(saliency::split(*s, saliency::split_rule::top(1.5)).code() == status::invalid_argument);
  CHECK(saliency::split(*s, saliency::split_rule::sigmas(std::nan(""))).code() == status::invalid_argument);
  CHECK(saliency::split(saliency::unit_scores{}, saliency::split_rule::top(0.1)).code() == status::invalid_shape);
}
