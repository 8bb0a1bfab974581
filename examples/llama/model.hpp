#pragma once
// The reference LLaMA engine: a Hugging Face LLaMA checkpoint (config.json + safetensors, any of F32/F16/BF16)
// run in f32 on the CPU. RMSNorm, rotate-half RoPE with the config's theta, grouped-query attention with a causal
// mask, SwiGLU MLP, tied or untied output embeddings.
//
// Two ways through it:
//  - forward(): tokens appended to a KV cache, logits out. A whole evaluation window is one call (matrix-matrix
//    products); incremental decoding is one call per token. Both take the same code path.
//  - embed() / forward_layer() / logits(): the pieces, for calibration. forward_layer() runs one decoder layer on
//    the hidden states of many sequences at once and calls a hook with the input of each linear layer just before
//    applying it; the hook may replace that linear layer (e.g. with a quantized one), and the pass then uses the
//    replacement, so quantized outputs feed what comes after (true-sequential order).
// Threads come from the caller's sageptq::thread_executor; results are identical for every thread count.

#include <sageptq/core/executor.hpp>
#include <sageptq/core/status.hpp>
#include <sageptq/core/tensor_view.hpp>
#include <sageptq/io/llama_config.hpp>
#include <sageptq/io/safetensors.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "linear.hpp"

namespace llama {

using sageptq::result;
using sageptq::status;
using sageptq::thread_executor;

/// The seven linear layers of a decoder layer, in the order the forward pass applies them.
enum class linear_kind : int { q, k, v, o, gate, up, down };
inline constexpr int linear_kinds = 7;

/// The checkpoint name of a linear layer inside `model.layers.N.`.
constexpr std::string_view linear_name(linear_kind kind) noexcept {
  constexpr std::string_view names[linear_kinds] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                    "mlp.down_proj"};
  return names[static_cast<int>(kind)];
}

/// Empty when the seven linear layers (q k v o gate up down) have the shapes of a decoder layer of `cfg`, possibly
/// pruned (TOGA, sageptq/toga/): whole KV groups — a KV head and the query heads that read it — removed from q, k,
/// v (rows) and o (columns), and MLP channels removed from gate, up (rows) and down (columns), at least one of each
/// kept. Otherwise what is wrong. Kept heads and channels are permutation-invariant, so the shapes say everything.
inline std::string pruned_shape_error(const sageptq::io::llama_config& cfg,
                                      const std::array<std::pair<index_t, index_t>, linear_kinds>& shapes) {
  const index_t hd = cfg.head_dim, group = cfg.num_attention_heads / cfg.num_key_value_heads, dim = cfg.hidden_size;
  const index_t kv_rows = shapes[static_cast<std::size_t>(linear_kind::k)].first;
  const index_t channels = shapes[static_cast<std::size_t>(linear_kind::gate)].first;
  if (kv_rows < hd || kv_rows % hd != 0 || kv_rows > cfg.num_key_value_heads * hd)
    return "k_proj has " + std::to_string(kv_rows) + " rows, not a whole number of KV heads of " + std::to_string(hd);
  if (channels < 1 || channels > cfg.intermediate_size)
    return "gate_proj has " + std::to_string(channels) + " rows, not in [1, intermediate_size]";
  const std::array<std::pair<index_t, index_t>, linear_kinds> expected = {
      {{kv_rows * group, dim}, {kv_rows, dim}, {kv_rows, dim}, {dim, kv_rows * group}, {channels, dim},
       {channels, dim}, {dim, channels}}};
  for (int i = 0; i < linear_kinds; ++i)
    if (shapes[static_cast<std::size_t>(i)] != expected[static_cast<std::size_t>(i)])
      return std::string(linear_name(static_cast<linear_kind>(i))) + " is " +
             std::to_string(shapes[static_cast<std::size_t>(i)].first) + " x " +
             std::to_string(shapes[static_cast<std::size_t>(i)].second) + ", expected " +
             std::to_string(expected[static_cast<std::size_t>(i)].first) + " x " +
             std::to_string(expected[static_cast<std::size_t>(i)].second);
  return {};
}

struct decoder_layer {
  std::vector<float> input_norm;           ///< RMSNorm weight before attention
  std::vector<float> post_attention_norm;  ///< RMSNorm weight before the MLP
  std::array<std::unique_ptr<linear_layer>, linear_kinds> linears;

  [[nodiscard]] const linear_layer& linear(linear_kind kind) const { return *linears[static_cast<std::size_t>(kind)]; }
  /// The layer as loaded (its f32 weight via weight()), or nullptr once it has been replaced by another kind.
  [[nodiscard]] const dense_linear* dense(linear_kind kind) const {
    return dynamic_cast<const dense_linear*>(linears[static_cast<std::size_t>(kind)].get());
  }
  /// out x in of every linear layer.
  [[nodiscard]] std::array<std::pair<index_t, index_t>, linear_kinds> shapes() const {
    std::array<std::pair<index_t, index_t>, linear_kinds> out;
    for (int k = 0; k < linear_kinds; ++k)
      out[static_cast<std::size_t>(k)] = {linears[static_cast<std::size_t>(k)]->out_features(),
                                          linears[static_cast<std::size_t>(k)]->in_features()};
    return out;
  }
};

/// Keys and values of one decoder layer for one sequence: capacity x kv_dim each, positions in order.
struct kv_block {
  std::vector<float> keys;
  std::vector<float> values;
};

inline kv_block make_kv_block(const sageptq::io::llama_config& cfg, index_t capacity) {
  const auto size = static_cast<std::size_t>(capacity * cfg.num_key_value_heads * cfg.head_dim);
  return {std::vector<float>(size), std::vector<float>(size)};
}

/// The KV cache of one sequence, every layer.
class kv_cache {
 public:
  kv_cache(const sageptq::io::llama_config& cfg, index_t capacity)
      : capacity_(capacity), layers_(static_cast<std::size_t>(cfg.num_hidden_layers), make_kv_block(cfg, capacity)) {}
  [[nodiscard]] index_t length() const noexcept { return length_; }
  [[nodiscard]] index_t capacity() const noexcept { return capacity_; }
  void clear() noexcept { length_ = 0; }

 private:
  friend class model;
  index_t capacity_;
  index_t length_ = 0;
  std::vector<kv_block> layers_;
};

/// What a linear_input_hook sees: the rows (one per token of every sequence) about to be multiplied by the linear
/// layer `kind` of decoder layer `layer`. q, k and v get the same rows, as do gate and up.
struct linear_input {
  index_t layer;
  linear_kind kind;
  matrix_view<const float> x;
};
using linear_input_hook = std::function<void(const linear_input&)>;

class model {
 public:
  /// Loads `dir`/config.json and the safetensors weights (one file or shards), converted to f32.
  /// The statuses of io::read_llama_config and io::checkpoint::open; malformed_input for a missing tensor or a
  /// tensor of the wrong shape.
  static result<model> load(const std::filesystem::path& dir) {
    auto cfg = sageptq::io::read_llama_config(dir);
    if (!cfg.ok()) return cfg.as_outcome();
    auto weights = sageptq::io::checkpoint::open(dir);
    if (!weights.ok()) return weights.as_outcome();
    return load(std::move(cfg).value(), [&](std::string_view name) { return weights->find(name); }, {}, dir.string());
  }

  /// Finds a tensor by checkpoint name (nullptr when absent).
  using tensor_lookup = std::function<const sageptq::io::tensor*(std::string_view)>;
  /// Makes the linear layer stored under `name` ("model.layers.N.<linear_name>.weight"), out x in.
  using linear_loader =
      std::function<result<std::unique_ptr<linear_layer>>(const std::string& name, index_t out, index_t in)>;

  /// Builds a model from `cfg` and tensors found by `find`; linear layers come from `make_linear` when given
  /// (e.g. packed ones from a quantized model file, whose layers may be pruned: pruned_shape_error), else dense
  /// from `find`. `origin` prefixes error messages.
  static result<model> load(sageptq::io::llama_config cfg, const tensor_lookup& find, const linear_loader& make_linear,
                            const std::string& origin) {
    model m(std::move(cfg));
    const auto& c = m.cfg_;
    const index_t q_dim = c.num_attention_heads * c.head_dim, kv_dim = c.num_key_value_heads * c.head_dim;

    sageptq::outcome error;
    const auto load_tensor = [&](const std::string& name, std::vector<index_t> shape) -> std::vector<float> {
      if (!error.ok()) return {};
      const sageptq::io::tensor* t = find(name);
      if (!t || t->shape != shape) {
        error = sageptq::fail(status::malformed_input, origin + ": tensor \"" + name + "\" is " +
                                                           (t ? "not of the shape config.json implies" : "missing"));
        return {};
      }
      auto values = sageptq::io::to_floats(*t);
      if (!values.ok()) error = values.as_outcome();
      return values.ok() ? std::move(values).value() : std::vector<float>{};
    };
    m.embed_tokens_ = load_tensor("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
    m.norm_ = load_tensor("model.norm.weight", {c.hidden_size});
    if (!c.tie_word_embeddings && find("lm_head.weight"))
      m.lm_head_ = load_tensor("lm_head.weight", {c.vocab_size, c.hidden_size});  // otherwise tied to embed_tokens
    const std::array<std::pair<index_t, index_t>, linear_kinds> shapes = {
        {{q_dim, c.hidden_size},
         {kv_dim, c.hidden_size},
         {kv_dim, c.hidden_size},
         {c.hidden_size, q_dim},
         {c.intermediate_size, c.hidden_size},
         {c.intermediate_size, c.hidden_size},
         {c.hidden_size, c.intermediate_size}}};
    m.layers_.resize(static_cast<std::size_t>(c.num_hidden_layers));
    for (index_t l = 0; l < c.num_hidden_layers; ++l) {
      decoder_layer& layer = m.layers_[static_cast<std::size_t>(l)];
      const std::string prefix = "model.layers." + std::to_string(l) + ".";
      layer.input_norm = load_tensor(prefix + "input_layernorm.weight", {c.hidden_size});
      layer.post_attention_norm = load_tensor(prefix + "post_attention_layernorm.weight", {c.hidden_size});
      for (int k = 0; k < linear_kinds; ++k) {
        const auto [out, in] = shapes[static_cast<std::size_t>(k)];
        const std::string name = prefix + std::string(linear_name(static_cast<linear_kind>(k))) + ".weight";
        auto& slot = layer.linears[static_cast<std::size_t>(k)];
        if (make_linear && error.ok()) {
          auto made = make_linear(name, out, in);
          if (made.ok() && !*made)
            made = sageptq::fail(status::malformed_input, origin + ": linear layer \"" + name + "\" is missing");
          if (made.ok()) slot = std::move(made).value();
          else error = made.as_outcome();
          continue;
        }
        auto w = load_tensor(name, {out, in});
        if (error.ok()) slot = std::make_unique<dense_linear>(out, in, std::move(w));
      }
      if (std::string wrong; error.ok() && !(wrong = pruned_shape_error(c, layer.shapes())).empty())
        error = sageptq::fail(status::malformed_input, origin + ": layer " + std::to_string(l) + ": " + wrong);
    }
    if (!error.ok()) return error;
    return m;
  }

  [[nodiscard]] const sageptq::io::llama_config& config() const noexcept { return cfg_; }
  [[nodiscard]] index_t layer_count() const noexcept { return static_cast<index_t>(layers_.size()); }
  [[nodiscard]] const decoder_layer& layer(index_t l) const { return layers_[static_cast<std::size_t>(l)]; }

  /// Replaces a linear layer (same shape), e.g. with a quantized one.
  void set_linear(index_t l, linear_kind kind, std::unique_ptr<linear_layer> replacement) {
    auto& slot = layers_[static_cast<std::size_t>(l)].linears[static_cast<std::size_t>(kind)];
    SAGEPTQ_ASSERT(replacement && replacement->in_features() == slot->in_features() &&
                   replacement->out_features() == slot->out_features());
    slot = std::move(replacement);
  }

  /// Swaps all seven linear layers of layer `l` with `linears` (which then hold the previous ones), e.g. to run a
  /// pruned and quantized layer and restore the original after. invalid_shape (and nothing swapped) unless the
  /// new shapes pass pruned_shape_error. Caches keep their size: a pruned layer uses a prefix of its block.
  sageptq::outcome swap_layer_linears(index_t l, std::array<std::unique_ptr<linear_layer>, linear_kinds>& linears) {
    std::array<std::pair<index_t, index_t>, linear_kinds> shapes;
    for (int k = 0; k < linear_kinds; ++k) {
      const auto& in = linears[static_cast<std::size_t>(k)];
      if (!in) return sageptq::fail(status::invalid_shape, "swap_layer_linears: a linear layer is null");
      shapes[static_cast<std::size_t>(k)] = {in->out_features(), in->in_features()};
    }
    if (const std::string wrong = pruned_shape_error(cfg_, shapes); !wrong.empty())
      return sageptq::fail(status::invalid_shape, "layer " + std::to_string(l) + ": " + wrong);
    std::swap(layers_[static_cast<std::size_t>(l)].linears, linears);
    return {};
  }

  /// hidden (tokens.size() x hidden_size) = the embeddings of `tokens` (ids below vocab_size).
  void embed(std::span<const std::uint16_t> tokens, matrix_view<float> hidden) const {
    SAGEPTQ_ASSERT(hidden.rows() == static_cast<index_t>(tokens.size()) && hidden.cols() == cfg_.hidden_size);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      SAGEPTQ_ASSERT(tokens[i] < cfg_.vocab_size);
      std::copy_n(embed_tokens_.data() + tokens[i] * cfg_.hidden_size, cfg_.hidden_size,
                  &hidden(static_cast<index_t>(i), 0));
    }
  }

  /// Runs decoder layer `l` in place on `hidden`: caches.size() sequences of equal length stacked row-wise, each
  /// continuing at position `start` (its cache holds positions [0, start), has room for the new ones and receives
  /// them). `hook`, if set, sees the input of every linear layer before it is applied and may replace that layer
  /// (see the top). Scratch memory is a few times hidden's rows x intermediate_size floats: callers with many
  /// sequences pass them in chunks.
  void forward_layer(index_t l, matrix_view<float> hidden, std::span<kv_block* const> caches, index_t start,
                     const thread_executor& exec, const linear_input_hook& hook = {}) {
    run_layer(l, hidden, caches, start, exec, hook ? &hook : nullptr);
  }

  /// logits (rows x vocab_size) = the output head applied to the final RMSNorm of `hidden`.
  void logits(matrix_view<const float> hidden, matrix_view<float> out, const thread_executor& exec) const {
    std::vector<float> normed(static_cast<std::size_t>(hidden.rows() * cfg_.hidden_size));
    const auto normed_view = sageptq::make_matrix_view(normed.data(), hidden.rows(), cfg_.hidden_size);
    rms_norm(hidden, norm_, normed_view, exec);
    const auto& head = lm_head_.empty() ? embed_tokens_ : lm_head_;
    matmul_xwt(normed_view, sageptq::make_matrix_view(head.data(), cfg_.vocab_size, cfg_.hidden_size), out, exec);
  }

  /// Appends `tokens` to `cache` (which must have room) and writes their logits (tokens.size() x vocab_size).
  void forward(std::span<const std::uint16_t> tokens, kv_cache& cache, matrix_view<float> out,
               const thread_executor& exec) const {
    const auto n = static_cast<index_t>(tokens.size());
    SAGEPTQ_ASSERT(cache.length_ + n <= cache.capacity_ && cache.layers_.size() == layers_.size());
    std::vector<float> hidden(static_cast<std::size_t>(n * cfg_.hidden_size));
    const auto hidden_view = sageptq::make_matrix_view(hidden.data(), n, cfg_.hidden_size);
    embed(tokens, hidden_view);
    for (index_t l = 0; l < layer_count(); ++l) {
      kv_block* block = &cache.layers_[static_cast<std::size_t>(l)];
      run_layer(l, hidden_view, std::span(&block, 1), cache.length_, exec, nullptr);
    }
    cache.length_ += n;
    logits(hidden_view, out, exec);
  }

 private:
  explicit model(sageptq::io::llama_config cfg) : cfg_(std::move(cfg)) {
    // RoPE angles pos * theta^(-2i / head_dim), computed in double once.
    const index_t half = cfg_.head_dim / 2;
    rope_cos_.resize(static_cast<std::size_t>(cfg_.max_position_embeddings * half));
    rope_sin_.resize(rope_cos_.size());
    for (index_t p = 0; p < cfg_.max_position_embeddings; ++p)
      for (index_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) *
                             std::pow(cfg_.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(cfg_.head_dim));
        rope_cos_[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::cos(angle));
        rope_sin_[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::sin(angle));
      }
  }

  template <class T>
  static matrix_view<T> rows_of(std::vector<T>& buffer, index_t rows, index_t cols) {
    buffer.resize(static_cast<std::size_t>(rows * cols));
    return sageptq::make_matrix_view(buffer.data(), rows, cols);
  }

  /// out = x / rms(x) * weight, row by row.
  void rms_norm(matrix_view<const float> x, const std::vector<float>& weight, matrix_view<float> out,
                const thread_executor& exec) const {
    exec.parallel_for(x.rows(), [&](index_t r) {
      double sum = 0;
      for (index_t c = 0; c < x.cols(); ++c) sum += static_cast<double>(x(r, c)) * x(r, c);
      const float inv = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(x.cols())) + cfg_.rms_norm_eps);
      for (index_t c = 0; c < x.cols(); ++c) out(r, c) = weight[static_cast<std::size_t>(c)] * (x(r, c) * inv);
    });
  }

  /// Rotate-half RoPE on every head of a row at position `pos`: pairs (i, i + head_dim/2).
  void rope(float* row, index_t heads, index_t pos) const {
    const index_t half = cfg_.head_dim / 2;
    const float* cos = rope_cos_.data() + pos * half;
    const float* sin = rope_sin_.data() + pos * half;
    for (index_t h = 0; h < heads; ++h) {
      float* x = row + h * cfg_.head_dim;
      for (index_t i = 0; i < half; ++i) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
      }
    }
  }

  void run_layer(index_t l, matrix_view<float> hidden, std::span<kv_block* const> caches, index_t start,
                 const thread_executor& exec, const linear_input_hook* hook) const {
    const decoder_layer& layer = layers_[static_cast<std::size_t>(l)];
    const auto sequences = static_cast<index_t>(caches.size());
    const index_t rows = hidden.rows(), length = rows / sequences;
    // Head and channel counts come from the layer's own shapes: a pruned layer has fewer (pruned_shape_error).
    const index_t hd = cfg_.head_dim, q_dim = layer.linear(linear_kind::q).out_features();
    const index_t kv_dim = layer.linear(linear_kind::k).out_features(), heads = q_dim / hd, kv_heads = kv_dim / hd;
    const index_t channels = layer.linear(linear_kind::gate).out_features();
    SAGEPTQ_ASSERT(length * sequences == rows && start + length <= cfg_.max_position_embeddings);
    SAGEPTQ_ASSERT(std::all_of(caches.begin(), caches.end(), [&](const kv_block* cache) {
      return cache->keys.size() >= static_cast<std::size_t>((start + length) * kv_dim) &&
             cache->values.size() == cache->keys.size();
    }));

    const auto apply = [&](linear_kind kind, matrix_view<const float> x, matrix_view<float> y) {
      if (hook) (*hook)({l, kind, x});
      layer.linear(kind).forward(x, y, exec);  // looked up after the hook: it may have replaced the layer
    };
    std::vector<float> normed_buf, q_buf, k_buf, v_buf, attn_buf;
    const auto normed = rows_of(normed_buf, rows, cfg_.hidden_size);
    const auto q = rows_of(q_buf, rows, q_dim), k = rows_of(k_buf, rows, kv_dim), v = rows_of(v_buf, rows, kv_dim);

    rms_norm(hidden, layer.input_norm, normed, exec);
    apply(linear_kind::q, normed, q);
    apply(linear_kind::k, normed, k);
    apply(linear_kind::v, normed, v);
    exec.parallel_for(rows, [&](index_t r) {
      const index_t pos = start + r % length;
      rope(&q(r, 0), heads, pos);
      rope(&k(r, 0), kv_heads, pos);
      kv_block& cache = *caches[static_cast<std::size_t>(r / length)];
      std::copy_n(&k(r, 0), kv_dim, cache.keys.data() + pos * kv_dim);
      std::copy_n(&v(r, 0), kv_dim, cache.values.data() + pos * kv_dim);
    });

    // Causal attention, one task per (sequence, head); query head h reads key/value head h / (heads / kv_heads).
    // Blocks of queries go through the matrix product: scores = Q Kᵀ over the keys the block can see, a masked
    // softmax per row, then P V (as P (Vᵀ)ᵀ, with V transposed once per task).
    const auto attn = rows_of(attn_buf, rows, q_dim);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    constexpr index_t query_block = 64;
    exec.parallel_for(sequences * heads, [&](index_t task) {
      const index_t s = task / heads, h = task % heads, kv_offset = h / (heads / kv_heads) * hd;
      const kv_block& cache = *caches[static_cast<std::size_t>(s)];
      const index_t total = start + length;
      const matrix_view<const float> keys{cache.keys.data() + kv_offset, {total, hd}, {kv_dim, 1}};
      std::vector<float> values_t(static_cast<std::size_t>(hd * total));
      for (index_t j = 0; j < total; ++j)
        for (index_t d = 0; d < hd; ++d)
          values_t[static_cast<std::size_t>(d * total + j)] = cache.values[static_cast<std::size_t>(j * kv_dim + kv_offset + d)];
      std::vector<float> scores(static_cast<std::size_t>(std::min(query_block, length) * total));
      for (index_t i0 = 0; i0 < length; i0 += query_block) {
        const index_t block_rows = std::min(query_block, length - i0), visible = start + i0 + block_rows;
        const auto p = sageptq::make_matrix_view(scores.data(), block_rows, visible);
        const matrix_view<const float> queries{&q(s * length + i0, h * hd), {block_rows, hd}, {q.stride[0], 1}};
        matmul_xwt(queries, keys.block(0, 0, visible, hd), p, sageptq::inline_executor{});
        for (index_t i = 0; i < block_rows; ++i) {
          const index_t seen = start + i0 + i + 1;  // the causal mask: positions [0, seen)
          float* row = &p(i, 0);
          float max_score = -std::numeric_limits<float>::infinity();
          for (index_t j = 0; j < seen; ++j) max_score = std::max(max_score, row[j] * scale);
          double total_weight = 0;
          for (index_t j = 0; j < seen; ++j) total_weight += row[j] = std::exp(row[j] * scale - max_score);
          const auto inv_total = static_cast<float>(1.0 / total_weight);
          for (index_t j = 0; j < seen; ++j) row[j] *= inv_total;
          std::fill(row + seen, row + visible, 0.0f);
        }
        const matrix_view<const float> values{values_t.data(), {hd, visible}, {total, 1}};
        const matrix_view<float> out{&attn(s * length + i0, h * hd), {block_rows, hd}, {attn.stride[0], 1}};
        matmul_xwt(p, values, out, sageptq::inline_executor{});
      }
    });

    const auto branch = normed;  // reused for the o and down outputs, which are added to the residual stream
    apply(linear_kind::o, attn, branch);
    add_rows(hidden, branch, exec);

    rms_norm(hidden, layer.post_attention_norm, normed, exec);
    std::vector<float> gate_buf, up_buf;
    const auto gate = rows_of(gate_buf, rows, channels);
    const auto up = rows_of(up_buf, rows, channels);
    apply(linear_kind::gate, normed, gate);
    apply(linear_kind::up, normed, up);
    exec.parallel_for(rows, [&](index_t r) {
      for (index_t c = 0; c < channels; ++c) {
        const float g = gate(r, c);
        gate(r, c) = g / (1.0f + std::exp(-g)) * up(r, c);  // SiLU(gate) * up
      }
    });
    apply(linear_kind::down, gate, branch);
    add_rows(hidden, branch, exec);
  }

  static void add_rows(matrix_view<float> x, matrix_view<const float> y, const thread_executor& exec) {
    exec.parallel_for(x.rows(), [&](index_t r) {
      for (index_t c = 0; c < x.cols(); ++c) x(r, c) += y(r, c);
    });
  }

  sageptq::io::llama_config cfg_;
  std::vector<float> embed_tokens_;  ///< vocab_size x hidden_size
  std::vector<float> norm_;          ///< final RMSNorm weight
  std::vector<float> lm_head_;       ///< vocab_size x hidden_size; empty when tied to embed_tokens_
  std::vector<decoder_layer> layers_;
  std::vector<float> rope_cos_, rope_sin_;  ///< max_position_embeddings x head_dim / 2
};

}  // namespace llama
