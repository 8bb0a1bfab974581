#pragma once
// Quantizes every linear layer of the reference engine's model, decoder layer by decoder layer, driving the
// library's calibration API (sageptq/pipeline/calibrate.hpp): the engine runs each decoder layer on the
// calibration windows, reports the input of every linear layer through forward_layer's hook, and swaps the packed
// results in (as packed_linear) before the next pass, so later sublayers and later layers see quantized outputs.
// Methods without calibration (rtn, q1_0) quantize the weights directly.
//
// Memory: the hidden states of every calibration window (windows x context x hidden_size floats), one chunk of
// sequences' layer scratch, and the calibrator's statistics of one decoder layer.
// Threading: the caller's executor; results do not depend on the thread count.

#include <sageptq/io/quantized_model.hpp>
#include <sageptq/pipeline/calibrate.hpp>
#include <sageptq/pipeline/quantize_matrix.hpp>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "model.hpp"
#include "packed_linear.hpp"

namespace llama {

static_assert(std::is_same_v<sageptq::io::packed_matrix, sageptq::pipeline::packed_matrix>,
              "the quantized model file stores exactly the pipeline's packed formats");

/// The calibrator's name of a linear layer (sageptq::pipeline::llama_layer_plan()).
constexpr const char* plan_name(linear_kind kind) noexcept {
  constexpr const char* names[linear_kinds] = {"q", "k", "v", "o", "gate", "up", "down"};
  return names[static_cast<int>(kind)];
}

inline linear_kind kind_of_plan_name(const std::string& name) {
  for (int k = 0; k < linear_kinds; ++k)
    if (name == plan_name(static_cast<linear_kind>(k))) return static_cast<linear_kind>(k);
  SAGEPTQ_ASSERT(false && "not a LLaMA sublayer name");
  return linear_kind::q;
}

/// "model.layers.N.self_attn.q_proj.weight" and so on.
inline std::string weight_name(index_t layer, linear_kind kind) {
  return "model.layers." + std::to_string(layer) + "." + std::string(linear_name(kind)) + ".weight";
}

struct quantize_options {
  sageptq::pipeline::method method;
  sageptq::pipeline::calibration_options calibration{};
  index_t chunk_sequences = 8;  ///< calibration windows run through a decoder layer at once
  /// Called after each quantized matrix with (matrices done, matrices in all).
  std::function<void(index_t done, index_t total)> progress;
};

struct quantize_result {
  std::vector<sageptq::io::quantized_tensor> tensors;  ///< layer by layer, q k v o gate up down
  std::size_t peak_statistics_bytes = 0;               ///< the calibrator's peak (0 without calibration)
};

/// Quantizes every linear layer of `m` in place (they become packed_linear) and returns the packed matrices with
/// their reports. `windows` may be empty for methods without calibration. The calibrator's and the method's
/// statuses; invalid_argument when a calibrated method gets no windows or windows longer than the context.
inline result<quantize_result> quantize_model(model& m, const sageptq::pipeline::token_windows& windows,
                                              const quantize_options& opt, const thread_executor& exec) {
  namespace pipeline = sageptq::pipeline;
  const auto& cfg = m.config();
  const index_t total = m.layer_count() * linear_kinds;
  quantize_result out;
  // A budget is the mean over every linear layer of the model: spread over the matrices by their fixed costs, and
  // what a matrix leaves of its share goes to those after it (pipeline::budget_ledger).
  std::vector<pipeline::matrix_extent> extents;
  for (index_t l = 0; l < m.layer_count(); ++l)
    for (int k = 0; k < linear_kinds; ++k) {
      const dense_linear* dense = m.layer(l).dense(static_cast<linear_kind>(k));
      SAGEPTQ_ASSERT(dense != nullptr);
      extents.push_back({dense->out_features(), dense->in_features()});
    }
  auto ledger = pipeline::budget_ledger::create(opt.method, extents);
  if (!ledger.ok()) return ledger.as_outcome();
  const auto index_of = [](index_t l, linear_kind kind) {
    return static_cast<std::size_t>(l * linear_kinds + static_cast<int>(kind));
  };
  const auto finish = [&](index_t l, linear_kind kind, result<pipeline::matrix_result> q) -> sageptq::outcome {
    if (!q.has_value()) return sageptq::fail(q.code(), weight_name(l, kind) + ": " + q.message());
    ledger->record(index_of(l, kind), q->report.bits.full_bits());
    m.set_linear(l, kind, std::make_unique<packed_linear>(q->packed));
    out.tensors.push_back({weight_name(l, kind), std::move(q->packed), std::move(q->report)});
    if (opt.progress) opt.progress(static_cast<index_t>(out.tensors.size()), total);
    return {};
  };

  if (!pipeline::needs_calibration(opt.method)) {
    for (index_t l = 0; l < m.layer_count(); ++l)
      for (int k = 0; k < linear_kinds; ++k) {
        const auto kind = static_cast<linear_kind>(k);
        const dense_linear* dense = m.layer(l).dense(kind);
        SAGEPTQ_ASSERT(dense != nullptr);
        auto method = ledger->method_for(index_of(l, kind));
        if (!method.ok()) return method.as_outcome();
        if (auto ok = finish(l, kind, pipeline::quantize_matrix(dense->weight(), nullptr, *method, exec)); !ok)
          return ok;
      }
    return out;
  }

  if (windows.count() < 1 || windows.context > cfg.max_position_embeddings || opt.chunk_sequences < 1)
    return sageptq::fail(status::invalid_argument, "calibration needs at least one window of at most " +
                                                       std::to_string(cfg.max_position_embeddings) +
                                                       " tokens and chunk_sequences >= 1");
  auto calibrator = pipeline::layer_calibrator::create(pipeline::llama_layer_plan(), opt.method, opt.calibration);
  if (!calibrator.ok()) return calibrator.as_outcome();

  const index_t context = windows.context, sequences = windows.count(), dim = cfg.hidden_size;
  std::vector<float> hidden(static_cast<std::size_t>(sequences * context * dim));
  for (index_t s = 0; s < sequences; ++s)
    m.embed(windows.window(s), sageptq::make_matrix_view(hidden.data() + s * context * dim, context, dim));

  const index_t chunk = std::min(opt.chunk_sequences, sequences);
  std::vector<kv_block> blocks(static_cast<std::size_t>(chunk), make_kv_block(cfg, context));
  std::vector<kv_block*> caches;
  for (auto& b : blocks) caches.push_back(&b);
  std::vector<float> scratch;
  // Runs decoder layer l over every window in chunks: on a copy of the hidden states with `hook`, or in place.
  const auto run_layer = [&](index_t l, const linear_input_hook& hook, bool in_place) {
    for (index_t s0 = 0; s0 < sequences; s0 += chunk) {
      const index_t n = std::min(chunk, sequences - s0);
      float* rows = hidden.data() + s0 * context * dim;
      if (!in_place) {
        scratch.assign(rows, rows + n * context * dim);
        rows = scratch.data();
      }
      m.forward_layer(l, sageptq::make_matrix_view(rows, n * context, dim),
                      std::span<kv_block* const>(caches.data(), static_cast<std::size_t>(n)), 0, exec, hook);
    }
  };

  for (index_t l = 0; l < m.layer_count(); ++l) {
    for (index_t p = 0; p < calibrator->passes(); ++p) {
      if (auto ok = calibrator->begin_pass(l, p); !ok) return ok;
      sageptq::outcome observed;
      run_layer(l, [&](const linear_input& in) {
        if (observed.ok()) observed = calibrator->observe(plan_name(in.kind), in.x, exec);
      }, false);
      if (!observed.ok()) return sageptq::fail(observed.code(), "layer " + std::to_string(l) + ": " + observed.message());
      for (const std::string& name : calibrator->pass_sublayers(p)) {
        const linear_kind kind = kind_of_plan_name(name);
        const dense_linear* dense = m.layer(l).dense(kind);
        SAGEPTQ_ASSERT(dense != nullptr);
        auto method = ledger->method_for(index_of(l, kind));
        if (!method.ok()) return method.as_outcome();
        if (auto ok = finish(l, kind, calibrator->quantize(name, dense->weight(), *method, exec)); !ok) return ok;
      }
    }
    run_layer(l, {}, true);  // the next layer's inputs, through the quantized layer
  }
  out.peak_statistics_bytes = calibrator->peak_statistics_bytes();
  return out;
}

}  // namespace llama
