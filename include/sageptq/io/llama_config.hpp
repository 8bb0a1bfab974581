#pragma once
/// @file llama_config.hpp
/// The architecture fields of a Hugging Face LLaMA `config.json`, validated, plus the raw text (a quantized model
/// file embeds it so it is self-contained). Options this library's engines do not implement (rope_scaling,
/// attention or MLP biases, an activation other than SiLU) are reported as unsupported rather than ignored.

#include <filesystem>
#include <string>
#include <string_view>

#include "../config.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"
#include "json.hpp"
#include "mapped_file.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {

struct llama_config {
  index_t hidden_size = 0;
  index_t intermediate_size = 0;
  index_t num_hidden_layers = 0;
  index_t num_attention_heads = 0;
  index_t num_key_value_heads = 0;      ///< defaults to num_attention_heads
  index_t head_dim = 0;                 ///< defaults to hidden_size / num_attention_heads
  index_t vocab_size = 0;
  index_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;           ///< Hugging Face's default
  double rope_theta = 10000.0;          ///< top level, or rope_parameters.rope_theta
  bool tie_word_embeddings = false;     ///< Hugging Face's default for LLaMA
  std::string json;                     ///< the text it was parsed from
};

/// Parses the text of a config.json. malformed_input for a missing or ill-typed field or inconsistent sizes,
/// unsupported for options the engines do not implement; `origin` prefixes every message.
inline result<llama_config> parse_llama_config(std::string_view text, const std::string& origin) {
  auto parsed = detail::parse_json_strict(text, origin);
  if (!parsed.ok()) return parsed.as_outcome();
  const detail::json& root = *parsed;
  const auto malformed = [&](const std::string& what) { return fail(status::malformed_input, origin + ": " + what); };
  if (!root.is_object()) return malformed("is not a JSON object");

  llama_config cfg;
  cfg.json = std::string(text);
  std::string error;
  const auto positive = [&](const char* key, index_t& out, bool required = true) {
    const auto it = root.find(key);
    if (it == root.end() || it->is_null()) {
      if (required && error.empty()) error = std::string("needs \"") + key + "\"";
      return;
    }
    if (!it->is_number_unsigned() || it->get<std::uint64_t>() == 0 || it->get<std::uint64_t>() > (1ull << 40)) {
      if (error.empty()) error = std::string("\"") + key + "\" is not a positive integer";
      return;
    }
    out = static_cast<index_t>(it->get<std::uint64_t>());
  };
  positive("hidden_size", cfg.hidden_size);
  positive("intermediate_size", cfg.intermediate_size);
  positive("num_hidden_layers", cfg.num_hidden_layers);
  positive("num_attention_heads", cfg.num_attention_heads);
  positive("vocab_size", cfg.vocab_size);
  positive("max_position_embeddings", cfg.max_position_embeddings);
  positive("num_key_value_heads", cfg.num_key_value_heads, false);
  positive("head_dim", cfg.head_dim, false);
  if (!error.empty()) return malformed(error);
  if (cfg.num_key_value_heads == 0) cfg.num_key_value_heads = cfg.num_attention_heads;
  if (cfg.head_dim == 0) cfg.head_dim = cfg.hidden_size / cfg.num_attention_heads;

  const auto number = [&](const detail::json& object, const char* key, auto& out) {
    const auto it = object.find(key);
    if (it == object.end()) return true;
    if (!it->is_number() || !(it->template get<double>() > 0)) return false;
    out = static_cast<std::remove_reference_t<decltype(out)>>(it->template get<double>());
    return true;
  };
  if (!number(root, "rms_norm_eps", cfg.rms_norm_eps)) return malformed("\"rms_norm_eps\" is not a positive number");
  if (const auto rope = root.find("rope_parameters"); rope != root.end() && rope->is_object())
    if (!number(*rope, "rope_theta", cfg.rope_theta))
      return malformed("\"rope_parameters.rope_theta\" is not a positive number");
  if (!number(root, "rope_theta", cfg.rope_theta)) return malformed("\"rope_theta\" is not a positive number");
  if (const auto tie = root.find("tie_word_embeddings"); tie != root.end()) {
    if (!tie->is_boolean()) return malformed("\"tie_word_embeddings\" is not a boolean");
    cfg.tie_word_embeddings = tie->get<bool>();
  }

  if (cfg.num_attention_heads % cfg.num_key_value_heads != 0)
    return malformed(std::to_string(cfg.num_attention_heads) + " attention heads do not share " +
                     std::to_string(cfg.num_key_value_heads) + " key/value heads evenly");
  if (cfg.head_dim % 2 != 0) return malformed("head_dim " + std::to_string(cfg.head_dim) + " is odd (RoPE pairs)");

  const auto unsupported = [&](const std::string& what) { return fail(status::unsupported, origin + ": " + what); };
  if (const auto act = root.find("hidden_act"); act != root.end() && *act != "silu")
    return unsupported("hidden_act " + act->dump() + " (only silu)");
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (const auto it = root.find(key); it != root.end() && *it != false)
      return unsupported(std::string("\"") + key + "\" is set");
  if (const auto scaling = root.find("rope_scaling"); scaling != root.end() && !scaling->is_null())
    return unsupported("rope_scaling " + scaling->dump());
  if (const auto rope = root.find("rope_parameters"); rope != root.end() && rope->is_object())
    if (const auto type = rope->find("rope_type"); type != rope->end() && *type != "default")
      return unsupported("rope_type " + type->dump());
  return cfg;
}

/// Reads `path`, a config.json or a model directory holding one.
inline result<llama_config> read_llama_config(const std::filesystem::path& path) {
  std::error_code ec;
  const auto file_path = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  auto file = mapped_file::open(file_path);
  if (!file.ok()) return file.as_outcome();
  const auto bytes = (*file)->bytes();
  return parse_llama_config({reinterpret_cast<const char*>(bytes.data()), bytes.size()}, file_path.string());
}

}  // namespace io
SAGEPTQ_NAMESPACE_END
