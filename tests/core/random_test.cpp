// random_generator: pinned outputs (a silent change of the stream breaks reproducibility), an independent
// xoshiro256** reference, and statistical smoke tests of the derived draws.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include <sageptq/core/random.hpp>

using namespace sageptq;

namespace {

/// xoshiro256** seeded by splitmix64, written from the published reference code (Blackman & Vigna).
struct reference_xoshiro {
  std::uint64_t s[4];
  explicit reference_xoshiro(std::uint64_t seed) {
    for (auto& w : s) {
      std::uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      w = z ^ (z >> 31);
    }
  }
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s[1] * 5, 7) * 9;
    const std::uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
};

}  // namespace

TEST_CASE("random_generator: pinned first outputs of seeds 0 and 42") {
  // Computed once from this implementation and checked against the reference below; never update these
  // without a CHANGELOG entry: every stochastic stage's output depends on them.
  const std::uint64_t seed0[] = {0x99ec5f36cb75f2b4ull, 0xbf6e1f784956452aull, 0x1a5f849d4933e6e0ull,
                                 0x6aa594f1262d2d2cull};
  const std::uint64_t seed42[] = {0x15780b2e0c2ec716ull, 0x6104d9866d113a7eull, 0xae17533239e499a1ull,
                                  0xecb8ad4703b360a1ull};
  random_generator g0(0), g42(42);
  for (auto want : seed0) CHECK(g0() == want);
  for (auto want : seed42) CHECK(g42() == want);

  random_generator s = random_generator::for_stream(42, 3);
  CHECK(s() == 0x639fead32a7030fbull);
  CHECK(s() == 0x6332bd8142ed8c5full);

  random_generator h(42);
  CHECK(sample_without_replacement(h, 100, 5) == std::vector<std::uint64_t>{8, 36, 66, 91, 99});
}

TEST_CASE("random_generator: matches an independent xoshiro256** with splitmix64 seeding") {
  // The splitmix64 sequence from state 0 starts with this well-known value.
  CHECK(reference_xoshiro(0).s[0] == 0xe220a8397b1dcdafull);
  for (std::uint64_t seed : {0ull, 1ull, 42ull, 0xdeadbeefcafef00dull, ~0ull}) {
    random_generator g(seed);
    reference_xoshiro ref(seed);
    for (int i = 0; i < 1000; ++i) REQUIRE(g() == ref.next());
  }
  random_generator a(5), b(5);
  for (int i = 0; i < 100; ++i) REQUIRE(a() == b());
  static_assert(random_generator::min() == 0 && random_generator::max() == ~std::uint64_t{0});
}

TEST_CASE("random_generator: uniform() lies in [0, 1) and has the right mean") {
  random_generator g(1);
  double sum = 0;
  constexpr int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = g.uniform();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    sum += u;
  }
  CHECK(std::fabs(sum / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
}

TEST_CASE("random_generator: below(n) is in range and unbiased") {
  random_generator g(2);
  for (std::uint64_t n : {1ull, 2ull, 3ull, 7ull, 1000ull, (1ull << 63) + 1, ~0ull}) {
    for (int i = 0; i < 2000; ++i) REQUIRE(g.below(n) < n);
  }

  // Chi-square over 6 buckets (5 degrees of freedom; 30 is far beyond the 99.99% quantile of about 25.7).
  constexpr int draws = 60000;
  int counts[6] = {};
  for (int i = 0; i < draws; ++i) ++counts[g.below(6)];
  double chi2 = 0;
  for (int c : counts) chi2 += (c - draws / 6.0) * (c - draws / 6.0) / (draws / 6.0);
  CHECK(chi2 < 30.0);

  // n = 3 * 2^62: plain `x % n` would put 62.5% of the draws below n / 2; an unbiased draw puts 50% there.
  const std::uint64_t n = 3ull << 62;
  int low = 0;
  for (int i = 0; i < 20000; ++i) low += g.below(n) < n / 2;
  CHECK(std::fabs(low / 20000.0 - 0.5) < 0.02);
}

TEST_CASE("random_generator: normal() and student_t() have plausible moments") {
  random_generator g(3);
  constexpr int n = 100000;
  double sum = 0, sum2 = 0;
  for (int i = 0; i < n; ++i) {
    const double z = g.normal();
    sum += z;
    sum2 += z * z;
  }
  CHECK(std::fabs(sum / n) < 0.02);
  CHECK(std::fabs(sum2 / n - 1.0) < 0.03);

  double big = 0;  // Student-t with 4 degrees of freedom: P(|t| > 4) is about 1.6%, far above the normal's 0.006%
  for (int i = 0; i < 20000; ++i) big += std::fabs(g.student_t(4)) > 4.0;
  CHECK(big / 20000 > 0.008);
  CHECK(big / 20000 < 0.03);
}

TEST_CASE("random_generator::for_stream: deterministic and independent streams") {
  std::set<std::uint64_t> seen;
  for (std::uint64_t stream = 0; stream < 16; ++stream) {
    random_generator a = random_generator::for_stream(7, stream), b = random_generator::for_stream(7, stream);
    for (int i = 0; i < 256; ++i) {
      const std::uint64_t x = a();
      REQUIRE(x == b());
      seen.insert(x);
    }
  }
  CHECK(seen.size() == 16 * 256);  // no stream repeats another (or itself) in its first outputs

  // Different seeds give different streams for the same stream index, and a stream is not the plain seed.
  CHECK(random_generator::for_stream(7, 0)() != random_generator::for_stream(8, 0)());
  CHECK(random_generator::for_stream(7, 0)() != random_generator(7)());

  // Neighbouring streams are uncorrelated: the mean of u_a * u_b is 1/4.
  random_generator a = random_generator::for_stream(9, 0), b = random_generator::for_stream(9, 1);
  double sum = 0;
  for (int i = 0; i < 100000; ++i) sum += (a.uniform() - 0.5) * (b.uniform() - 0.5);
  CHECK(std::fabs(sum / 100000) < 5 * (1.0 / 12) / std::sqrt(100000.0));
}

TEST_CASE("sample_without_replacement: sorted, distinct, in range, deterministic, uniform") {
  for (std::uint64_t n : {1ull, 10ull, 1000ull}) {
    for (std::uint64_t k : {std::uint64_t{0}, std::uint64_t{1}, n / 2, n}) {
      random_generator g(n * 31 + k), h(n * 31 + k);
      const auto s = sample_without_replacement(g, n, k);
      CHECK(s.size() == k);
      CHECK(std::is_sorted(s.begin(), s.end()));
      CHECK(std::adjacent_find(s.begin(), s.end()) == s.end());
      CHECK(std::all_of(s.begin(), s.end(), [n](std::uint64_t i) { return i < n; }));
      CHECK(s == sample_without_replacement(h, n, k));
    }
  }
  random_generator g(11);
  int hits[10] = {};
  constexpr int trials = 6000;
  for (int t = 0; t < trials; ++t)
    for (auto i : sample_without_replacement(g, 10, 3)) ++hits[i];
  for (int c : hits) CHECK(std::fabs(c - trials * 0.3) < 5 * std::sqrt(trials * 0.3 * 0.7));
}
