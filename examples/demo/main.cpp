// sageptq demo: quantize one LLM-like linear layer with every method the library has and print, for each, the full
// bits per weight (every stored bit), the paper-style bits per weight, the relative output error ||(W-Q)X||/||WX||
// on the layer's calibration activations, and the time it took.
//
// With no arguments it uses an embedded default: a seeded synthetic layer (heavy-tailed weights, a few outlier input
// channels, correlated activations with outliers). Options: --rows N --cols N --samples N --seed S --threads T.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sageptq/pipeline/quantize_matrix.hpp>
#include <sageptq/sageptq.hpp>

namespace {

struct options {
  sageptq::synthetic::layer_config layer;
  unsigned threads = 2;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "demo: %s\nusage: demo [--rows N] [--cols N] [--samples N] [--seed S] [--threads T]\n", why);
  std::exit(2);
}

options parse(int argc, char** argv) {
  options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(("missing value for " + flag).c_str());
    char* end = nullptr;
    const long long value = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0' || value <= 0) usage(("bad value for " + flag).c_str());
    if (flag == "--rows") opt.layer.rows = value;
    else if (flag == "--cols") opt.layer.cols = value;
    else if (flag == "--samples") opt.layer.samples = value;
    else if (flag == "--seed") opt.layer.seed = static_cast<std::uint64_t>(value);
    else if (flag == "--threads") opt.threads = static_cast<unsigned>(value);
    else usage(("unknown option " + flag).c_str());
  }
  return opt;
}

}  // namespace

int main(int argc, char** argv) {
  const options opt = parse(argc, argv);
  const sageptq::thread_executor exec(opt.threads);
  const auto layer = sageptq::synthetic::make_layer(opt.layer);
  std::printf("synthetic layer %lld x %lld, %lld calibration tokens, seed %llu\n\n",
              static_cast<long long>(layer.rows), static_cast<long long>(layer.cols),
              static_cast<long long>(layer.samples), static_cast<unsigned long long>(opt.layer.seed));

  // Calibration statistics of the layer's inputs, shared by every calibrated method.
  sageptq::calib::hessian_accumulator hessian(layer.cols);
  if (auto ok = hessian.add_batch(layer.activation_view(), exec); !ok) usage(ok.message().c_str());
  auto factor = sageptq::calib::prepare(hessian, {}, exec);
  if (!factor.has_value()) usage(factor.message().c_str());

  struct named {
    const char* label;
    const char* method;
    sageptq::pipeline::method_options options;
  };
  const named methods[] = {
      {"q1_0", "q1_0", {}},
      {"rtn 1-bit g128", "rtn", {.bits = 1, .group = 128}},
      {"rtn 2-bit g128", "rtn", {.bits = 2, .group = 128}},
      {"gptq 2-bit g128", "gptq", {.bits = 2, .group = 128}},
      {"gptq 2-bit per-channel", "gptq", {.bits = 2, .group = 0}},
      {"gptq 3-bit per-channel", "gptq", {.bits = 3, .group = 0}},
      {"septq 2-bit keep 1%", "septq", {.bits = 2}},
      {"billm", "billm", {}},
      {"sage @1.1 bpw", "sage", {.target_bpw = 1.1}},
      {"sage @1.5 bpw", "sage", {.target_bpw = 1.5}},
      {"sage @2.0 bpw", "sage", {.target_bpw = 2.0}},
  };
  std::printf("%-24s %9s %10s %12s %8s\n", "method", "full_bpw", "paper_bpw", "rel_out_err", "time_s");
  for (const named& m : methods) {
    auto method = sageptq::pipeline::make_method(m.method, m.options);
    if (!method.ok()) usage(method.message().c_str());
    auto q = sageptq::pipeline::quantize_matrix(layer.weight_view(), &*factor, *method, exec);
    if (!q.has_value()) usage(q.message().c_str());
    const double err = sageptq::quant::relative_output_error(
        layer.weight_view(), sageptq::make_matrix_view(q->dequantized.data(), layer.rows, layer.cols),
        layer.activation_view(), exec);
    std::printf("%-24s %9.4f %10.4f %12.4f %8.2f\n", m.label, q->report.bits.full_bpw(), q->report.bits.paper_bpw(),
                err, q->report.times.total());
  }
  return 0;
}
