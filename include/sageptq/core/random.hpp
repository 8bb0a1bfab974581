#pragma once
/// @file random.hpp
/// A seeded, platform-independent random generator (xoshiro256** seeded by splitmix64), and the few derived draws
/// the stages need. Integer and uniform draws are pure integer/IEEE arithmetic, identical on every platform and
/// compiler; `normal()` uses std::log/std::cos, so it is bit-identical wherever libm is (same C library).
/// Never use std::uniform_*_distribution for anything that reaches packed output: its algorithm is unspecified.

#include <cmath>
#include <cstdint>
#include <vector>

#include "../config.hpp"

SAGEPTQ_NAMESPACE_BEGIN

class random_generator {
 public:
  using result_type = std::uint64_t;

  explicit random_generator(std::uint64_t seed = 0) noexcept {
    std::uint64_t s = seed;
    for (auto& word : state_) word = splitmix64(s);
  }

  /// An independent stream for sub-task `stream` (e.g. one per matrix or per thread), stable under reordering.
  [[nodiscard]] static random_generator for_stream(std::uint64_t seed, std::uint64_t stream) noexcept {
    std::uint64_t s = seed ^ (0x9e3779b97f4a7c15ull * (stream + 1));
    return random_generator(splitmix64(s));
  }

  static constexpr result_type min() noexcept { return 0; }
  static constexpr result_type max() noexcept { return ~result_type{0}; }

  result_type operator()() noexcept {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }

  /// Uniform integer in [0, n), unbiased (Lemire's multiply-and-reject). n must be > 0.
  std::uint64_t below(std::uint64_t n) noexcept {
    SAGEPTQ_ASSERT(n > 0);
    std::uint64_t high, low;
    mul_64x64(n, high, low);
    if (low < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (low < threshold) mul_64x64(n, high, low);
    }
    return high;
  }

  /// Standard normal (Box-Muller; the second value is cached).
  double normal() noexcept {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1;
    do u1 = uniform(); while (u1 <= 0.0);
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    constexpr double two_pi = 6.283185307179586476925286766559;
    spare_ = r * std::sin(two_pi * u2);
    has_spare_ = true;
    return r * std::cos(two_pi * u2);
  }

  /// Student-t with `dof` degrees of freedom (heavy-tailed weights in synthetic layers).
  double student_t(int dof) noexcept {
    double chi2 = 0;
    for (int i = 0; i < dof; ++i) {
      const double z = normal();
      chi2 += z * z;
    }
    return normal() / std::sqrt(chi2 / dof);
  }

 private:
  // Full 128-bit product of a fresh draw and n, in portable 32-bit halves (no __int128).
  void mul_64x64(std::uint64_t n, std::uint64_t& high, std::uint64_t& low) noexcept {
    const std::uint64_t a = (*this)();
    const std::uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32, n_lo = n & 0xffffffffu, n_hi = n >> 32;
    const std::uint64_t lo_lo = a_lo * n_lo, hi_lo = a_hi * n_lo, lo_hi = a_lo * n_hi, hi_hi = a_hi * n_hi;
    const std::uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffu) + lo_hi;
    high = hi_hi + (hi_lo >> 32) + (cross >> 32);
    low = (cross << 32) | (lo_lo & 0xffffffffu);
  }
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
  static constexpr std::uint64_t splitmix64(std::uint64_t& s) noexcept {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  std::uint64_t state_[4]{};
  double spare_ = 0;
  bool has_spare_ = false;
};

/// `k` distinct indices from [0, n) in increasing order: a seeded subsample (Floyd's algorithm: k draws, n bits).
inline std::vector<std::uint64_t> sample_without_replacement(random_generator& rng, std::uint64_t n,
                                                             std::uint64_t k) {
  SAGEPTQ_ASSERT(k <= n);
  std::vector<bool> chosen(n, false);
  for (std::uint64_t j = n - k; j < n; ++j) {
    const std::uint64_t t = rng.below(j + 1);
    chosen[chosen[t] ? j : t] = true;
  }
  std::vector<std::uint64_t> out;
  out.reserve(k);
  for (std::uint64_t i = 0; i < n; ++i)
    if (chosen[i]) out.push_back(i);
  return out;
}

SAGEPTQ_NAMESPACE_END
