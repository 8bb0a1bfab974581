// llama_perplexity MODEL_DIR TOKENS [MAX_WINDOWS] [THREADS]
// Perplexity of an f32 LLaMA checkpoint on a uint16 token file with the protocol of ../shared/README.md.
// Prints "ppl=<float> mean_nll=<float> windows=<int> threads=<int> seconds=<float>"; a progress line on stderr.

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "perplexity.hpp"

int main(int argc, char** argv) {
  if (argc < 3 || argc > 5) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TOKENS [MAX_WINDOWS] [THREADS]\n", argv[0]);
    return 2;
  }
  auto model = llama::model::load(argv[1]);
  if (!model.ok()) {
    std::fprintf(stderr, "%s: %s\n", sageptq::to_string(model.code()), model.message().c_str());
    return 1;
  }
  auto tokens = sageptq::io::read_tokens(argv[2], static_cast<std::uint32_t>(model->config().vocab_size));
  if (!tokens.ok()) {
    std::fprintf(stderr, "%s: %s\n", sageptq::to_string(tokens.code()), tokens.message().c_str());
    return 1;
  }
  llama::perplexity_options options;
  options.max_windows = argc > 3 ? std::atol(argv[3]) : 0;
  const unsigned threads = argc > 4 ? static_cast<unsigned>(std::atoi(argv[4])) : 2;
  options.progress = [](llama::index_t done, llama::index_t total) {
    std::fprintf(stderr, "\rwindow %ld / %ld", static_cast<long>(done), static_cast<long>(total));
    if (done == total) std::fputc('\n', stderr);
  };

  const auto start = std::chrono::steady_clock::now();
  auto ppl = llama::evaluate_perplexity(*model, *tokens, options, sageptq::thread_executor(threads));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!ppl.ok()) {
    std::fprintf(stderr, "%s: %s\n", sageptq::to_string(ppl.code()), ppl.message().c_str());
    return 1;
  }
  std::printf("ppl=%.4f mean_nll=%.5f windows=%ld threads=%u seconds=%.1f\n", ppl->perplexity, ppl->mean_nll,
              static_cast<long>(ppl->windows), threads, seconds);
}
