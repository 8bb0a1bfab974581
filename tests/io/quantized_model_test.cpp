#include <doctest/doctest.h>

#include <sageptq/core/random.hpp>
#include <sageptq/io/quantized_model.hpp>
#include <sageptq/io/safetensors_writer.hpp>
#include <sageptq/io/tokens.hpp>
#include <sageptq/pipeline/calibrate.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../../examples/llama/quantize.hpp"
#include "../../examples/llama/quantized_model.hpp"
#include "temp_dir.hpp"

namespace {

using namespace sageptq;
const std::filesystem::path shared = SAGEPTQ_SHARED_DIR;
const std::filesystem::path stories = shared / "models/stories260k";

pipeline::method method_named(const char* name, std::optional<int> bits = {}, std::optional<double> target = {}) {
  pipeline::method_options opt;
  opt.bits = bits;
  opt.target_bpw = target;
  return pipeline::make_method(name, opt).value();
}

/// Logits of the first 64 tokens of the eval file.
std::vector<float> logits_of(const llama::model& m, std::span<const std::uint16_t> tokens) {
  const thread_executor exec(2);
  llama::kv_cache cache(m.config(), 64);
  std::vector<float> out(static_cast<std::size_t>(64 * m.config().vocab_size));
  m.forward(tokens.first(64), cache, make_matrix_view(out.data(), 64, m.config().vocab_size), exec);
  return out;
}

std::vector<std::uint16_t> eval_tokens() {
  const auto path = shared / "data/tinystories/eval.tok512.u16.bin";
  REQUIRE_MESSAGE(std::filesystem::exists(path), "missing shared file " << path);
  auto t = io::read_tokens(path, 512);
  REQUIRE(t.ok());
  return std::move(t).value();
}

}  // namespace

TEST_CASE("quantized model file round trip: stories260k with rtn, q1_0 and sage gives the same logits") {
  REQUIRE_MESSAGE(std::filesystem::exists(stories / "model.safetensors"), "missing shared model " << stories);
  const auto calib_path = shared / "data/tinystories/calib.tok512.u16.bin";
  REQUIRE_MESSAGE(std::filesystem::exists(calib_path), "missing shared file " << calib_path);
  const auto tokens = eval_tokens();
  const auto calib = io::read_tokens(calib_path, 512);
  REQUIRE(calib.ok());
  pipeline::window_options wopt;
  wopt.count = 4;
  wopt.context = 64;
  const auto windows = pipeline::sample_windows(*calib, wopt);
  REQUIRE(windows.ok());
  const thread_executor exec(2);
  sageptq_test::temp_dir dir;

  for (const auto& method : {method_named("rtn", 2), method_named("q1_0"), method_named("sage", {}, 4.0)}) {
    const std::string name = pipeline::method_name(method);
    CAPTURE(name);
    auto m = llama::model::load(stories);
    REQUIRE(m.ok());
    llama::quantize_options opt;
    opt.method = method;
    auto q = llama::quantize_model(*m, *windows, opt, exec);
    REQUIRE_MESSAGE(q.ok(), q.message());
    const auto expected = logits_of(*m, tokens);

    auto contents = llama::assemble_quantized_model(stories, name, "{\"bits\":2}", q->tensors);
    REQUIRE(contents.ok());
    CHECK(contents->unquantized.size() == 1 + 1 + 2 * 5);  // embeddings, final norm, two norms per layer
    const auto file = dir / (name + ".safetensors");
    REQUIRE(io::write_quantized_model(file, *contents).ok());

    auto loaded = llama::load_quantized_model(file);
    REQUIRE_MESSAGE(loaded.ok(), loaded.message());
    CHECK(loaded->file.method == name);
    CHECK(loaded->file.source_fingerprint == contents->source_fingerprint);
    CHECK(loaded->file.packed.size() == 35);
    CHECK(loaded->file.total_bits().full_bits() == contents->total_bits().full_bits());
    CHECK(loaded->file.packed[4].report.relative_error == q->tensors[4].report.relative_error);
    for (std::size_t i = 0; i < q->tensors.size(); ++i)
      CHECK(io::decode_packed(loaded->file.packed[i].packed) == io::decode_packed(q->tensors[i].packed));
    CHECK(logits_of(loaded->engine, tokens) == expected);
  }
}

TEST_CASE("packed_linear: the packed GEMV path agrees with the decoded f32 path") {
  REQUIRE_MESSAGE(std::filesystem::exists(stories / "model.safetensors"), "missing shared model " << stories);
  auto m = llama::model::load(stories);
  REQUIRE(m.ok());
  const auto& w = m->layer(0).dense(llama::linear_kind::gate)->weight();  // 172 x 64
  random_generator rng(5);
  std::vector<float> x(3 * 64);
  for (float& v : x) v = static_cast<float>(rng.uniform() * 2 - 1);
  const thread_executor exec(2);
  std::vector<float> rows(400 * 64);
  for (float& v : rows) v = static_cast<float>(rng.uniform() * 2 - 1);
  calib::hessian_accumulator acc(64);
  REQUIRE(acc.add_batch(make_matrix_view(rows.data(), 400, 64)).ok());
  const auto factor = calib::prepare(acc);
  REQUIRE(factor.ok());
  for (const auto& method : {method_named("q1_0"), method_named("rtn", 2), method_named("sage", {}, 4.0)}) {
    CAPTURE(pipeline::method_name(method));
    auto q = pipeline::quantize_matrix(w, &*factor, method, exec);
    REQUIRE(q.ok());
    const llama::packed_linear layer(q->packed);
    std::vector<float> packed(3 * 172), dense(3 * 172);
    const matrix_view<const float> xv = make_matrix_view(x.data(), 3, 64);
    REQUIRE(layer.gemv(xv, make_matrix_view(packed.data(), 3, 172), exec));
    llama::matmul_xwt(xv, layer.decoded(), make_matrix_view(dense.data(), 3, 172), exec);
    // The kernels' stated bound (cpu/gemv.hpp): (K + 8) 2^-24 sum_j |w_j x_j|, plus on the avx512_vnni path, whose
    // binary part takes x rounded to int8 (one 128-column block here, d = max |x| / 127), sum_j |w_j| d (1/2 + 2^-12).
    // That path runs q1_0 here; sage's 64-column rows are 4-byte sign rows, which take the fp32 path.
    const auto isa = cpu::active_isa();
    REQUIRE(isa.ok());
    const bool int8_x = *isa == cpu::isa::avx512_vnni && pipeline::method_name(method) == "q1_0";
    for (index_t r = 0; r < 3; ++r) {
      double d = 0;
      for (index_t j = 0; j < 64; ++j) d = std::max(d, std::abs(double{x[static_cast<std::size_t>(r * 64 + j)]}) / 127);
      for (index_t c = 0; c < 172; ++c) {
        double magnitude = 0, weight_sum = 0;
        for (index_t j = 0; j < 64; ++j) {
          magnitude += std::abs(layer.decoded()(c, j) * x[static_cast<std::size_t>(r * 64 + j)]);
          weight_sum += std::abs(layer.decoded()(c, j));
        }
        const double int8_bound = int8_x ? weight_sum * d * (0.5 + 0x1p-12) : 0;
        CHECK(std::abs(packed[static_cast<std::size_t>(r * 172 + c)] - dense[static_cast<std::size_t>(r * 172 + c)]) <=
              2 * (64 + 8) * 0x1p-24 * magnitude + int8_bound + 1e-30);
      }
    }
  }
}

TEST_CASE("quantized model file: septq and billm matrices round trip through their arrays") {
  random_generator rng(3);
  const index_t rows = 20, cols = 150;
  std::vector<float> w(static_cast<std::size_t>(rows * cols)), x(static_cast<std::size_t>(400 * cols));
  for (float& v : w) v = static_cast<float>(rng.uniform() * 2 - 1);
  for (float& v : x) v = static_cast<float>(rng.uniform() * 2 - 1);
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), 400, cols)).ok());
  const auto factor = calib::prepare(acc);
  REQUIRE(factor.ok());
  io::quantized_model model;
  model.method = "mixed";
  model.config_json = "{}";
  for (const auto& method : {method_named("septq", 2), method_named("billm"), method_named("gptq", 3)}) {
    auto q = pipeline::quantize_matrix(make_matrix_view(w.data(), rows, cols), &*factor, method);
    REQUIRE_MESSAGE(q.ok(), q.message());
    model.packed.push_back({"m." + pipeline::method_name(method), std::move(q->packed), std::move(q->report)});
  }
  sageptq_test::temp_dir dir;
  REQUIRE(io::write_quantized_model(dir / "m.safetensors", model).ok());
  const auto back = io::read_quantized_model(dir / "m.safetensors");
  REQUIRE_MESSAGE(back.ok(), back.message());
  REQUIRE(back->packed.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(back->packed[i].name == model.packed[i].name);
    CHECK(back->packed[i].packed.index() == model.packed[i].packed.index());
    CHECK(io::decode_packed(back->packed[i].packed) == io::decode_packed(model.packed[i].packed));
    CHECK(back->packed[i].report.bits.full_bits() == model.packed[i].report.bits.full_bits());
  }
}

TEST_CASE("quantized model file: malformed files give clear errors") {
  sageptq_test::temp_dir dir;
  random_generator rng(4);
  std::vector<float> w(16 * 130);
  for (float& v : w) v = static_cast<float>(rng.uniform() * 2 - 1);
  io::quantized_model model;
  model.method = "rtn";
  model.config_json = "{}";
  auto q = pipeline::quantize_matrix(make_matrix_view(w.data(), 16, 130), nullptr, method_named("rtn", 2));
  REQUIRE(q.ok());
  model.packed.push_back({"w", std::move(q->packed), std::move(q->report)});
  REQUIRE(io::write_quantized_model(dir / "good.safetensors", model).ok());
  REQUIRE(io::read_quantized_model(dir / "good.safetensors").ok());

  SUBCASE("not a quantized model") {
    REQUIRE_MESSAGE(std::filesystem::exists(stories / "model.safetensors"), "missing shared model " << stories);
    const auto r = io::read_quantized_model(stories / "model.safetensors");
    CHECK(r.code() == status::malformed_input);
    CHECK(r.message().find("not a sageptq quantized model") != std::string::npos);
  }
  SUBCASE("truncated") {
    std::ifstream in(dir / "good.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    sageptq_test::write_bytes(dir / "cut.safetensors", std::string_view(bytes).substr(0, bytes.size() - 10));
    CHECK(io::read_quantized_model(dir / "cut.safetensors").code() == status::malformed_input);
  }
  SUBCASE("an array of the wrong size, a stray byte tensor, a bad CSR") {
    const auto rewrite = [&](const std::string& metadata, const std::string& extra_name, std::span<const std::byte> extra) {
      const auto good = io::safetensors_file::open(dir / "good.safetensors");
      REQUIRE(good.ok());
      io::safetensors_writer writer;
      for (const auto& t : good->tensors())
        if (!t.name.starts_with("__")) REQUIRE(writer.add(t.name, t.type, t.shape, t.bytes).ok());
      if (!extra_name.empty()) REQUIRE(writer.add(extra_name, io::dtype::u8, {static_cast<index_t>(extra.size())}, extra).ok());
      writer.set_metadata("sageptq", metadata);
      writer.set_metadata("config", "{}");
      REQUIRE(writer.write(dir / "bad.safetensors").ok());
      return io::read_quantized_model(dir / "bad.safetensors");
    };
    const auto good = io::safetensors_file::open(dir / "good.safetensors");
    std::string meta = good->metadata().at("sageptq");
    const std::byte junk[3] = {};
    const auto stray = rewrite(meta, "stray", junk);
    CHECK(stray.code() == status::malformed_input);
    CHECK(stray.message().find("\"stray\" belongs to no packed matrix") != std::string::npos);

    std::string wrong_shape = meta;
    wrong_shape.replace(wrong_shape.find("[16,130]"), 8, "[17,130]");
    const auto r = rewrite(wrong_shape, "", {});
    CHECK(r.code() == status::malformed_input);
    CHECK(r.message().find("\"w.codes\"") != std::string::npos);

    std::string newer = meta;
    newer.replace(newer.find("\"format_version\":1"), 18, "\"format_version\":9");
    CHECK(rewrite(newer, "", {}).code() == status::unsupported);
    CHECK(rewrite("[1,2]", "", {}).code() == status::malformed_input);
  }
}
