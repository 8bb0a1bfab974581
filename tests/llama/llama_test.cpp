#include <doctest/doctest.h>

#include <sageptq/core/random.hpp>
#include <sageptq/io/safetensors.hpp>
#include <sageptq/io/safetensors_writer.hpp>
#include <sageptq/io/tokens.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../../examples/llama/perplexity.hpp"
#include "../io/temp_dir.hpp"

using sageptq::index_t;
using sageptq::make_matrix_view;
using sageptq::status;
using sageptq::thread_executor;

namespace {

const std::filesystem::path shared = SAGEPTQ_SHARED_DIR;
const std::filesystem::path stories_dir = shared / "models/stories260k";
const std::filesystem::path stories_eval = shared / "data/tinystories/eval.tok512.u16.bin";

struct stories_fixture {
  llama::model model;
  std::vector<std::uint16_t> tokens;
};

/// stories260k and its evaluation tokens, loaded once; a missing file fails the test with its path.
const stories_fixture& stories() {
  static const stories_fixture fixture = [] {
    REQUIRE_MESSAGE(std::filesystem::exists(stories_dir / "model.safetensors"),
                    "missing shared file " << (stories_dir / "model.safetensors"));
    REQUIRE_MESSAGE(std::filesystem::exists(stories_eval), "missing shared file " << stories_eval);
    auto model = llama::model::load(stories_dir);
    REQUIRE_MESSAGE(model.ok(), model.message());
    auto tokens = sageptq::io::read_tokens(stories_eval, 512);
    REQUIRE_MESSAGE(tokens.ok(), tokens.message());
    return stories_fixture{std::move(model).value(), std::move(tokens).value()};
  }();
  return fixture;
}

std::vector<float> full_logits(const llama::model& m, std::span<const std::uint16_t> tokens, unsigned threads) {
  llama::kv_cache cache(m.config(), static_cast<index_t>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<std::size_t>(m.config().vocab_size));
  m.forward(tokens, cache, make_matrix_view(logits.data(), static_cast<index_t>(tokens.size()), m.config().vocab_size),
            thread_executor(threads));
  return logits;
}

/// max |a - b| over a row, relative to max |b|.
double relative_row_error(const float* a, const float* b, index_t n) {
  double diff = 0, scale = 0;
  for (index_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

/// A linear layer that counts its calls and forwards to a dense one.
class counting_linear final : public llama::linear_layer {
 public:
  counting_linear(std::vector<float> weight, index_t out, index_t in, int& calls)
      : dense_(out, in, std::move(weight)), calls_(calls) {}
  [[nodiscard]] index_t in_features() const noexcept override { return dense_.in_features(); }
  [[nodiscard]] index_t out_features() const noexcept override { return dense_.out_features(); }
  void forward(sageptq::matrix_view<const float> x, sageptq::matrix_view<float> y,
               const thread_executor& exec) const override {
    ++calls_;
    dense_.forward(x, y, exec);
  }

 private:
  llama::dense_linear dense_;
  int& calls_;
};

}  // namespace

TEST_CASE("llama: matmul_xwt matches a scalar reference on ragged shapes, for any thread count") {
  sageptq::random_generator rng(5);
  for (const auto& shape : {std::array<index_t, 3>{1, 1, 1}, {3, 7, 5}, {9, 64, 13}, {70, 173, 66}, {5, 8, 130}}) {
    const index_t m = shape[0], k = shape[1], n = shape[2];
    std::vector<float> x(static_cast<std::size_t>(m * (k + 3))), w(static_cast<std::size_t>(n * k));
    for (float& v : x) v = static_cast<float>(rng.normal());
    for (float& v : w) v = static_cast<float>(rng.normal());
    const auto xv = make_matrix_view(static_cast<const float*>(x.data()), m, k, k + 3);  // padded rows
    const auto wv = make_matrix_view(static_cast<const float*>(w.data()), n, k);
    std::vector<float> y1(static_cast<std::size_t>(m * n)), y2(y1.size());
    llama::matmul_xwt(xv, wv, make_matrix_view(y1.data(), m, n), thread_executor(1));
    llama::matmul_xwt(xv, wv, make_matrix_view(y2.data(), m, n), thread_executor(2));
    CHECK(y1 == y2);
    double worst = 0;
    for (index_t r = 0; r < m; ++r)
      for (index_t c = 0; c < n; ++c) {
        double ref = 0, magnitude = 0;
        for (index_t i = 0; i < k; ++i) {
          ref += static_cast<double>(xv(r, i)) * wv(c, i);
          magnitude += std::abs(static_cast<double>(xv(r, i)) * wv(c, i));
        }
        worst = std::max(worst, std::abs(y1[static_cast<std::size_t>(r * n + c)] - ref) / magnitude);
      }
    CHECK_MESSAGE(worst < 1e-6, "m " << m << " k " << k << " n " << n);
  }
}

TEST_CASE("llama: stories260k f32 perplexity on the first 40 windows is the reference 4.1091") {
  const auto& s = stories();
  llama::perplexity_options options;
  options.max_windows = 40;
  auto ppl = llama::evaluate_perplexity(s.model, s.tokens, options, thread_executor(2));
  REQUIRE_MESSAGE(ppl.ok(), ppl.message());
  CHECK(ppl->windows == 40);
  CHECK(ppl->targets == 40 * 512);
  MESSAGE("stories260k, 40 windows: ppl " << ppl->perplexity);
  CHECK(std::abs(ppl->perplexity / 4.1091 - 1) < 0.0005);
}

TEST_CASE("llama: incremental decoding with the KV cache reproduces the full-window logits") {
  const auto& s = stories();
  const index_t n = 40, vocab = s.model.config().vocab_size;
  const auto tokens = std::span(s.tokens).subspan(512 * 3, static_cast<std::size_t>(n));
  const std::vector<float> full = full_logits(s.model, tokens, 2);

  llama::kv_cache cache(s.model.config(), n);
  std::vector<float> step(static_cast<std::size_t>(vocab));
  for (index_t i = 0; i < n; ++i) {
    s.model.forward(tokens.subspan(static_cast<std::size_t>(i), 1), cache, make_matrix_view(step.data(), 1, vocab),
                    thread_executor(2));
    CHECK(relative_row_error(step.data(), full.data() + i * vocab, vocab) < 1e-4);
  }
  CHECK(cache.length() == n);

  // Chunks of any size continue the same sequence.
  cache.clear();
  std::vector<float> chunk(static_cast<std::size_t>(n * vocab));
  s.model.forward(tokens.first(15), cache, make_matrix_view(chunk.data(), 15, vocab), thread_executor(1));
  s.model.forward(tokens.subspan(15), cache, make_matrix_view(chunk.data() + 15 * vocab, n - 15, vocab),
                  thread_executor(1));
  for (index_t i : {index_t{0}, index_t{14}, index_t{15}, n - 1})
    CHECK(relative_row_error(chunk.data() + i * vocab, full.data() + i * vocab, vocab) < 1e-4);

  CHECK(full_logits(s.model, tokens, 1) == full);  // bit-identical for any thread count
}

TEST_CASE("llama: layer by layer over several sequences, with hooks on every linear input") {
  const auto& s = stories();
  auto loaded = llama::model::load(stories_dir);
  REQUIRE(loaded.ok());
  llama::model& m = *loaded;
  const auto& cfg = m.config();
  const index_t length = 24, sequences = 2, rows = length * sequences;
  const auto tokens = std::span(s.tokens).first(static_cast<std::size_t>(rows));

  // Reference: each sequence on its own through forward().
  std::vector<float> reference;
  for (index_t q = 0; q < sequences; ++q) {
    const auto logits = full_logits(m, tokens.subspan(static_cast<std::size_t>(q * length), length), 2);
    reference.insert(reference.end(), logits.begin(), logits.end());
  }

  // The same through embed / forward_layer / logits, both sequences at once. The hook checks the order and shapes
  // of the linear inputs and, at layer 0's gate, swaps in a counting copy of down_proj, which this very pass uses.
  const std::vector<std::pair<llama::linear_kind, index_t>> expected = {
      {llama::linear_kind::q, cfg.hidden_size},    {llama::linear_kind::k, cfg.hidden_size},
      {llama::linear_kind::v, cfg.hidden_size},    {llama::linear_kind::o, cfg.num_attention_heads * cfg.head_dim},
      {llama::linear_kind::gate, cfg.hidden_size}, {llama::linear_kind::up, cfg.hidden_size},
      {llama::linear_kind::down, cfg.intermediate_size}};
  std::vector<llama::linear_input> seen;
  int down_calls = 0;
  const llama::linear_input_hook hook = [&](const llama::linear_input& in) {
    seen.push_back(in);
    if (in.layer == 0 && in.kind == llama::linear_kind::gate) {
      const llama::dense_linear* down = m.layer(0).dense(llama::linear_kind::down);
      REQUIRE(down != nullptr);
      const auto w = down->weight();
      m.set_linear(0, llama::linear_kind::down,
                   std::make_unique<counting_linear>(std::vector<float>(w.data, w.data + w.rows() * w.cols()),
                                                     w.rows(), w.cols(), down_calls));
    }
  };
  std::vector<float> hidden(static_cast<std::size_t>(rows * cfg.hidden_size));
  const auto hidden_view = make_matrix_view(hidden.data(), rows, cfg.hidden_size);
  m.embed(tokens, hidden_view);
  std::vector<llama::kv_block> blocks(static_cast<std::size_t>(sequences), llama::make_kv_block(cfg, length));
  const std::vector<llama::kv_block*> caches = {&blocks[0], &blocks[1]};
  for (index_t l = 0; l < m.layer_count(); ++l) m.forward_layer(l, hidden_view, caches, 0, thread_executor(2), hook);
  std::vector<float> logits(static_cast<std::size_t>(rows * cfg.vocab_size));
  m.logits(hidden_view, make_matrix_view(logits.data(), rows, cfg.vocab_size), thread_executor(2));

  CHECK(logits == reference);  // batching sequences changes nothing
  CHECK(down_calls == 1);
  CHECK(m.layer(0).dense(llama::linear_kind::down) == nullptr);  // replaced
  CHECK(m.layer(1).dense(llama::linear_kind::down) != nullptr);
  REQUIRE(seen.size() == static_cast<std::size_t>(m.layer_count() * llama::linear_kinds));
  for (std::size_t i = 0; i < seen.size(); ++i) {
    CHECK(seen[i].layer == static_cast<index_t>(i / llama::linear_kinds));
    CHECK(seen[i].kind == expected[i % llama::linear_kinds].first);
    CHECK(seen[i].x.rows() == rows);
    CHECK(seen[i].x.cols() == expected[i % llama::linear_kinds].second);
  }
  CHECK(llama::linear_name(llama::linear_kind::gate) == "mlp.gate_proj");
}

TEST_CASE("llama: untied output head, load errors and perplexity argument errors") {
  const auto& s = stories();
  sageptq_test::temp_dir dir;
  auto weights = sageptq::io::checkpoint::open(stories_dir);
  REQUIRE(weights.ok());
  const auto& source = weights->files().front();
  std::string config_text = s.model.config().json;
  const auto write_model = [&](bool with_lm_head, const std::string& skip) {
    sageptq::io::safetensors_writer writer;
    for (const sageptq::io::tensor& t : source.tensors())
      if (t.name != skip) REQUIRE(writer.add(t.name, t.type, t.shape, t.bytes).ok());
    if (with_lm_head) {
      const auto& embed = *source.find("model.embed_tokens.weight");
      REQUIRE(writer.add("lm_head.weight", embed.type, embed.shape, embed.bytes).ok());
    }
    REQUIRE(writer.write(dir / "model.safetensors").ok());
    std::ofstream(dir / "config.json") << config_text;
  };

  // An explicit lm_head equal to the embeddings gives the tied model's logits.
  const std::string tied = "\"tie_word_embeddings\": true";
  REQUIRE(config_text.find(tied) != std::string::npos);
  config_text.replace(config_text.find(tied), tied.size(), "\"tie_word_embeddings\": false");
  write_model(true, "");
  auto untied = llama::model::load(dir.path());
  REQUIRE_MESSAGE(untied.ok(), untied.message());
  const auto tokens = std::span(s.tokens).first(32);
  CHECK(full_logits(*untied, tokens, 2) == full_logits(s.model, tokens, 2));

  write_model(false, "model.layers.2.mlp.up_proj.weight");
  auto missing = llama::model::load(dir.path());
  CHECK(missing.code() == status::malformed_input);
  CHECK(missing.message().find("model.layers.2.mlp.up_proj.weight\" is missing") != std::string::npos);
  CHECK(llama::model::load(dir / "nowhere").code() == status::io_error);

  llama::perplexity_options options;
  options.context = 1024;
  CHECK(llama::evaluate_perplexity(s.model, s.tokens, options, thread_executor(1)).code() == status::invalid_argument);
  options.context = 512;
  CHECK(llama::evaluate_perplexity(s.model, std::span(s.tokens).first(512), options, thread_executor(1)).code() ==
        status::invalid_argument);
  std::vector<std::uint16_t> bad(s.tokens.begin(), s.tokens.begin() + 600);
  bad[77] = 512;
  CHECK(llama::evaluate_perplexity(s.model, bad, options, thread_executor(1)).code() == status::invalid_argument);
}
