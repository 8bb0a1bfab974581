#pragma once
/// @file quantized_model.hpp
/// The quantized model file: one self-contained safetensors file (written with safetensors_writer, so atomic and
/// 64-byte aligned) holding
///  - every packed linear weight as U8 byte tensors: a sage matrix as one tensor "<weight>" with the bytes of
///    format::serialize (its own versioned, validated format); the other formats as one U8 tensor per array,
///    "<weight>.<array>", holding the array's little-endian elements (rtn: codes u32, scales f16, zeros u8;
///    q1_0: signs u32, scales f16; septq: dense.codes, dense.scales, dense.zeros, kept.row_offsets u32,
///    kept.columns u16, kept.values f16; billm: salient, signs, second u32, scales f16);
///  - a weight stored as column parts (quantized_tensor::columns: input-channel blocks, each in its own format) as
///    one packed matrix per part, stored as above under the key "<weight>.columns.<begin>" in place of "<weight>";
///  - the unquantized tensors (embeddings, norms, an untied output head) in their source dtype;
///  - "__metadata__": "sageptq" = JSON {format_version, method, method_options, source_fingerprint (FNV-1a 64 of the
///    source weights, hex), tensors: [{name: <weight>, [columns: [begin, end, of] for a part,] format, layout fields,
///    shape, method, groups, salient_fraction, relative_error, hessian_error, seconds, bits: {...}, full_bpw,
///    paper_bpw}, ... in file order], totals}; "config" = the source model's config.json text.
///    format_version is 2 when the file holds column parts (a version-1 reader refuses it), 1 otherwise.
/// The parts of a weight have its rows, and their columns tile [0, of) exactly; a weight is stored whole or in parts.
/// The reader validates everything it uses (array sizes against the layout, CSR offsets and columns, the sage bytes
/// through format::deserialize, the parts' tiling) and returns malformed_input with the tensor's name on any violation.
/// Threading: none; the functions are reentrant.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../core/status.hpp"
#include "../format/billm.hpp"
#include "../format/byte_io.hpp"
#include "../format/q1_0.hpp"
#include "../format/rtn.hpp"
#include "../format/sage.hpp"
#include "../format/septq.hpp"
#include "../pipeline/quantized.hpp"
#include "json.hpp"
#include "llama_config.hpp"
#include "safetensors.hpp"
#include "safetensors_writer.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {

/// The newest format version this build reads and writes. Files without column parts are written as version 1,
/// which every reader since the first reads the same.
inline constexpr int quantized_model_format_version = 2;
/// The version written when no tensor is a column part.
inline constexpr int quantized_model_format_version_whole = 1;

/// Every packed format (the same type as pipeline::packed_matrix, named here without the pipeline's Eigen).
using packed_matrix =
    std::variant<format::rtn_matrix, format::q1_0_matrix, format::septq_matrix, format::billm_matrix, format::sage_matrix>;

/// The format's name in the file: "rtn", "q1_0", "septq", "billm" or "sage".
inline std::string packed_format_name(const packed_matrix& m) {
  constexpr const char* names[] = {"rtn", "q1_0", "septq", "billm", "sage"};
  return names[m.index()];
}

/// Rows and columns of the logical (decoded) matrix.
inline std::pair<index_t, index_t> packed_shape(const packed_matrix& m) {
  return std::visit(
      [](const auto& p) -> std::pair<index_t, index_t> {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, format::sage_matrix>) return {p.shape.rows, p.shape.cols};
        else if constexpr (std::is_same_v<T, format::septq_matrix>) return {p.dense.rows, p.dense.cols};
        else return {p.rows, p.cols};
      },
      m);
}

inline format::bit_breakdown packed_bits(const packed_matrix& m) {
  return std::visit([](const auto& p) { return p.bits(); }, m);
}

/// The decoded matrix, rows x cols row-major.
inline std::vector<float> decode_packed(const packed_matrix& m) {
  const auto shape = packed_shape(m);
  std::vector<float> out(static_cast<std::size_t>(shape.first * shape.second));
  const auto view = make_matrix_view(out.data(), shape.first, shape.second);
  std::visit([&](const auto& p) { format::decode(p.view(), view); }, m);
  return out;
}

/// FNV-1a 64 over every tensor of a checkpoint in name order: the name's bytes, then the data bytes. Equal for the
/// same weights however they are sharded.
inline std::uint64_t weights_fingerprint(const checkpoint& source) {
  std::vector<const tensor*> all;
  for (const safetensors_file& f : source.files())
    for (const tensor& t : f.tensors()) all.push_back(&t);
  std::sort(all.begin(), all.end(), [](const tensor* a, const tensor* b) { return a->name < b->name; });
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (const tensor* t : all) {
    hash = format::fnv1a64({reinterpret_cast<const std::uint8_t*>(t->name.data()), t->name.size()}, hash);
    hash = format::fnv1a64({reinterpret_cast<const std::uint8_t*>(t->bytes.data()), t->bytes.size()}, hash);
  }
  return hash;
}

/// 16 lower-case hex digits.
inline std::string fingerprint_hex(std::uint64_t fingerprint) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(fingerprint));
  return text;
}

/// Columns [begin, end) of a weight `of` columns wide.
struct column_range {
  index_t begin = 0, end = 0, of = 0;
  friend bool operator==(const column_range&, const column_range&) = default;
};

struct quantized_tensor {
  std::string name;  ///< the source weight's name, e.g. "model.layers.0.self_attn.q_proj.weight"
  packed_matrix packed;
  pipeline::matrix_report report;  ///< read back: the fields the file stores (see the top), bits from `packed`
  /// Set when this tensor is columns [begin, end) of the source weight `name`, whose width is `of`: a weight may be
  /// stored as column parts, each in its own format, that tile its columns in order. Unset: the whole weight.
  std::optional<column_range> columns = std::nullopt;

  /// The name its tensors are stored under: `name`, or "<name>.columns.<begin>" for a column part.
  [[nodiscard]] std::string key() const {
    return columns ? name + ".columns." + std::to_string(columns->begin) : name;
  }
};

/// Everything a quantized model file holds.
struct quantized_model {
  std::string method;                   ///< as make_method spells it
  std::string method_options = "{}";    ///< JSON object text, e.g. {"bits":2,"group":128}
  std::string config_json;              ///< the source config.json text
  std::uint64_t source_fingerprint = 0;
  std::vector<quantized_tensor> packed;
  std::vector<tensor> unquantized;      ///< in their source dtype; the bytes stay alive through tensor::file

  [[nodiscard]] const tensor* find_unquantized(std::string_view name) const {
    const auto it = std::find_if(unquantized.begin(), unquantized.end(), [&](const tensor& t) { return t.name == name; });
    return it == unquantized.end() ? nullptr : &*it;
  }
  /// The tensor that stores the weight `name` whole; nullptr when it is absent or stored in column parts (see
  /// find_parts).
  [[nodiscard]] const quantized_tensor* find_packed(std::string_view name) const {
    const auto it = std::find_if(packed.begin(), packed.end(),
                                 [&](const quantized_tensor& t) { return t.name == name && !t.columns; });
    return it == packed.end() ? nullptr : &*it;
  }
  /// The weight `name` as stored: its whole tensor, or its column parts in column order; empty when absent.
  [[nodiscard]] std::vector<const quantized_tensor*> find_parts(std::string_view name) const {
    if (const quantized_tensor* whole = find_packed(name)) return {whole};
    std::vector<const quantized_tensor*> parts;
    for (const quantized_tensor& t : packed)
      if (t.name == name) parts.push_back(&t);
    std::sort(parts.begin(), parts.end(),
              [](const quantized_tensor* a, const quantized_tensor* b) { return a->columns->begin < b->columns->begin; });
    return parts;
  }
  /// Every stored bit of the packed tensors.
  [[nodiscard]] format::bit_breakdown total_bits() const {
    format::bit_breakdown total;
    for (const auto& t : packed) total += packed_bits(t.packed);
    return total;
  }
};

/// A bit breakdown as JSON (the file's metadata and the CLI's report use it): every category, full and paper bpw.
inline nlohmann::ordered_json bits_json(const format::bit_breakdown& b) {
  return {{"weights", b.weights},
          {"signs", b.sign_bits},
          {"codes", b.code_bits},
          {"scales", b.scale_bits},
          {"group_ids", b.group_id_bits},
          {"salient_positions", b.salient_position_bits},
          {"salient_values", b.salient_value_bits},
          {"padding", b.padding_bits},
          {"metadata", b.metadata_bits},
          {"paper", b.paper_bits},
          {"full_bits", b.full_bits()},
          {"full_bpw", b.full_bpw()},
          {"paper_bpw", b.paper_bpw()}};
}

namespace detail {

inline nlohmann::ordered_json rtn_layout_json(const format::rtn_layout& l) {
  return {{"bits", l.bits}, {"group_size", l.group_size}, {"symmetric", l.symmetric}};
}

/// Calls f(suffix, array) for every array a non-sage format stores as "<weight>.<suffix>".
template <class F>
void for_each_array(const format::rtn_matrix& m, F&& f, const std::string& prefix = "") {
  f(prefix + "codes", m.codes);
  f(prefix + "scales", m.scales);
  f(prefix + "zeros", m.zeros);
}
template <class F>
void for_each_array(const format::q1_0_matrix& m, F&& f) {
  f("signs", m.signs);
  f("scales", m.scales);
}
template <class F>
void for_each_array(const format::septq_matrix& m, F&& f) {
  for_each_array(m.dense, f, "dense.");
  f("kept.row_offsets", m.kept.row_offsets);
  f("kept.columns", m.kept.columns);
  f("kept.values", m.kept.values);
}
template <class F>
void for_each_array(const format::billm_matrix& m, F&& f) {
  f("salient", m.salient);
  f("signs", m.signs);
  f("second", m.second);
  f("scales", m.scales);
}

/// "[begin, end)". (Appended piecewise: g++ 12 sees a false -Wrestrict in "[" + std::to_string(...).)
inline std::string range_text(const column_range& c) {
  std::string text = "[";
  text += std::to_string(c.begin);
  text += ", ";
  text += std::to_string(c.end);
  text += ")";
  return text;
}

/// Every weight of `packed` stored once: one whole tensor, or column parts with its rows whose columns tile
/// [0, of) (each part's packed width end - begin). `code` with a message that names the weight otherwise.
inline outcome check_column_parts(std::span<const quantized_tensor> packed, status code, const std::string& origin) {
  std::map<std::string_view, std::vector<const quantized_tensor*>> by_name;
  for (const quantized_tensor& t : packed) by_name[t.name].push_back(&t);
  for (auto& [name, tensors] : by_name) {
    const auto bad = [&, &name = name](const std::string& what) {
      return fail(code, origin + ": weight \"" + std::string(name) + "\" " + what);
    };
    const auto whole = std::count_if(tensors.begin(), tensors.end(), [](const quantized_tensor* t) { return !t->columns; });
    if (whole > 1) return bad("is listed twice");
    if (whole == 1 && tensors.size() > 1) return bad("is stored both whole and in column parts");
    if (whole == 1) continue;
    std::sort(tensors.begin(), tensors.end(),
              [](const quantized_tensor* a, const quantized_tensor* b) { return a->columns->begin < b->columns->begin; });
    const column_range& first = *tensors.front()->columns;
    const index_t rows = packed_shape(tensors.front()->packed).first;
    index_t next = 0;
    for (const quantized_tensor* t : tensors) {
      const column_range& c = *t->columns;
      const auto [part_rows, part_cols] = packed_shape(t->packed);
      if (c.begin < 0 || c.begin >= c.end || c.end > c.of)
        return bad("has a column part " + range_text(c) + " of " + std::to_string(c.of) +
                   " columns, not 0 <= begin < end <= of");
      if (c.of != first.of)
        return bad("has column parts of widths " + std::to_string(first.of) + " and " + std::to_string(c.of));
      if (part_cols != c.end - c.begin)
        return bad("column part " + range_text(c) + " packs " + std::to_string(part_cols) + " columns, not " +
                   std::to_string(c.end - c.begin));
      if (part_rows != rows)
        return bad("has column parts of " + std::to_string(rows) + " and " + std::to_string(part_rows) + " rows");
      if (c.begin > next) return bad("column parts leave columns " + range_text({next, c.begin, c.of}) + " uncovered");
      if (c.begin < next)
        return bad("column parts overlap on columns " + range_text({c.begin, std::min(next, c.end), c.of}));
      next = c.end;
    }
    if (next != first.of)
      return bad("column parts leave columns " + range_text({next, first.of, first.of}) + " uncovered");
  }
  return {};
}

}  // namespace detail

/// Writes `model` to `path` atomically (safetensors_writer); format version 2 when it holds column parts, else 1.
/// invalid_argument, with nothing written, for a repeated or reserved name, or column parts that do not tile their
/// weight (detail::check_column_parts); io_error when the file cannot be written.
inline outcome write_quantized_model(const std::filesystem::path& path, const quantized_model& model,
                                     const write_progress& progress = {}) {
  using nlohmann::ordered_json;
  if (auto ok = detail::check_column_parts(model.packed, status::invalid_argument, path.string()); !ok) return ok;
  safetensors_writer writer;
  std::vector<std::vector<std::uint8_t>> serialized;  // sage bytes, alive until write()
  serialized.reserve(model.packed.size());
  ordered_json tensors = ordered_json::array();
  format::bit_breakdown total;
  outcome error;
  const auto add_bytes = [&](const std::string& name, std::span<const std::byte> bytes) {
    if (error.ok()) error = writer.add(name, dtype::u8, {static_cast<index_t>(bytes.size())}, bytes);
  };
  for (const quantized_tensor& t : model.packed) {
    const auto [rows, cols] = packed_shape(t.packed);
    const format::bit_breakdown bits = packed_bits(t.packed);
    total += bits;
    const std::string key = t.key();
    ordered_json entry = {{"name", t.name}};
    if (t.columns) entry["columns"] = {t.columns->begin, t.columns->end, t.columns->of};
    entry["format"] = packed_format_name(t.packed);
    entry["shape"] = {rows, cols};
    std::visit(
        [&](const auto& p) {
          using T = std::decay_t<decltype(p)>;
          if constexpr (std::is_same_v<T, format::sage_matrix>) {
            serialized.push_back(format::serialize(p));
            add_bytes(key, std::as_bytes(std::span(serialized.back())));
          } else {
            if constexpr (std::is_same_v<T, format::rtn_matrix>) entry["layout"] = detail::rtn_layout_json(p.layout);
            if constexpr (std::is_same_v<T, format::septq_matrix>) entry["layout"] = detail::rtn_layout_json(p.dense.layout);
            if constexpr (std::is_same_v<T, format::billm_matrix>) entry["layout"] = {{"block_size", p.block_size}};
            detail::for_each_array(p, [&](const std::string& suffix, const auto& array) {
              add_bytes(key + "." + suffix, std::as_bytes(std::span(array)));
            });
          }
        },
        t.packed);
    const pipeline::matrix_report& r = t.report;
    entry["method"] = r.method;
    entry["groups"] = r.groups;
    entry["salient_fraction"] = r.salient_fraction;
    entry["hessian_error"] = r.hessian_error;
    entry["relative_error"] = r.relative_error;
    entry["seconds"] = r.times.total();
    entry["bits"] = bits_json(bits);
    if (!r.notes.empty()) entry["notes"] = r.notes;
    tensors.push_back(std::move(entry));
  }
  for (const tensor& t : model.unquantized)
    if (error.ok()) error = writer.add(t.name, t.type, t.shape, t.bytes);
  if (!error.ok()) return error;

  ordered_json options = ordered_json::object();
  if (auto parsed = detail::parse_json_strict(model.method_options, "method options"); parsed.ok() && parsed->is_object())
    options = ordered_json::parse(parsed->dump());
  else
    return fail(status::invalid_argument, "method options must be a JSON object, got " + model.method_options);
  const bool parts = std::any_of(model.packed.begin(), model.packed.end(), [](const auto& t) { return t.columns.has_value(); });
  const int version = parts ? quantized_model_format_version : quantized_model_format_version_whole;
  const ordered_json meta = {{"format_version", version},
                             {"method", model.method},
                             {"method_options", std::move(options)},
                             {"source_fingerprint", fingerprint_hex(model.source_fingerprint)},
                             {"tensors", std::move(tensors)},
                             {"totals", bits_json(total)}};
  writer.set_metadata("sageptq", meta.dump());
  writer.set_metadata("config", model.config_json);
  return writer.write(path, progress);
}

namespace detail {

/// Copies the U8 tensor `name` of `file` into `out` (resized to `count` elements). malformed_input when it is
/// missing, not U8 of rank 1, or not exactly count elements.
template <class T>
outcome read_array(const safetensors_file& file, const std::string& name, std::size_t count, std::vector<T>& out) {
  const tensor* t = file.find(name);
  const std::string where = file.path().string() + ": tensor \"" + name + "\"";
  if (!t) return fail(status::malformed_input, where + " is missing");
  if (t->type != dtype::u8 || t->shape.size() != 1)
    return fail(status::malformed_input, where + " is not a one-dimensional U8 tensor");
  if (t->bytes.size() != count * sizeof(T))
    return fail(status::malformed_input, where + " holds " + std::to_string(t->bytes.size()) + " bytes, the layout needs " +
                                             std::to_string(count * sizeof(T)));
  out.resize(count);
  if (count) std::memcpy(out.data(), t->bytes.data(), t->bytes.size());  // little-endian host (safetensors.hpp)
  return {};
}

inline result<format::rtn_layout> parse_rtn_layout(const json& entry, const std::string& where) {
  const auto layout = entry.find("layout");
  format::rtn_layout l;
  if (layout == entry.end() || !layout->is_object() || !layout->contains("bits") || !(*layout)["bits"].is_number_integer() ||
      !layout->contains("group_size") || !(*layout)["group_size"].is_number_integer() ||
      !layout->contains("symmetric") || !(*layout)["symmetric"].is_boolean())
    return fail(status::malformed_input, where + ": layout needs integer bits and group_size and boolean symmetric");
  l.bits = (*layout)["bits"].get<int>();
  l.group_size = (*layout)["group_size"].get<index_t>();
  l.symmetric = (*layout)["symmetric"].get<bool>();
  if (l.bits < 1 || l.bits > 8 || l.group_size < 1)
    return fail(status::malformed_input, where + ": layout bits must be in [1, 8] and group_size >= 1");
  return l;
}

inline result<format::rtn_matrix> read_rtn(const safetensors_file& file, const std::string& name, index_t rows,
                                           index_t cols, format::rtn_layout layout) {
  format::rtn_matrix m;
  m.rows = rows;
  m.cols = cols;
  m.layout = layout;
  const auto n = static_cast<std::size_t>(rows);
  if (auto ok = read_array(file, name + "codes", n * static_cast<std::size_t>(layout.words_per_row(cols)), m.codes); !ok)
    return ok;
  const auto groups = n * static_cast<std::size_t>(layout.groups_per_row(cols));
  if (auto ok = read_array(file, name + "scales", groups, m.scales); !ok) return ok;
  if (auto ok = read_array(file, name + "zeros", layout.symmetric ? 0 : groups, m.zeros); !ok) return ok;
  return m;
}

inline result<format::sparse_matrix> read_sparse(const safetensors_file& file, const std::string& name, index_t rows,
                                                 index_t cols) {
  const std::string where = file.path().string() + ": tensor \"" + name + "\"";
  format::sparse_matrix m;
  m.rows = rows;
  m.cols = cols;
  if (auto ok = read_array(file, name + "row_offsets", static_cast<std::size_t>(rows + 1), m.row_offsets); !ok) return ok;
  if (m.row_offsets[0] != 0 || !std::is_sorted(m.row_offsets.begin(), m.row_offsets.end()))
    return fail(status::malformed_input, where + ": row_offsets do not start at 0 and increase");
  const std::size_t nnz = m.row_offsets.back();
  if (auto ok = read_array(file, name + "columns", nnz, m.columns); !ok) return ok;
  if (auto ok = read_array(file, name + "values", nnz, m.values); !ok) return ok;
  for (index_t r = 0; r < rows; ++r)
    for (std::uint32_t k = m.row_offsets[static_cast<std::size_t>(r)]; k < m.row_offsets[static_cast<std::size_t>(r + 1)]; ++k)
      if (m.columns[k] >= cols || (k > m.row_offsets[static_cast<std::size_t>(r)] && m.columns[k] <= m.columns[k - 1]))
        return fail(status::malformed_input, where + ": columns of row " + std::to_string(r) +
                                                 " are not strictly increasing below " + std::to_string(cols));
  return m;
}

inline result<packed_matrix> read_packed(const safetensors_file& file, const std::string& name, const json& entry) {
  const std::string where = file.path().string() + ": packed tensor \"" + name + "\"";
  const auto malformed = [&](const std::string& what) { return fail(status::malformed_input, where + ": " + what); };
  if (!entry.is_object() || !entry.contains("format") || !entry["format"].is_string() || !entry.contains("shape") ||
      !entry["shape"].is_array() || entry["shape"].size() != 2 || !entry["shape"][0].is_number_unsigned() ||
      !entry["shape"][1].is_number_unsigned())
    return malformed("metadata needs a format name and a shape of two non-negative integers");
  const auto fmt = entry["format"].get<std::string>();
  const auto rows = entry["shape"][0].get<index_t>(), cols = entry["shape"][1].get<index_t>();
  if (rows < 1 || cols < 1 || rows > (index_t{1} << 24) || cols > (index_t{1} << 24))
    return malformed("shape " + std::to_string(rows) + " x " + std::to_string(cols) + " is out of range");
  const auto result_of = [](auto&& r) -> result<packed_matrix> {
    if (!r.ok()) return r.as_outcome();
    return packed_matrix{std::move(r).value()};
  };
  if (fmt == "sage") {
    const tensor* t = file.find(name);
    if (!t || t->type != dtype::u8) return malformed("has no U8 tensor of serialized bytes");
    auto m = format::deserialize({reinterpret_cast<const std::uint8_t*>(t->bytes.data()), t->bytes.size()});
    if (!m.ok()) return malformed(m.message());
    if (m->shape.rows != rows || m->shape.cols != cols) return malformed("serialized shape differs from the metadata");
    return packed_matrix{std::move(m).value()};
  }
  if (fmt == "rtn") {
    auto layout = parse_rtn_layout(entry, where);
    if (!layout.ok()) return layout.as_outcome();
    return result_of(read_rtn(file, name + ".", rows, cols, *layout));
  }
  if (fmt == "q1_0") {
    format::q1_0_matrix m;
    m.rows = rows;
    m.cols = cols;
    const auto n = static_cast<std::size_t>(rows);
    if (auto ok = read_array(file, name + ".signs", n * static_cast<std::size_t>(format::q1_0::words_per_row(cols)), m.signs); !ok)
      return ok;
    if (auto ok = read_array(file, name + ".scales", n * static_cast<std::size_t>(format::q1_0::groups_per_row(cols)), m.scales); !ok)
      return ok;
    return packed_matrix{std::move(m)};
  }
  if (fmt == "septq") {
    auto layout = parse_rtn_layout(entry, where);
    if (!layout.ok()) return layout.as_outcome();
    auto dense = read_rtn(file, name + ".dense.", rows, cols, *layout);
    if (!dense.ok()) return dense.as_outcome();
    auto kept = read_sparse(file, name + ".kept.", rows, cols);
    if (!kept.ok()) return kept.as_outcome();
    return packed_matrix{format::septq_matrix{std::move(dense).value(), std::move(kept).value()}};
  }
  if (fmt == "billm") {
    const auto layout = entry.find("layout");
    if (layout == entry.end() || !layout->is_object() || !layout->contains("block_size") ||
        !(*layout)["block_size"].is_number_unsigned())
      return malformed("layout needs an integer block_size");
    const auto block = (*layout)["block_size"].get<index_t>();
    if (block < 32 || block % 32 != 0 || block > (index_t{1} << 16)) return malformed("block_size is not a positive multiple of 32");
    auto m = format::billm_matrix::zeros(rows, cols, block);
    const auto words = static_cast<std::size_t>(format::billm::words_per_row(cols, block));
    const auto n = static_cast<std::size_t>(rows);
    if (auto ok = read_array(file, name + ".salient", words, m.salient); !ok) return ok;
    if (auto ok = read_array(file, name + ".signs", n * words, m.signs); !ok) return ok;
    if (auto ok = read_array(file, name + ".second", n * words, m.second); !ok) return ok;
    if (auto ok = read_array(file, name + ".scales", m.scales.size(), m.scales); !ok) return ok;
    return packed_matrix{std::move(m)};
  }
  return malformed("unknown format \"" + fmt + "\"");
}

}  // namespace detail

/// Reads a quantized model file (versions 1 and 2), `packed` in file order. The statuses of safetensors_file::open;
/// malformed_input for missing or invalid metadata, a packed tensor that does not match its layout, column parts
/// that do not tile their weight, or a tensor that belongs to nothing; unsupported for a newer format version.
inline result<quantized_model> read_quantized_model(const std::filesystem::path& path) {
  auto file = safetensors_file::open(path);
  if (!file.ok()) return file.as_outcome();
  const std::string origin = path.string();
  const auto malformed = [&](const std::string& what) { return fail(status::malformed_input, origin + ": " + what); };
  const auto meta_text = file->metadata().find("sageptq");
  const auto config_text = file->metadata().find("config");
  if (meta_text == file->metadata().end() || config_text == file->metadata().end())
    return malformed("is not a sageptq quantized model (no \"sageptq\" and \"config\" metadata)");
  auto meta = detail::parse_json_strict(meta_text->second, origin + ": metadata");
  if (!meta.ok()) return meta.as_outcome();
  const detail::json& m = *meta;
  if (!m.is_object() || !m.contains("format_version") || !m["format_version"].is_number_integer() ||
      !m.contains("method") || !m["method"].is_string() || !m.contains("source_fingerprint") ||
      !m["source_fingerprint"].is_string() || !m.contains("tensors") || !m["tensors"].is_array())
    return malformed("metadata needs format_version, method, source_fingerprint and tensors");
  const int version = m["format_version"].get<int>();
  if (version > quantized_model_format_version)
    return fail(status::unsupported, origin + ": format version " + std::to_string(version) +
                                         " is newer than this build's " + std::to_string(quantized_model_format_version));
  quantized_model out;
  out.method = m["method"].get<std::string>();
  out.method_options = m.contains("method_options") ? m["method_options"].dump() : "{}";
  out.config_json = config_text->second;
  const auto fingerprint = m["source_fingerprint"].get<std::string>();
  char* end = nullptr;
  out.source_fingerprint = std::strtoull(fingerprint.c_str(), &end, 16);
  if (fingerprint.size() != 16 || end != fingerprint.c_str() + 16) return malformed("source_fingerprint is not 16 hex digits");

  std::vector<std::string> claimed;  // keys of the packed matrices: their tensors are "<key>" and "<key>.<array>"
  for (const detail::json& entry : m["tensors"]) {
    if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string())
      return malformed("a tensors entry has no name");
    quantized_tensor t{entry["name"].get<std::string>(), {}, {}};
    if (const auto columns = entry.find("columns"); columns != entry.end()) {
      if (version < 2) return malformed("packed tensor \"" + t.name + "\" has column parts, which need format version 2");
      if (!columns->is_array() || columns->size() != 3 ||
          !std::all_of(columns->begin(), columns->end(), [](const detail::json& v) { return v.is_number_unsigned(); }))
        return malformed("packed tensor \"" + t.name + "\": columns must be three non-negative integers [begin, end, of]");
      const auto at = [&](std::size_t i) { return (*columns)[i].get<std::uint64_t>(); };
      if (at(0) >= at(1) || at(1) > at(2) || at(2) > (std::uint64_t{1} << 24))
        return malformed("packed tensor \"" + t.name + "\": columns [" + std::to_string(at(0)) + ", " +
                         std::to_string(at(1)) + ", " + std::to_string(at(2)) + "] are not begin < end <= of <= 2^24");
      t.columns = column_range{static_cast<index_t>(at(0)), static_cast<index_t>(at(1)), static_cast<index_t>(at(2))};
    }
    const std::string key = t.key();
    if (std::find(claimed.begin(), claimed.end(), key) != claimed.end())
      return malformed("packed tensor \"" + key + "\" is listed twice");
    auto packed = detail::read_packed(*file, key, entry);
    if (!packed.ok()) return packed.as_outcome();
    t.packed = std::move(packed).value();
    const auto [rows, cols] = packed_shape(t.packed);
    // Informative fields: read when present and well-typed (json::value would throw on a wrong type).
    const auto number = [&](const char* key) {
      const auto it = entry.find(key);
      return it != entry.end() && it->is_number() ? it->get<double>() : 0.0;
    };
    const auto text = [&](const char* key, std::string fallback) {
      const auto it = entry.find(key);
      return it != entry.end() && it->is_string() ? it->get<std::string>() : fallback;
    };
    t.report.method = text("method", out.method);
    t.report.rows = rows;
    t.report.cols = cols;
    t.report.groups = std::max(1, static_cast<int>(number("groups")));
    t.report.salient_fraction = number("salient_fraction");
    t.report.hessian_error = number("hessian_error");
    t.report.relative_error = number("relative_error");
    t.report.bits = packed_bits(t.packed);
    t.report.notes = text("notes", "");
    out.packed.push_back(std::move(t));
    claimed.push_back(key);
  }
  if (auto ok = detail::check_column_parts(out.packed, status::malformed_input, origin); !ok) return ok;
  const auto is_packed_part = [&](const std::string& name) {
    return std::any_of(claimed.begin(), claimed.end(), [&](const std::string& c) {
      return name == c || (name.size() > c.size() && name.starts_with(c) && name[c.size()] == '.');
    });
  };
  for (const tensor& t : file->tensors()) {
    if (t.name.starts_with("__padding__.") || is_packed_part(t.name)) continue;
    if (t.type == dtype::u8) return malformed("U8 tensor \"" + t.name + "\" belongs to no packed matrix");
    out.unquantized.push_back(t);
  }
  return out;
}

}  // namespace io
SAGEPTQ_NAMESPACE_END
