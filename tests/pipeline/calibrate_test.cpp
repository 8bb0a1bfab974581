#include <doctest/doctest.h>

#include <sageptq/core/random.hpp>
#include <sageptq/io/tokens.hpp>
#include <sageptq/pipeline/calibrate.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "../../examples/llama/perplexity.hpp"
#include "../../examples/llama/quantize.hpp"

namespace {

using namespace sageptq;
using pipeline::layer_calibrator;
using pipeline::sequential_order;

const std::filesystem::path shared = SAGEPTQ_SHARED_DIR;

std::vector<std::uint16_t> counting_tokens(index_t n) {
  std::vector<std::uint16_t> t(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = static_cast<std::uint16_t>(i % 60000);
  return t;
}

std::vector<float> random_rows(index_t rows, index_t cols, std::uint64_t seed) {
  random_generator rng(seed);
  std::vector<float> x(static_cast<std::size_t>(rows * cols));
  for (float& v : x) v = static_cast<float>(rng.uniform() * 2 - 1);
  return x;
}

pipeline::method gptq2() {
  pipeline::method_options opt;
  opt.bits = 2;
  return pipeline::make_method("gptq", opt).value();
}

pipeline::window_options windows_of(index_t count, index_t context, std::uint64_t seed = 0,
                                    double validation_fraction = 0.1) {
  pipeline::window_options opt;
  opt.count = count;
  opt.context = context;
  opt.seed = seed;
  opt.validation_fraction = validation_fraction;
  return opt;
}

}  // namespace

TEST_CASE("sample_windows draws seeded windows from the calibration part, like GPTQ's datautils") {
  const auto tokens = counting_tokens(5000);  // token i has id i: a window is its own start
  auto opt = windows_of(64, 100, 7);
  const auto a = pipeline::sample_windows(tokens, opt);
  REQUIRE(a.ok());
  CHECK(a->count() == 64);
  CHECK(a->context == 100);
  const index_t calibration_end = 5000 - 500;
  std::vector<index_t> starts;
  for (index_t w = 0; w < a->count(); ++w) {
    const auto win = a->window(w);
    const index_t start = win[0];
    starts.push_back(start);
    CHECK(start < calibration_end - 100 - 1);  // i in [0, n - context - 1)
    for (index_t i = 0; i < 100; ++i) CHECK(win[static_cast<std::size_t>(i)] == start + i);
  }
  CHECK(std::adjacent_find(starts.begin(), starts.end()) == starts.end());  // not a constant sequence

  const auto again = pipeline::sample_windows(tokens, opt);
  CHECK(again->tokens == a->tokens);
  opt.seed = 8;
  CHECK(pipeline::sample_windows(tokens, opt)->tokens != a->tokens);

  SUBCASE("validation windows are consecutive, scored windows from the reserved tail") {
    const auto v = pipeline::validation_windows(tokens, windows_of(100, 100));
    REQUIRE(v.ok());
    CHECK(v->context == 101);
    CHECK(v->count() == (500 - 1) / 100);
    for (index_t w = 0; w < v->count(); ++w) CHECK(v->window(w)[0] == calibration_end + 100 * w);
  }
  SUBCASE("bad options and short files") {
    CHECK(pipeline::sample_windows(tokens, windows_of(0, 100)).code() == status::invalid_argument);
    CHECK(pipeline::sample_windows(tokens, windows_of(1, 100, 0, 1.0)).code() ==
          status::invalid_argument);
    CHECK(pipeline::sample_windows(counting_tokens(110), windows_of(1, 100)).code() == status::invalid_argument);
    CHECK(pipeline::validation_windows(tokens, windows_of(1, 100, 0, 0.0)).code() ==
          status::invalid_argument);
  }
}

TEST_CASE("layer_calibrator: plans, orders and misuse") {
  CHECK(layer_calibrator::create({}, gptq2()).code() == status::invalid_argument);
  CHECK(layer_calibrator::create({{{"a"}, {}}}, gptq2()).code() == status::invalid_argument);
  CHECK(layer_calibrator::create({{{"a", "b"}, {"a"}}}, gptq2()).code() == status::invalid_argument);
  CHECK(layer_calibrator::create(pipeline::llama_layer_plan(), pipeline::make_method("q1_0").value()).code() ==
        status::invalid_argument);
  CHECK(pipeline::reference_order(pipeline::make_method("billm").value()) == sequential_order::per_layer);
  CHECK(pipeline::reference_order(gptq2()) == sequential_order::true_sequential);

  auto seq = layer_calibrator::create(pipeline::llama_layer_plan(), gptq2());
  REQUIRE(seq.ok());
  CHECK(seq->passes() == 4);
  CHECK(seq->pass_sublayers(2) == std::vector<std::string>{"gate", "up"});
  auto per_layer = layer_calibrator::create(pipeline::llama_layer_plan(), gptq2(), {sequential_order::per_layer, {}});
  CHECK(per_layer->passes() == 1);
  CHECK(per_layer->pass_sublayers(0).size() == 7);

  const index_t cols = 48;
  const auto x = random_rows(300, cols, 1);
  const auto w = random_rows(32, cols, 2);
  const auto xv = make_matrix_view(x.data(), 300, cols);
  const auto wv = make_matrix_view(w.data(), 32, cols);
  REQUIRE(seq->begin_pass(0, 0).ok());
  CHECK(seq->wants("q"));
  CHECK_FALSE(seq->wants("k"));  // shares q's rows
  CHECK_FALSE(seq->wants("o"));  // a later pass
  CHECK(seq->observe("nope", xv).code() == status::invalid_argument);
  CHECK(seq->quantize("q", wv).code() == status::invalid_argument);  // nothing observed yet
  CHECK(seq->observe("o", xv).ok());                                  // ignored in pass 0
  CHECK(seq->statistics_bytes() == 0);
  CHECK(seq->observe("q", make_matrix_view(x.data(), 300, cols - 1)).ok());
  CHECK(seq->observe("q", xv).code() == status::invalid_shape);  // width changed
  CHECK(seq->quantize("o", wv).code() == status::invalid_argument);  // not in this pass
  CHECK(seq->begin_pass(0, 7).code() == status::invalid_argument);
}

TEST_CASE("layer_calibrator quantizes each stage with the Hessian of its inputs, and frees it after the stage") {
  const index_t cols = 40, rows = 24;
  const auto x1 = random_rows(200, cols, 11), x2 = random_rows(150, cols, 12);
  const auto w = random_rows(rows, cols, 13);
  const auto wv = make_matrix_view(w.data(), rows, cols);
  const thread_executor exec(2);

  // Reference: the accumulator, prepare and quantize_matrix called by hand.
  calib::hessian_accumulator acc(cols);
  REQUIRE(acc.add_batch(make_matrix_view(x1.data(), 200, cols)).ok());
  REQUIRE(acc.add_batch(make_matrix_view(x2.data(), 150, cols)).ok());
  const auto factor = calib::prepare(acc);
  REQUIRE(factor.ok());
  const auto expected = pipeline::quantize_matrix(wv, &*factor, gptq2());
  REQUIRE(expected.ok());

  auto cal = layer_calibrator::create({{{"a", "b"}, {"c"}}}, gptq2());
  REQUIRE(cal.ok());
  REQUIRE(cal->begin_pass(0, 0).ok());
  for (const char* name : {"a", "b"}) {  // b shares a's rows: reported, ignored
    REQUIRE(cal->observe(name, make_matrix_view(x1.data(), 200, cols), exec).ok());
  }
  REQUIRE(cal->observe("a", make_matrix_view(x2.data(), 150, cols), exec).ok());
  const std::size_t matrix_bytes = static_cast<std::size_t>(cols * cols) * sizeof(double);
  CHECK(cal->statistics_bytes() == matrix_bytes);
  const auto a = cal->quantize("a", wv, exec);
  REQUIRE(a.ok());
  CHECK(a->dequantized == expected->dequantized);
  CHECK(cal->statistics_bytes() == 3 * matrix_bytes);  // accumulator + prepared h and u, until b is done
  CHECK(cal->begin_pass(0, 1).code() == status::invalid_argument);  // b is still pending
  REQUIRE(cal->quantize("b", wv, exec).ok());
  CHECK(cal->quantize("b", wv, exec).code() == status::invalid_argument);  // stage freed: nothing observed
  CHECK(cal->statistics_bytes() == 0);
  CHECK(cal->peak_statistics_bytes() == 3 * matrix_bytes);
  REQUIRE(cal->begin_pass(0, 1).ok());
  CHECK(cal->wants("c"));
}

TEST_CASE("stories260k calibrated layer by layer: one decoder layer of statistics at a time, order matters") {
  const auto dir = shared / "models/stories260k";
  const auto calib_file = shared / "data/tinystories/calib.tok512.u16.bin";
  const auto eval_file = shared / "data/tinystories/eval.tok512.u16.bin";
  for (const auto& f : {dir / "model.safetensors", calib_file, eval_file})
    REQUIRE_MESSAGE(std::filesystem::exists(f), "missing shared file " << f);
  const auto calib_tokens = io::read_tokens(calib_file, 512);
  const auto eval_tokens = io::read_tokens(eval_file, 512);
  REQUIRE(calib_tokens.ok());
  REQUIRE(eval_tokens.ok());
  const auto windows = pipeline::sample_windows(*calib_tokens, windows_of(8, 128));
  REQUIRE(windows.ok());
  const thread_executor exec(2);

  const auto run = [&](sequential_order order, const pipeline::method& method) {
    auto m = llama::model::load(dir);
    REQUIRE(m.ok());
    llama::quantize_options opt;
    opt.method = method;
    opt.calibration.order = order;
    opt.chunk_sequences = 3;
    auto q = llama::quantize_model(*m, *windows, opt, exec);
    REQUIRE(q.ok());
    CHECK(q->tensors.size() == 35);
    llama::perplexity_options eval;
    eval.context = 128;
    eval.max_windows = 8;
    const auto ppl = llama::evaluate_perplexity(*m, *eval_tokens, eval, exec);
    REQUIRE(ppl.ok());
    return std::pair(std::move(q).value(), ppl->perplexity);
  };
  const auto [sequential, sequential_ppl] = run(sequential_order::true_sequential, gptq2());
  const auto [per_layer, per_layer_ppl] = run(sequential_order::per_layer, gptq2());
  pipeline::method_options per_channel;
  per_channel.bits = 2;
  per_channel.group = 1 << 20;  // one scale per row, as GPTQ's
  const auto [rtn, rtn_ppl] = run(sequential_order::true_sequential, pipeline::make_method("rtn", per_channel).value());
  CHECK(rtn.peak_statistics_bytes == 0);

  // Peak statistics: true-sequential holds one stage (accumulator + factor = 3 cols² doubles, widest input 172);
  // per_layer at most one decoder layer's: the four input groups (64, 64, 64, 172 columns) and the widest factor.
  const auto bytes = [](index_t cols) { return static_cast<std::size_t>(cols * cols) * sizeof(double); };
  CHECK(sequential.peak_statistics_bytes == 3 * bytes(172));
  CHECK(per_layer.peak_statistics_bytes <= 3 * bytes(64) + bytes(172) + 2 * bytes(172));

  // q, k, v of layer 0 see the same inputs either way; o of layer 0 sees quantized q/k/v outputs only in order.
  const auto& s = sequential.tensors;
  const auto& p = per_layer.tensors;
  CHECK(s[0].name == "model.layers.0.self_attn.q_proj.weight");
  CHECK(io::decode_packed(s[0].packed) == io::decode_packed(p[0].packed));
  CHECK(s[3].name == "model.layers.0.self_attn.o_proj.weight");
  CHECK(io::decode_packed(s[3].packed) != io::decode_packed(p[3].packed));
  CHECK(std::isfinite(sequential_ppl));
  CHECK(sequential_ppl < rtn_ppl);  // the calibration pays off
  MESSAGE("2-bit per channel, 8 windows x 128: gptq true-sequential ppl " << sequential_ppl << ", per-layer "
                                                                          << per_layer_ppl << "; rtn " << rtn_ppl);
}
