#pragma once
/// @file layer.hpp
/// A seeded, LLM-like synthetic linear layer for demos, tests and benchmarks: heavy-tailed weights (Student-t),
/// a few outlier input channels whose weights are larger, and calibration activations that are correlated across
/// channels (a low-rank shared component) with a few outlier channels of large magnitude, as in real LLM layers.
/// The same seed gives the same matrices on every platform with the same libm (see core/random.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../core/random.hpp"
#include "../core/tensor_view.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace synthetic {

struct layer_config {
  index_t rows = 512;               ///< output channels
  index_t cols = 1024;              ///< input channels
  index_t samples = 512;            ///< calibration tokens (rows of X)
  int weight_dof = 4;               ///< Student-t degrees of freedom of the weights (smaller: heavier tails)
  float weight_scale = 0.02f;
  double outlier_channel_fraction = 0.01;  ///< input channels with outlier activations and larger weights
  float outlier_activation_gain = 20.0f;
  float outlier_weight_gain = 3.0f;
  index_t shared_rank = 8;          ///< rank of the component shared by all activation channels
  std::uint64_t seed = 0;
};

struct layer {
  index_t rows = 0, cols = 0, samples = 0;
  std::vector<float> weights;      ///< rows x cols, row-major
  std::vector<float> activations;  ///< samples x cols, row-major (one calibration token per row)
  std::vector<index_t> outlier_channels;

  [[nodiscard]] matrix_view<const float> weight_view() const noexcept {
    return make_matrix_view(weights.data(), rows, cols);
  }
  [[nodiscard]] matrix_view<const float> activation_view() const noexcept {
    return make_matrix_view(activations.data(), samples, cols);
  }
};

inline layer make_layer(const layer_config& cfg) {
  layer out;
  out.rows = cfg.rows;
  out.cols = cfg.cols;
  out.samples = cfg.samples;
  random_generator rng = random_generator::for_stream(cfg.seed, 0x5a6e);

  const auto n_outliers = static_cast<std::uint64_t>(
      std::max<double>(1.0, std::round(cfg.outlier_channel_fraction * static_cast<double>(cfg.cols))));
  for (auto c : sample_without_replacement(rng, static_cast<std::uint64_t>(cfg.cols), n_outliers))
    out.outlier_channels.push_back(static_cast<index_t>(c));

  std::vector<float> channel_gain(static_cast<std::size_t>(cfg.cols), 1.0f);
  for (auto c : out.outlier_channels) channel_gain[static_cast<std::size_t>(c)] = cfg.outlier_activation_gain;
  // Per-channel activation scale varies smoothly (log-normal), as RMS-normed hidden states do.
  for (auto& g : channel_gain) g *= static_cast<float>(std::exp(0.5 * rng.normal()));

  out.weights.resize(static_cast<std::size_t>(cfg.rows * cfg.cols));
  for (index_t r = 0; r < cfg.rows; ++r) {
    const double row_scale = std::exp(0.25 * rng.normal());  // output channels differ in scale
    for (index_t c = 0; c < cfg.cols; ++c)
      out.weights[static_cast<std::size_t>(r * cfg.cols + c)] =
          static_cast<float>(cfg.weight_scale * row_scale * rng.student_t(cfg.weight_dof));
  }
  for (auto c : out.outlier_channels)
    for (index_t r = 0; r < cfg.rows; ++r) out.weights[static_cast<std::size_t>(r * cfg.cols + c)] *= cfg.outlier_weight_gain;

  // X = (Z_shared * M + noise) scaled per channel.
  std::vector<float> mixing(static_cast<std::size_t>(cfg.shared_rank * cfg.cols));
  for (auto& m : mixing) m = static_cast<float>(rng.normal());
  out.activations.resize(static_cast<std::size_t>(cfg.samples * cfg.cols));
  std::vector<float> z(static_cast<std::size_t>(cfg.shared_rank));
  for (index_t s = 0; s < cfg.samples; ++s) {
    for (auto& v : z) v = static_cast<float>(rng.normal());
    for (index_t c = 0; c < cfg.cols; ++c) {
      float shared = 0;
      for (index_t k = 0; k < cfg.shared_rank; ++k)
        shared += z[static_cast<std::size_t>(k)] * mixing[static_cast<std::size_t>(k * cfg.cols + c)];
      const float x = 0.6f * shared / std::sqrt(static_cast<float>(std::max<index_t>(1, cfg.shared_rank))) +
                      0.8f * static_cast<float>(rng.normal());
      out.activations[static_cast<std::size_t>(s * cfg.cols + c)] = x * channel_gain[static_cast<std::size_t>(c)];
    }
  }
  return out;
}

}  // namespace synthetic
SAGEPTQ_NAMESPACE_END
