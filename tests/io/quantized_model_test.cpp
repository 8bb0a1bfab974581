#include <doctest/doctest.h>

#include <sageptq/core/random.hpp>
#include <sageptq/io/quantized_model.hpp>
#include <sageptq/io/safetensors_writer.hpp>
#include <sageptq/io/tokens.hpp>
#include <sageptq/pipeline/calibrate.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <utility>
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

/// Columns [begin, end) of the rows x cols matrix `w` quantized with `method` (calibrated on seeded random inputs),
/// as the column part [begin, end) of `name`, or as the whole weight `name` when `whole`.
io::quantized_tensor quantized_columns(const std::vector<float>& w, index_t rows, index_t cols, index_t begin, index_t end,
                                       const pipeline::method& method, const std::string& name, bool whole = false) {
  const index_t width = end - begin;
  std::vector<float> part(static_cast<std::size_t>(rows * width));
  for (index_t r = 0; r < rows; ++r)
    std::copy_n(w.begin() + r * cols + begin, width, part.begin() + r * width);
  random_generator rng(static_cast<std::uint64_t>(11 + begin));
  std::vector<float> x(static_cast<std::size_t>(400 * width));
  for (float& v : x) v = static_cast<float>(rng.uniform() * 2 - 1);
  calib::hessian_accumulator acc(width);
  REQUIRE(acc.add_batch(make_matrix_view(x.data(), 400, width)).ok());
  const auto factor = calib::prepare(acc);
  REQUIRE(factor.ok());
  auto q = pipeline::quantize_matrix(make_matrix_view(part.data(), rows, width), &*factor, method);
  REQUIRE_MESSAGE(q.ok(), q.message());
  io::quantized_tensor t{name, std::move(q->packed), std::move(q->report)};
  if (!whole) t.columns = io::column_range{begin, end, cols};
  return t;
}

std::vector<float> random_matrix(index_t rows, index_t cols, std::uint64_t seed) {
  random_generator rng(seed);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (float& v : w) v = static_cast<float>(rng.uniform() * 2 - 1);
  return w;
}

/// The decoded parts side by side, rows x (sum of widths).
std::vector<float> decode_parts(const std::vector<const io::quantized_tensor*>& parts) {
  const index_t rows = io::packed_shape(parts.front()->packed).first;
  index_t cols = 0;
  for (const auto* p : parts) cols += io::packed_shape(p->packed).second;
  std::vector<float> out(static_cast<std::size_t>(rows * cols));
  index_t at = 0;
  for (const auto* p : parts) {
    const index_t width = io::packed_shape(p->packed).second;
    const auto d = io::decode_packed(p->packed);
    for (index_t r = 0; r < rows; ++r) std::copy_n(d.begin() + r * width, width, out.begin() + r * cols + at);
    at += width;
  }
  return out;
}

int format_version_of(const std::filesystem::path& file) {
  const auto f = io::safetensors_file::open(file);
  REQUIRE(f.ok());
  return nlohmann::json::parse(f->metadata().at("sageptq")).at("format_version").get<int>();
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

TEST_CASE("quantized model file: a weight stored as column parts of different formats round trips") {
  const index_t rows = 24, cols = 512;
  const auto w = random_matrix(rows, cols, 6), v = random_matrix(rows, 130, 7);
  io::quantized_model model;
  model.method = "toga";
  model.config_json = "{}";
  // Not in column order: the file keeps this order, find_parts gives column order.
  model.packed.push_back(quantized_columns(w, rows, cols, 96, 256, method_named("sage", {}, 4.0), "w"));
  model.packed.push_back(quantized_columns(w, rows, cols, 0, 96, method_named("rtn", 2), "w"));
  model.packed.push_back(quantized_columns(v, rows, 130, 0, 130, method_named("gptq", 3), "v", true));
  model.packed.push_back(quantized_columns(w, rows, cols, 256, 512, method_named("q1_0"), "w"));
  REQUIRE(model.find_packed("w") == nullptr);
  REQUIRE(model.find_parts("w").size() == 3);
  CHECK(model.find_parts("w")[0] == &model.packed[1]);
  CHECK(model.find_parts("v") == std::vector<const io::quantized_tensor*>{&model.packed[2]});
  CHECK(model.find_parts("u").empty());
  CHECK(model.packed[0].key() == "w.columns.96");

  sageptq_test::temp_dir dir;
  REQUIRE(io::write_quantized_model(dir / "parts.safetensors", model).ok());
  CHECK(format_version_of(dir / "parts.safetensors") == 2);
  const auto stored = io::safetensors_file::open(dir / "parts.safetensors");
  REQUIRE(stored.ok());
  CHECK(stored->find("w.columns.96") != nullptr);        // sage: the serialized bytes under the key
  CHECK(stored->find("w.columns.0.codes") != nullptr);   // rtn: its arrays under "<key>.<array>"
  CHECK(stored->find("w.columns.256.signs") != nullptr);  // q1_0
  CHECK(stored->find("v.codes") != nullptr);

  const auto back = io::read_quantized_model(dir / "parts.safetensors");
  REQUIRE_MESSAGE(back.ok(), back.message());
  REQUIRE(back->packed.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(back->packed[i].name == model.packed[i].name);
    CHECK(back->packed[i].columns == model.packed[i].columns);
    CHECK(back->packed[i].packed.index() == model.packed[i].packed.index());
    CHECK(io::decode_packed(back->packed[i].packed) == io::decode_packed(model.packed[i].packed));
    CHECK(back->packed[i].report.bits.full_bits() == io::packed_bits(model.packed[i].packed).full_bits());
  }
  const auto parts = back->find_parts("w");
  REQUIRE(parts.size() == 3);
  CHECK(parts[0]->columns == io::column_range{0, 96, 512});
  CHECK(parts[1]->columns == io::column_range{96, 256, 512});
  CHECK(parts[2]->columns == io::column_range{256, 512, 512});
  CHECK(parts[1]->packed.index() == 4);  // sage
  CHECK(back->find_packed("w") == nullptr);
  CHECK(back->find_packed("v") == &back->packed[2]);
  CHECK(back->total_bits().full_bits() == model.total_bits().full_bits());
  CHECK(model.total_bits().full_bits() == io::packed_bits(model.packed[0].packed).full_bits() +
                                              io::packed_bits(model.packed[1].packed).full_bits() +
                                              io::packed_bits(model.packed[2].packed).full_bits() +
                                              io::packed_bits(model.packed[3].packed).full_bits());

  // Only whole tensors: still format version 1.
  model.packed.erase(model.packed.begin() + 3);
  model.packed.erase(model.packed.begin(), model.packed.begin() + 2);
  REQUIRE(io::write_quantized_model(dir / "whole.safetensors", model).ok());
  CHECK(format_version_of(dir / "whole.safetensors") == 1);
  CHECK(io::read_quantized_model(dir / "whole.safetensors").ok());
}

TEST_CASE("quantized model file: column parts that do not tile their weight are refused") {
  const index_t rows = 16, cols = 300;
  const auto w = random_matrix(rows, cols, 8);
  const auto rtn2 = method_named("rtn", 2);
  sageptq_test::temp_dir dir;
  io::quantized_model model;
  model.method = "toga";
  model.config_json = "{}";
  model.packed = {quantized_columns(w, rows, cols, 0, 100, rtn2, "w"), quantized_columns(w, rows, cols, 100, 300, rtn2, "w"),
                  quantized_columns(w, rows, cols, 0, 300, method_named("q1_0"), "v", true)};
  REQUIRE(io::write_quantized_model(dir / "good.safetensors", model).ok());

  SUBCASE("on write: invalid_argument, nothing written") {
    const auto refused = [&](io::quantized_model m, const std::string& message) {
      const auto file = dir / "bad.safetensors";
      const auto r = io::write_quantized_model(file, m);
      CHECK(r.code() == status::invalid_argument);
      CHECK_MESSAGE(r.message().find(message) != std::string::npos, r.message());
      CHECK(!std::filesystem::exists(file));
    };
    auto gap = model;
    gap.packed[1] = quantized_columns(w, rows, cols, 120, 300, rtn2, "w");
    refused(gap, "column parts leave columns [100, 120) uncovered");
    auto overlap = model;
    overlap.packed[1] = quantized_columns(w, rows, cols, 90, 300, rtn2, "w");
    refused(overlap, "column parts overlap on columns [90, 100)");
    auto short_end = model;
    short_end.packed.erase(short_end.packed.begin() + 1);
    refused(short_end, "column parts leave columns [100, 300) uncovered");
    auto wrong_width = model;
    wrong_width.packed[1].columns->begin = 101;
    refused(wrong_width, "column part [101, 300) packs 200 columns, not 199");
    auto mixed = model;
    mixed.packed[2].name = "w";
    refused(mixed, "weight \"w\" is stored both whole and in column parts");
    auto twice = model;
    twice.packed.push_back(twice.packed[2]);
    refused(twice, "weight \"v\" is listed twice");
    auto rows_differ = model;
    rows_differ.packed[1] = quantized_columns(random_matrix(rows + 1, cols, 9), rows + 1, cols, 100, 300, rtn2, "w");
    refused(rows_differ, "has column parts of 16 and 17 rows");
    auto widths_differ = model;
    widths_differ.packed[1].columns->of = 400;
    refused(widths_differ, "has column parts of widths 300 and 400");
    auto empty = model;
    empty.packed[0].columns->end = 0;
    refused(empty, "not 0 <= begin < end <= of");
  }

  SUBCASE("on read: malformed_input") {
    const auto good = io::safetensors_file::open(dir / "good.safetensors");
    REQUIRE(good.ok());
    const auto meta = nlohmann::ordered_json::parse(good->metadata().at("sageptq"));
    REQUIRE(meta["format_version"] == 2);
    REQUIRE(meta["tensors"][1]["columns"] == nlohmann::ordered_json::array({100, 300, 300}));
    // The good file's tensors, plus copies of those under `from` (the key and its arrays) under `to`.
    const auto rewrite = [&](const nlohmann::ordered_json& metadata, const std::string& from = "", const std::string& to = "") {
      io::safetensors_writer writer;
      for (const auto& t : good->tensors()) {
        if (t.name.starts_with("__")) continue;
        REQUIRE(writer.add(t.name, t.type, t.shape, t.bytes).ok());
        if (!from.empty() && (t.name == from || t.name.starts_with(from + ".")))
          REQUIRE(writer.add(to + t.name.substr(from.size()), t.type, t.shape, t.bytes).ok());
      }
      writer.set_metadata("sageptq", metadata.dump());
      writer.set_metadata("config", "{}");
      REQUIRE(writer.write(dir / "bad.safetensors").ok());
      return io::read_quantized_model(dir / "bad.safetensors");
    };
    const auto malformed = [](const result<io::quantized_model>& r, const std::string& message) {
      CHECK(r.code() == status::malformed_input);
      CHECK_MESSAGE(r.message().find(message) != std::string::npos, r.message());
    };
    REQUIRE(rewrite(meta).ok());

    auto gap = meta;
    gap["tensors"].erase(0);
    malformed(rewrite(gap), "weight \"w\" column parts leave columns [0, 100) uncovered");
    auto overlap = meta;  // a third part [50, 150): a copy of [0, 100) stored at 50
    overlap["tensors"].push_back(meta["tensors"][0]);
    overlap["tensors"][3]["columns"] = {50, 150, 300};
    malformed(rewrite(overlap, "w.columns.0", "w.columns.50"), "column parts overlap on columns [50, 100)");
    auto wrong_width = meta;
    wrong_width["tensors"][0]["columns"] = {0, 99, 300};
    malformed(rewrite(wrong_width), "column part [0, 99) packs 100 columns, not 99");
    auto mixed = meta;  // "v" stored again as the whole "w"
    mixed["tensors"].push_back(meta["tensors"][2]);
    mixed["tensors"][3]["name"] = "w";
    malformed(rewrite(mixed, "v", "w"), "weight \"w\" is stored both whole and in column parts");
    auto twice = meta;
    twice["tensors"].push_back(meta["tensors"][1]);
    malformed(rewrite(twice), "packed tensor \"w.columns.100\" is listed twice");
    auto not_three = meta;
    not_three["tensors"][0]["columns"] = {0, 100};
    malformed(rewrite(not_three), "columns must be three non-negative integers");
    auto reversed = meta;
    reversed["tensors"][0]["columns"] = {100, 0, 300};
    malformed(rewrite(reversed), "are not begin < end <= of");
    auto version_1 = meta;
    version_1["format_version"] = 1;
    malformed(rewrite(version_1), "need format version 2");
    auto newer = meta;
    newer["format_version"] = 3;
    CHECK(rewrite(newer).code() == status::unsupported);
  }
}

TEST_CASE("column_parts_linear: the packed path agrees with the decoded f32 path and sums the parts' products") {
  const index_t rows = 48, cols = 512;
  const auto w = random_matrix(rows, cols, 10);
  const index_t bounds[] = {0, 96, 256, 512};  // ragged widths 96, 160, 256
  const pipeline::method methods[] = {method_named("q1_0"), method_named("sage", {}, 4.0), method_named("rtn", 2)};
  std::vector<io::quantized_tensor> tensors;
  for (int p = 0; p < 3; ++p) tensors.push_back(quantized_columns(w, rows, cols, bounds[p], bounds[p + 1], methods[p], "w"));
  io::quantized_model model;
  model.packed = tensors;
  auto made = llama::make_packed_linear(model.find_parts("w"));
  REQUIRE_MESSAGE(made.ok(), made.message());
  const auto* layer = dynamic_cast<const llama::column_parts_linear*>(made->get());
  REQUIRE(layer);
  CHECK(layer->in_features() == cols);
  CHECK(layer->out_features() == rows);
  REQUIRE(layer->parts().size() == 3);
  const auto decoded = decode_parts({&tensors[0], &tensors[1], &tensors[2]});
  CHECK(std::equal(decoded.begin(), decoded.end(), layer->decoded().data));

  const auto isa = cpu::active_isa();
  REQUIRE(isa.ok());
  const thread_executor exec(2);
  for (index_t batch = 1; batch <= cpu::max_batch; ++batch) {
    CAPTURE(batch);
    const auto x = random_matrix(batch, cols, static_cast<std::uint64_t>(20 + batch));
    const matrix_view<const float> xv = make_matrix_view(x.data(), batch, cols);
    std::vector<float> packed(static_cast<std::size_t>(batch * rows)), dense(packed.size()), sum(packed.size()),
        forward(packed.size());
    REQUIRE(layer->gemv(xv, make_matrix_view(packed.data(), batch, rows), exec));
    layer->forward(xv, make_matrix_view(forward.data(), batch, rows), exec);
    CHECK(forward == packed);
    llama::matmul_xwt(xv, layer->decoded(), make_matrix_view(dense.data(), batch, rows), exec);

    // The sum of the parts' own products (contiguous copies of x's columns), in column order.
    for (int p = 0; p < 3; ++p) {
      const index_t width = bounds[p + 1] - bounds[p];
      std::vector<float> xp(static_cast<std::size_t>(batch * width)), yp(static_cast<std::size_t>(batch * rows));
      for (index_t r = 0; r < batch; ++r) std::copy_n(x.begin() + r * cols + bounds[p], width, xp.begin() + r * width);
      const llama::packed_linear part(tensors[static_cast<std::size_t>(p)].packed);
      REQUIRE(part.gemv(make_matrix_view(xp.data(), batch, width), make_matrix_view(yp.data(), batch, rows), exec));
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] = p == 0 ? yp[i] : sum[i] + yp[i];
    }
    CHECK(packed == sum);

    // The bound of the packed_linear test over all 512 columns, plus one rounding per added part; on the avx512_vnni
    // path the binary parts (q1_0; sage when its sign rows are whole int8 blocks) take x rounded to int8, at most
    // width max_j |w_j| d (1/2 + 2^-12) with d = max |x| / 127 over the part's columns.
    for (index_t r = 0; r < batch; ++r)
      for (index_t c = 0; c < rows; ++c) {
        double magnitude = 0, int8_bound = 0;
        for (int p = 0; p < 3; ++p) {
          double d = 0, w_max = 0;
          for (index_t j = bounds[p]; j < bounds[p + 1]; ++j) {
            const double wj = layer->decoded()(c, j), xj = x[static_cast<std::size_t>(r * cols + j)];
            magnitude += std::abs(wj * xj);
            d = std::max(d, std::abs(xj) / 127);
            w_max = std::max(w_max, std::abs(wj));
          }
          if (*isa == cpu::isa::avx512_vnni && p < 2)
            int8_bound += static_cast<double>(bounds[p + 1] - bounds[p]) * w_max * d * (0.5 + 0x1p-12);
        }
        const auto at = static_cast<std::size_t>(r * rows + c);
        CHECK(std::abs(packed[at] - dense[at]) <= 2 * (cols + 8 + 3) * 0x1p-24 * magnitude + int8_bound + 1e-30);
      }
  }

  // Longer batches: the decoded matmul.
  const auto x = random_matrix(12, cols, 30);
  std::vector<float> y(12 * rows), dense(12 * rows);
  layer->forward(make_matrix_view(x.data(), 12, cols), make_matrix_view(y.data(), 12, rows), exec);
  llama::matmul_xwt(make_matrix_view(x.data(), 12, cols), layer->decoded(), make_matrix_view(dense.data(), 12, rows), exec);
  CHECK(y == dense);

  // One whole tensor: a packed_linear. Parts that leave a gap or do not reach the width: invalid_argument.
  io::quantized_tensor whole = tensors[0];
  whole.columns.reset();
  const io::quantized_tensor* one[] = {&whole};
  auto single = llama::make_packed_linear(one);
  REQUIRE(single.ok());
  CHECK(dynamic_cast<const llama::packed_linear*>(single->get()) != nullptr);
  const io::quantized_tensor* gap[] = {&tensors[0], &tensors[2]};
  CHECK(llama::make_packed_linear(gap).code() == status::invalid_argument);
  const io::quantized_tensor* short_of[] = {&tensors[0], &tensors[1]};
  CHECK(llama::make_packed_linear(short_of).code() == status::invalid_argument);
  io::quantized_tensor other = tensors[1];
  other.name = "u";
  const io::quantized_tensor* two_weights[] = {&tensors[0], &other, &tensors[2]};
  CHECK(llama::make_packed_linear(two_weights).code() == status::invalid_argument);
  CHECK(llama::make_packed_linear({}).code() == status::invalid_argument);
  CHECK(llama::column_parts_linear::create({{0, tensors[0].packed}, {90, tensors[1].packed}}).code() ==
        status::invalid_argument);
}

TEST_CASE("quantized model file: stories260k with column-part weights assembles, loads and runs") {
  REQUIRE_MESSAGE(std::filesystem::exists(stories / "model.safetensors"), "missing shared model " << stories);
  const auto tokens = eval_tokens();
  auto m = llama::model::load(stories);
  REQUIRE(m.ok());
  const auto rtn2 = method_named("rtn", 2);
  std::vector<io::quantized_tensor> packed;
  for (index_t l = 0; l < m->layer_count(); ++l)
    for (int k = 0; k < llama::linear_kinds; ++k) {
      const auto kind = static_cast<llama::linear_kind>(k);
      const auto name = llama::weight_name(l, kind);
      const auto view = m->layer(l).dense(kind)->weight();
      const std::vector<float> w(view.data, view.data + view.rows() * view.cols());
      if (l == 0 && kind == llama::linear_kind::gate) {  // 172 x 64 in two parts
        packed.push_back(quantized_columns(w, view.rows(), view.cols(), 40, 64, method_named("q1_0"), name));
        packed.push_back(quantized_columns(w, view.rows(), view.cols(), 0, 40, rtn2, name));
      } else if (l == 1 && kind == llama::linear_kind::down) {  // 64 x 172 in three parts
        packed.push_back(quantized_columns(w, view.rows(), view.cols(), 0, 64, rtn2, name));
        packed.push_back(quantized_columns(w, view.rows(), view.cols(), 64, 100, method_named("q1_0"), name));
        packed.push_back(quantized_columns(w, view.rows(), view.cols(), 100, 172, method_named("gptq", 3), name));
      } else {
        packed.push_back(quantized_columns(w, view.rows(), view.cols(), 0, view.cols(), rtn2, name, true));
      }
    }
  auto contents = llama::assemble_quantized_model(stories, "mixed", "{}", packed);
  REQUIRE(contents.ok());
  CHECK(contents->unquantized.size() == 1 + 1 + 2 * 5);  // no weight stored in parts is copied as unquantized
  sageptq_test::temp_dir dir;
  REQUIRE(io::write_quantized_model(dir / "parts.safetensors", *contents).ok());
  auto loaded = llama::load_quantized_model(dir / "parts.safetensors");
  REQUIRE_MESSAGE(loaded.ok(), loaded.message());
  CHECK(loaded->file.packed.size() == 35 + 1 + 2);
  CHECK(dynamic_cast<const llama::column_parts_linear*>(&loaded->engine.layer(1).linear(llama::linear_kind::down)) !=
        nullptr);

  // The same weights, decoded, in dense layers: the same logits (64-token windows take the decoded matmul).
  for (index_t l = 0; l < m->layer_count(); ++l)
    for (int k = 0; k < llama::linear_kinds; ++k) {
      const auto kind = static_cast<llama::linear_kind>(k);
      const auto parts = contents->find_parts(llama::weight_name(l, kind));
      const auto [rows, cols] = std::pair(m->layer(l).linear(kind).out_features(), m->layer(l).linear(kind).in_features());
      m->set_linear(l, kind, std::make_unique<llama::dense_linear>(rows, cols, decode_parts(parts)));
    }
  CHECK(logits_of(loaded->engine, tokens) == logits_of(*m, tokens));
}
