#include <doctest/doctest.h>

#include <sageptq/io/llama_config.hpp>

#include <filesystem>
#include <string>

using sageptq::status;

namespace {

const std::string base = R"("hidden_size":64,"intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,)"
                         R"("vocab_size":512,"max_position_embeddings":512)";

sageptq::result<sageptq::io::llama_config> parse(const std::string& extra) {
  return sageptq::io::parse_llama_config("{" + base + extra + "}", "config.json");
}

}  // namespace

TEST_CASE("llama_config: fields, defaults and the raw text") {
  auto cfg = parse(R"(,"num_key_value_heads":4,"rms_norm_eps":1e-5,"rope_theta":500000.0,"tie_word_embeddings":true)");
  REQUIRE_MESSAGE(cfg.ok(), cfg.message());
  CHECK(cfg->hidden_size == 64);
  CHECK(cfg->intermediate_size == 172);
  CHECK(cfg->num_hidden_layers == 5);
  CHECK(cfg->num_attention_heads == 8);
  CHECK(cfg->num_key_value_heads == 4);
  CHECK(cfg->head_dim == 8);
  CHECK(cfg->rms_norm_eps == 1e-5f);
  CHECK(cfg->rope_theta == 500000.0);
  CHECK(cfg->tie_word_embeddings);
  CHECK(cfg->json.find("\"vocab_size\":512") != std::string::npos);

  auto defaults = parse("");
  REQUIRE(defaults.ok());
  CHECK(defaults->num_key_value_heads == 8);
  CHECK(defaults->rope_theta == 10000.0);
  CHECK_FALSE(defaults->tie_word_embeddings);

  auto nested = parse(R"(,"rope_parameters":{"rope_theta":1234.0,"rope_type":"default"})");
  REQUIRE(nested.ok());
  CHECK(nested->rope_theta == 1234.0);
}

TEST_CASE("llama_config: bad or unsupported configs are reported") {
  CHECK(sageptq::io::parse_llama_config("{", "c").code() == status::malformed_input);
  CHECK(sageptq::io::parse_llama_config("[]", "c").code() == status::malformed_input);
  auto missing = sageptq::io::parse_llama_config(R"({"hidden_size":64})", "c");
  CHECK(missing.code() == status::malformed_input);
  CHECK(missing.message().find("intermediate_size") != std::string::npos);
  CHECK(parse(R"(,"num_key_value_heads":3)").code() == status::malformed_input);
  CHECK(parse(R"(,"num_key_value_heads":0)").code() == status::malformed_input);
  CHECK(parse(R"(,"head_dim":7)").code() == status::malformed_input);
  CHECK(parse(R"(,"rms_norm_eps":"small")").code() == status::malformed_input);
  CHECK(parse(R"(,"tie_word_embeddings":1)").code() == status::malformed_input);
  CHECK(parse(R"(,"hidden_size":65)").code() == status::malformed_input);  // duplicate key
  CHECK(parse(R"(,"hidden_act":"gelu")").code() == status::unsupported);
  CHECK(parse(R"(,"attention_bias":true)").code() == status::unsupported);
  CHECK(parse(R"(,"rope_scaling":{"type":"linear","factor":2.0})").code() == status::unsupported);
  CHECK(parse(R"(,"rope_scaling":null,"attention_bias":false,"hidden_act":"silu")").ok());
}

TEST_CASE("llama_config: the shared models' configs") {
  const auto models = std::filesystem::path(SAGEPTQ_SHARED_DIR) / "models";
  for (const char* name : {"stories260k", "gutenberg-llama-20m"})
    REQUIRE_MESSAGE(std::filesystem::exists(models / name / "config.json"),
                    "missing shared file " << (models / name / "config.json"));
  auto stories = sageptq::io::read_llama_config(models / "stories260k");
  REQUIRE_MESSAGE(stories.ok(), stories.message());
  CHECK(stories->head_dim == 8);
  CHECK(stories->tie_word_embeddings);
  auto gutenberg = sageptq::io::read_llama_config(models / "gutenberg-llama-20m/config.json");
  REQUIRE_MESSAGE(gutenberg.ok(), gutenberg.message());
  CHECK(gutenberg->hidden_size == 512);
  CHECK(gutenberg->num_key_value_heads == 4);
  CHECK(gutenberg->head_dim == 64);
  CHECK(gutenberg->rms_norm_eps == 1e-5f);
  CHECK(gutenberg->rope_theta == 10000.0);
}
