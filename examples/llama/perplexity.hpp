#pragma once
// Perplexity with the protocol of ../shared/README.md: with n tokens there are (n - 1) div context windows; window w
// feeds tokens [context*w, context*w + context) from position 0 (a fresh cache) and is scored on the next token of
// each, targets [context*w + 1, context*w + context + 1). Perplexity = exp(mean negative log-likelihood over all
// targets). Log-softmax and the sums run in double; windows are summed in order, so the result does not depend on
// the thread count.

#include <sageptq/core/status.hpp>
#include <sageptq/io/tokens.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model.hpp"

namespace llama {

struct perplexity_options {
  index_t context = 512;
  index_t max_windows = 0;                                 ///< 0: every window
  std::function<void(index_t done, index_t total)> progress;  ///< called after each window
};

struct perplexity_result {
  double perplexity = 0;
  double mean_nll = 0;
  index_t windows = 0;
  index_t targets = 0;
};

/// invalid_argument when the context exceeds max_position_embeddings, a token id is outside the vocabulary, or
/// there are fewer than context + 1 tokens.
inline result<perplexity_result> evaluate_perplexity(const model& m, std::span<const std::uint16_t> tokens,
                                                     const perplexity_options& options, const thread_executor& exec) {
  const auto& cfg = m.config();
  const index_t context = options.context;
  if (context < 1 || context > cfg.max_position_embeddings)
    return sageptq::fail(status::invalid_argument, "context " + std::to_string(context) + " is not in [1, " +
                                                       std::to_string(cfg.max_position_embeddings) + "]");
  if (auto checked = sageptq::io::check_token_ids(tokens, static_cast<std::uint32_t>(cfg.vocab_size)); !checked.ok())
    return checked;
  index_t windows = (static_cast<index_t>(tokens.size()) - 1) / context;
  if (options.max_windows > 0) windows = std::min(windows, options.max_windows);
  if (windows < 1)
    return sageptq::fail(status::invalid_argument, std::to_string(tokens.size()) + " tokens do not fill one window of " +
                                                       std::to_string(context) + " plus its last target");

  kv_cache cache(cfg, context);
  std::vector<float> logits(static_cast<std::size_t>(context * cfg.vocab_size));
  const auto logits_view = sageptq::make_matrix_view(logits.data(), context, cfg.vocab_size);
  double total_nll = 0;
  for (index_t w = 0; w < windows; ++w) {
    cache.clear();
    m.forward(tokens.subspan(static_cast<std::size_t>(w * context), static_cast<std::size_t>(context)), cache,
              logits_view, exec);
    for (index_t i = 0; i < context; ++i) {
      const float* row = &logits_view(i, 0);
      const float max_logit = *std::max_element(row, row + cfg.vocab_size);
      double sum = 0;
      for (index_t c = 0; c < cfg.vocab_size; ++c) sum += std::exp(static_cast<double>(row[c]) - max_logit);
      const std::uint16_t target = tokens[static_cast<std::size_t>(w * context + i + 1)];
      total_nll += std::log(sum) + max_logit - row[target];
    }
    if (options.progress) options.progress(w + 1, windows);
  }
  perplexity_result out;
  out.windows = windows;
  out.targets = windows * context;
  out.mean_nll = total_nll / static_cast<double>(out.targets);
  out.perplexity = std::exp(out.mean_nll);
  return out;
}

}  // namespace llama
