#pragma once
// The reference engine and the quantized model file (sageptq/io/quantized_model.hpp): assembling a file from a
// source checkpoint and the packed matrices of quantize_model(), and loading a file back into a model whose linear
// layers are packed_linear (a weight stored whole) or column_parts_linear (a weight stored as column parts).

#include <sageptq/io/llama_config.hpp>
#include <sageptq/io/quantized_model.hpp>
#include <sageptq/io/safetensors.hpp>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model.hpp"
#include "packed_linear.hpp"

namespace llama {

/// A quantized model file's contents for the checkpoint in `model_dir`: its config.json text, its weights'
/// fingerprint, `packed`, and every source tensor that `packed` does not replace, whole or in column parts
/// (embeddings, norms, an untied head), in its dtype. The statuses of read_llama_config and checkpoint::open.
inline result<sageptq::io::quantized_model> assemble_quantized_model(const std::filesystem::path& model_dir,
                                                                     std::string method, std::string method_options,
                                                                     std::vector<sageptq::io::quantized_tensor> packed) {
  auto cfg = sageptq::io::read_llama_config(model_dir);
  if (!cfg.ok()) return cfg.as_outcome();
  auto source = sageptq::io::checkpoint::open(model_dir);
  if (!source.ok()) return source.as_outcome();
  sageptq::io::quantized_model out;
  out.method = std::move(method);
  out.method_options = std::move(method_options);
  out.config_json = cfg->json;
  out.source_fingerprint = sageptq::io::weights_fingerprint(*source);
  out.packed = std::move(packed);
  for (const auto& file : source->files())
    for (const sageptq::io::tensor& t : file.tensors())
      if (out.find_parts(t.name).empty()) out.unquantized.push_back(t);
  return out;
}

struct loaded_quantized_model {
  model engine;
  sageptq::io::quantized_model file;  ///< what the file holds (packed matrices, reports, method, fingerprint)
};

/// Reads a quantized model file and builds the engine from it alone. The statuses of read_quantized_model and
/// parse_llama_config; malformed_input when a tensor the config implies is missing or of the wrong shape.
inline result<loaded_quantized_model> load_quantized_model(const std::filesystem::path& path) {
  auto file = sageptq::io::read_quantized_model(path);
  if (!file.ok()) return file.as_outcome();
  auto cfg = sageptq::io::parse_llama_config(file->config_json, path.string() + ": config");
  if (!cfg.ok()) return cfg.as_outcome();
  const sageptq::io::quantized_model& f = *file;
  auto engine = model::load(
      std::move(cfg).value(), [&](std::string_view name) { return f.find_unquantized(name); },
      [&](const std::string& name, index_t, index_t) -> result<std::unique_ptr<linear_layer>> {
        const auto parts = f.find_parts(name);
        if (parts.empty())
          return sageptq::fail(status::malformed_input, path.string() + ": packed tensor \"" + name + "\" is missing");
        auto layer = make_packed_linear(parts);
        if (!layer.ok()) return sageptq::fail(status::malformed_input, path.string() + ": " + layer.message());
        return layer;
      },
      path.string());
  if (!engine.ok()) return engine.as_outcome();
  return loaded_quantized_model{std::move(engine).value(), std::move(file).value()};
}

}  // namespace llama
