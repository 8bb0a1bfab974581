#include <doctest/doctest.h>

#include <sageptq/core/random.hpp>
#include <sageptq/io/safetensors.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "temp_dir.hpp"

namespace io = sageptq::io;
using sageptq::status;
using sageptq_test::temp_dir;
using sageptq_test::write_bytes;

namespace {

std::string le64(std::uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xffu);
  return out;
}

/// A file image: the header length (its real size unless overridden), the header, then `data`.
std::string image(const std::string& header, const std::string& data, std::uint64_t length = ~std::uint64_t{0}) {
  return le64(length == ~std::uint64_t{0} ? header.size() : length) + header + data;
}

std::string floats_bytes(std::initializer_list<float> values) {
  std::string out(values.size() * sizeof(float), '\0');
  std::memcpy(out.data(), std::data(values), out.size());
  return out;
}

// A valid file: "a" F32 [2, 3], "b" BF16 [4] (values 1, -2, 0.5, 3), metadata. The header is 8-byte aligned.
const std::string valid_header =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})";
std::string valid_data() {
  std::string data = floats_bytes({1, 2, 3, 4, 5, 6});
  for (std::uint16_t bits : {0x3f80, 0xc000, 0x3f00, 0x4040}) {
    data.push_back(static_cast<char>(bits & 0xff));
    data.push_back(static_cast<char>(bits >> 8));
  }
  return data;
}
std::string padded(std::string header) {
  header.append((8 - (8 + header.size()) % 8) % 8, ' ');
  return header;
}

sageptq::outcome open_image(const temp_dir& dir, const std::string& bytes) {
  const auto path = dir / "model.safetensors";
  write_bytes(path, bytes);
  return io::safetensors_file::open(path).as_outcome();
}

}  // namespace

TEST_CASE("safetensors: a valid file gives typed views, converted copies and metadata") {
  temp_dir dir;
  write_bytes(dir / "m.safetensors", image(padded(valid_header), valid_data()));
  auto file = io::safetensors_file::open(dir / "m.safetensors");
  REQUIRE_MESSAGE(file.ok(), file.message());
  REQUIRE(file->tensors().size() == 2);
  CHECK(file->metadata().at("format") == "pt");

  const io::tensor* a = file->find("a");
  REQUIRE(a != nullptr);
  CHECK(a->type == io::dtype::f32);
  CHECK(a->shape == std::vector<sageptq::index_t>{2, 3});
  auto view = a->view<float, 2>();
  REQUIRE(view.ok());
  CHECK((*view)(1, 2) == 6.0f);
  CHECK((*view)(0, 1) == 2.0f);

  const io::tensor* b = file->find("b");
  REQUIRE(b != nullptr);
  auto bf = b->view<sageptq::bf16, 1>();
  REQUIRE(bf.ok());
  CHECK((*bf)(1).to_float() == -2.0f);
  auto floats = io::to_floats(*b);
  REQUIRE(floats.ok());
  CHECK(*floats == std::vector<float>{1, -2, 0.5f, 3});
  CHECK(file->find("c") == nullptr);

  // Wrong element type or rank is a status, not a bad view.
  CHECK(a->view<sageptq::bf16, 2>().code() == status::invalid_argument);
  CHECK(a->view<float, 1>().code() == status::invalid_shape);
}

TEST_CASE("safetensors: a tensor misaligned for its dtype cannot be viewed in place but still converts") {
  temp_dir dir;
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append((4 - (8 + header.size()) % 4) % 4 + 2, ' ');  // data starts 2 bytes past a multiple of 4
  write_bytes(dir / "m.safetensors", image(header, floats_bytes({1.5f, -2.5f})));
  auto file = io::safetensors_file::open(dir / "m.safetensors");
  REQUIRE_MESSAGE(file.ok(), file.message());
  CHECK(file->find("a")->view<float, 1>().code() == status::invalid_layout);
  auto floats = io::to_floats(*file->find("a"));
  REQUIRE(floats.ok());
  CHECK(*floats == std::vector<float>{1.5f, -2.5f});
}

TEST_CASE("safetensors: every violation of the format is malformed_input or unsupported with a clear message") {
  temp_dir dir;
  const std::string data = valid_data();
  struct bad_case {
    const char* what;
    std::string bytes;
    status expected;
    const char* message_part;
  };
  const auto with_header = [&](const std::string& header) { return image(header, data); };
  const auto tensor_a = [&](const std::string& entry) {
    return with_header(R"({"a":)" + entry + R"(,"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})");
  };
  const std::vector<bad_case> cases = {
      {"empty file", "", status::malformed_input, "8-byte header length"},
      {"short length", "\x05\x00\x00", status::malformed_input, "8-byte header length"},
      {"header length over the limit", image(valid_header, data, 200'000'000), status::malformed_input, "limit"},
      {"header length past the end", image(valid_header, data, valid_header.size() + data.size() + 1),
       status::malformed_input, "past the end of the file"},
      {"header length of zero", image("", data), status::malformed_input, "start with '{'"},
      {"truncated data", image(valid_header, data.substr(0, 30)), status::malformed_input, "\"b\""},
      {"trailing bytes", image(valid_header, data + "xx"), status::malformed_input, "cover 32 of the 34"},
      {"invalid JSON", with_header(R"({"a":{"dtype":"F32",)"), status::malformed_input, "not valid JSON"},
      {"invalid UTF-8", with_header("{\"a\xff\":1}"), status::malformed_input, "not valid JSON"},
      {"not an object", with_header(R"([1,2])"), status::malformed_input, "start with '{'"},
      {"entry not an object", tensor_a("7"), status::malformed_input, "not a JSON object"},
      {"duplicate names",
       with_header(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                   R"("a":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})"),
       status::malformed_input, "duplicate key \"a\""},
      {"duplicate field", tensor_a(R"({"dtype":"F32","dtype":"F32","shape":[2,3],"data_offsets":[0,24]})"),
       status::malformed_input, "duplicate key \"dtype\""},
      {"unknown dtype", tensor_a(R"({"dtype":"F64","shape":[3],"data_offsets":[0,24]})"), status::unsupported,
       "dtype \"F64\" is not supported"},
      {"dtype not a string", tensor_a(R"({"dtype":4,"shape":[2,3],"data_offsets":[0,24]})"),
       status::malformed_input, "dtype is not a string"},
      {"shape and size disagree", tensor_a(R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,24]})"),
       status::malformed_input, "holds 24 bytes but dtype and shape need 16"},
      {"negative extent", tensor_a(R"({"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]})"),
       status::malformed_input, "not a non-negative integer"},
      {"fractional extent", tensor_a(R"({"dtype":"F32","shape":[2.0,3],"data_offsets":[0,24]})"),
       status::malformed_input, "not a non-negative integer"},
      {"shape overflow",
       tensor_a(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,24]})"),
       status::malformed_input, "overflows"},
      {"offsets reversed", tensor_a(R"({"dtype":"F32","shape":[2,3],"data_offsets":[24,0]})"),
       status::malformed_input, "ends before it begins"},
      {"offsets not a pair", tensor_a(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0]})"),
       status::malformed_input, "data_offsets is not a pair"},
      {"offsets past the data", tensor_a(R"({"dtype":"F32","shape":[2,3],"data_offsets":[24,48]})"),
       status::malformed_input, "runs past the data section"},
      {"missing offsets", tensor_a(R"({"dtype":"F32","shape":[2,3]})"), status::malformed_input,
       "needs \"dtype\", \"shape\" and \"data_offsets\""},
      {"unknown field", tensor_a(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,24],"x":1})"),
       status::malformed_input, "unknown field \"x\""},
      {"metadata not strings", with_header(R"({"__metadata__":{"n":1}})"), status::malformed_input,
       "\"n\" is not a string"},
  };
  for (const bad_case& c : cases) {
    INFO(c.what);
    const sageptq::outcome got = open_image(dir, c.bytes);
    CHECK(got.code() == c.expected);
    CHECK_MESSAGE(got.message().find(c.message_part) != std::string::npos, got.message());
  }

  // Spans that overlap or leave a hole, in either order of appearance in the header.
  const auto two = [&](const char* a_offsets, const char* b_offsets) {
    return with_header(std::string(R"({"b":{"dtype":"BF16","shape":[4],"data_offsets":)") + b_offsets +
                       R"(},"a":{"dtype":"F32","shape":[2,3],"data_offsets":)" + a_offsets + "}}");
  };
  for (const auto& [bytes, part] : {std::pair{two("[0,24]", "[20,28]"), "overlap"},
                                    std::pair{two("[0,24]", "[26,34]"), "past the data section"},
                                    std::pair{image(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                                                    R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[26,34]}})",
                                                    data + "zz"),
                                              "hole"}}) {
    const sageptq::outcome got = open_image(dir, bytes);
    CHECK(got.code() == status::malformed_input);
    CHECK_MESSAGE(got.message().find(part) != std::string::npos, got.message());
  }
}

TEST_CASE("safetensors: truncations and random corruptions never crash") {
  temp_dir dir;
  const std::string good = image(padded(valid_header), valid_data());
  for (std::size_t n = 0; n < good.size(); ++n) CHECK_FALSE(open_image(dir, good.substr(0, n)).ok());

  sageptq::random_generator rng(11);
  int accepted = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::string bytes = good;
    for (int flips = 1 + static_cast<int>(rng.below(3)); flips > 0; --flips)
      bytes[rng.below(bytes.size())] = static_cast<char>(rng.below(256));
    const sageptq::outcome got = open_image(dir, bytes);
    if (got.ok()) {
      ++accepted;  // a flip inside the data or a harmless header byte: the file must still read back
      auto file = io::safetensors_file::open(dir / "model.safetensors");
      REQUIRE(file.ok());
      for (const io::tensor& t : file->tensors())
        if (t.type != io::dtype::u8) CHECK(io::to_floats(t).ok());
    } else {
      CHECK((got.code() == status::malformed_input || got.code() == status::unsupported));
    }
  }
  CHECK(accepted > 0);
}

TEST_CASE("safetensors: a sharded checkpoint is validated against its index") {
  temp_dir dir;
  const std::string shard_a = image(padded(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"),
                                    floats_bytes({1, 2}));
  const std::string shard_b = image(padded(R"({"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})"),
                                    floats_bytes({3}));
  write_bytes(dir / "a.safetensors", shard_a);
  write_bytes(dir / "b.safetensors", shard_b);
  const auto index = [&](const std::string& weight_map) {
    write_bytes(dir / "model.safetensors.index.json",
                R"({"metadata":{"total_size":12},"weight_map":)" + weight_map + "}");
    return io::checkpoint::open(dir.path());
  };

  auto ok = index(R"({"x":"a.safetensors","y":"b.safetensors"})");
  REQUIRE_MESSAGE(ok.ok(), ok.message());
  CHECK(ok->files().size() == 2);
  REQUIRE(ok->find("y") != nullptr);
  CHECK(io::to_floats(*ok->find("y"))->at(0) == 3.0f);
  CHECK(ok->find("z") == nullptr);

  auto missing = index(R"({"x":"a.safetensors","y":"c.safetensors"})");
  CHECK(missing.code() == status::io_error);
  CHECK(missing.message().find("c.safetensors") != std::string::npos);

  // A shard holding a tensor the index does not list.
  write_bytes(dir / "ab.safetensors",
              image(padded(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})"),
                    floats_bytes({1, 2, 3})));
  auto unlisted = index(R"({"x":"ab.safetensors","y":"b.safetensors"})");
  CHECK(unlisted.code() == status::malformed_input);
  CHECK_MESSAGE(unlisted.message().find("\"w\" of ab.safetensors is not in weight_map") != std::string::npos,
                unlisted.message());

  auto misplaced = index(R"({"x":"a.safetensors","y":"a.safetensors"})");
  CHECK(misplaced.code() == status::malformed_input);
  CHECK(misplaced.message().find("\"y\"") != std::string::npos);

  auto escaping = index(R"({"x":"../a.safetensors","y":"b.safetensors"})");
  CHECK(escaping.code() == status::malformed_input);
  CHECK(index(R"(["x"])").code() == status::malformed_input);
  CHECK(index(R"({"x":"a.safetensors","x":"b.safetensors"})").code() == status::malformed_input);

  // A bad shard is reported with its own path.
  write_bytes(dir / "b.safetensors", shard_b.substr(0, shard_b.size() - 1));
  auto truncated = index(R"({"x":"a.safetensors","y":"b.safetensors"})");
  CHECK(truncated.code() == status::malformed_input);
  CHECK(truncated.message().find("b.safetensors") != std::string::npos);

  CHECK(io::checkpoint::open(dir / "nothing_here").code() == status::io_error);
}

TEST_CASE("safetensors: the shared models open (single file f32, sharded bf16)") {
  const std::filesystem::path models = std::filesystem::path(SAGEPTQ_SHARED_DIR) / "models";
  REQUIRE_MESSAGE(std::filesystem::exists(models / "stories260k/model.safetensors"),
                  "missing shared file " << (models / "stories260k/model.safetensors"));
  REQUIRE_MESSAGE(std::filesystem::exists(models / "gutenberg-llama-20m/model.safetensors.index.json"),
                  "missing shared file " << (models / "gutenberg-llama-20m/model.safetensors.index.json"));

  auto stories = io::checkpoint::open(models / "stories260k");
  REQUIRE_MESSAGE(stories.ok(), stories.message());
  const io::tensor* embed = stories->find("model.embed_tokens.weight");
  REQUIRE(embed != nullptr);
  CHECK(embed->type == io::dtype::f32);
  CHECK(embed->shape == std::vector<sageptq::index_t>{512, 64});
  CHECK(embed->view<float, 2>().ok());

  auto gutenberg = io::checkpoint::open(models / "gutenberg-llama-20m");
  REQUIRE_MESSAGE(gutenberg.ok(), gutenberg.message());
  CHECK(gutenberg->files().size() == 3);
  const io::tensor* down = gutenberg->find("model.layers.5.mlp.down_proj.weight");
  REQUIRE(down != nullptr);
  CHECK(down->type == io::dtype::bf16);
  CHECK(down->shape == std::vector<sageptq::index_t>{512, 1408});
  auto bits = down->view<sageptq::bf16, 2>();
  auto floats = io::to_floats(*down);
  REQUIRE((bits.ok() && floats.ok()));
  CHECK((*floats)[1408 * 3 + 7] == (*bits)(3, 7).to_float());
}
