#pragma once
/// @file sage.hpp
/// The packed format of SAGE-PTQ, laid out for GEMV kernels (docs/format.md is the byte-exact specification).
///
/// A rows x cols matrix is stored with its columns permuted: the first K_b = cols - K_s stored columns are
/// binarized (P sign planes, summed), the last K_s are the salient input channels as b_s-bit codes with one uniform
/// grid (fp16 scale, uint8 zero) per row, so a kernel reads x once through the permutation and needs no second pass.
/// Binarized columns belong to one of G groups:
///   - column groups (structural): the binarized columns are sorted by group, so group g is the stored range
///     [group_offsets[g], group_offsets[g+1]) of every row: G + 1 integers, no per-column ids;
///   - weight groups (value groups, for completeness): a ceil(log2 G)-bit id per binarized weight, counted.
/// Binary scale of plane p at (r, g):
///   - factorized: alpha[p][r] * beta[p][g] (fp16 each, one float product): beta folds into x once per GEMV,
///     alpha into the output row, nothing inside the inner loop;
///   - table: alpha[p][r][g] (fp16), optionally with a mean mu[p][r][g] (BiLLM's alpha s + mu).
/// Value of stored binarized column j of row r: t_0 + t_1 + ... + t_{P-1} (float, left to right), with
/// t_p = format::binary_term(sign bit, scale, mu). Salient stored column K_b + k: quant::uniform_grid::value(code).
///
/// Words: sign plane rows are 32-bit words, bit b of word w = stored binarized column 32 w + b, each row padded to
/// a multiple of 4 words (16 bytes) so a row starts 16-byte aligned; every section of the serialized bytes starts at
/// a 16-byte boundary. Padding is stored as zeros, validated on read, and counted in bits().
/// Pruning metadata: optional kept-rows / kept-columns lists (indices into an original orig_rows x orig_cols matrix).
///
/// Threading: none here; the builder and the (de)serializer are sequential and deterministic.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"
#include "../quant/uniform_grid.hpp"
#include "binary_term.hpp"
#include "bit_accounting.hpp"
#include "byte_io.hpp"
#include "rtn.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

enum class sage_group_mode : std::uint8_t { column = 0, weight = 1 };
enum class sage_scale_mode : std::uint8_t { factorized = 0, table = 1 };

/// Bits to store an id in [0, n): ceil(log2 n), 0 for n <= 1.
SAGEPTQ_HOST_DEVICE constexpr int ceil_log2(std::uint64_t n) noexcept {
  int b = 0;
  while (b < 63 && (std::uint64_t{1} << b) < n) ++b;
  return b;
}

/// Everything the header says: the shape and options of one packed matrix, and the sizes derived from them.
struct sage_shape {
  static constexpr int max_planes = 4;
  static constexpr std::uint32_t max_groups = 65536;

  std::uint32_t rows = 0;
  std::uint32_t cols = 0;
  std::uint32_t salient_cols = 0;  ///< K_s, the stored tail
  std::uint32_t groups = 1;        ///< G
  std::uint8_t planes = 1;         ///< P binary planes (residual order)
  std::uint8_t salient_bits = 0;   ///< b_s in [1, 8] when K_s > 0, else 0
  sage_group_mode group_mode = sage_group_mode::column;
  sage_scale_mode scale_mode = sage_scale_mode::factorized;
  bool has_mean = false;           ///< table mode only
  bool salient_symmetric = false;  ///< symmetric salient grids store no zero points
  bool has_kept_rows = false;
  bool has_kept_cols = false;
  bool identity_perm = false;  ///< stored column j is source column j: no col_perm section
  bool word_rows = false;      ///< sign rows padded to 4 bytes instead of 16 (small matrices; kernels may refuse)
  std::uint32_t orig_rows = 0;  ///< rows of the matrix before pruning (= rows without kept_rows)
  std::uint32_t orig_cols = 0;

  SAGEPTQ_HOST_DEVICE constexpr index_t binarized_cols() const noexcept {
    return static_cast<index_t>(cols) - static_cast<index_t>(salient_cols);
  }
  /// Words per sign-plane row: ceil(K_b / 32), rounded up to a multiple of 4 (16-byte rows) unless word_rows.
  SAGEPTQ_HOST_DEVICE constexpr index_t sign_row_words() const noexcept {
    return word_rows ? (binarized_cols() + 31) / 32 : (binarized_cols() + 127) / 128 * 4;
  }
  SAGEPTQ_HOST_DEVICE constexpr int perm_bits() const noexcept { return identity_perm ? 0 : ceil_log2(cols); }
  SAGEPTQ_HOST_DEVICE constexpr index_t perm_words() const noexcept {
    return words_for_bits(static_cast<index_t>(cols) * perm_bits());
  }
  SAGEPTQ_HOST_DEVICE constexpr int id_bits() const noexcept {
    return group_mode == sage_group_mode::weight ? ceil_log2(groups) : 0;
  }
  SAGEPTQ_HOST_DEVICE constexpr index_t id_row_words() const noexcept {
    return words_for_bits(binarized_cols() * id_bits());
  }
  SAGEPTQ_HOST_DEVICE constexpr index_t salient_row_words() const noexcept {
    return words_for_bits(static_cast<index_t>(salient_cols) * salient_bits);
  }
  SAGEPTQ_HOST_DEVICE constexpr std::uint32_t salient_max_code() const noexcept { return (1u << salient_bits) - 1u; }

  friend bool operator==(const sage_shape&, const sage_shape&) = default;
};

/// The arrays of the format, in serialized order (docs/format.md, section 3).
enum class sage_section : int {
  col_perm,        ///< u32 words: cols codes of perm_bits bits, the source column of each stored column
  group_offsets,   ///< u32 [G + 1] (column groups)
  signs,           ///< u32 [P][rows][sign_row_words]
  weight_groups,   ///< u32 [rows][id_row_words] (weight groups with G > 1)
  row_scales,      ///< fp16 [P][rows] (factorized)
  group_scales,    ///< fp16 [P][G] (factorized)
  table_alpha,     ///< fp16 [P][rows][G] (table)
  table_mean,      ///< fp16 [P][rows][G] (table with mean)
  salient_codes,   ///< u32 [rows][salient_row_words]
  salient_scales,  ///< fp16 [rows] (K_s > 0)
  salient_zeros,   ///< u8 [rows] (K_s > 0, asymmetric)
  kept_rows,       ///< u32 [rows]
  kept_cols,       ///< u32 [cols]
  count
};

/// Size of one section and what its payload bits are for (the rest of its words is padding).
struct sage_section_info {
  using bit_field = std::uint64_t bit_breakdown::*;  // an alias: nvcc's host pass misreads the declarator inline
  std::uint64_t elements = 0;
  std::uint64_t element_bytes = 4;
  std::uint64_t payload_bits = 0;
  bit_field category = nullptr;
};

inline sage_section_info section_info(const sage_shape& s, sage_section id) noexcept {
  const std::uint64_t rows = s.rows, cols = s.cols, kb = static_cast<std::uint64_t>(s.binarized_cols()),
                      ks = s.salient_cols, g = s.groups, p = s.planes;
  const bool column = s.group_mode == sage_group_mode::column, table = s.scale_mode == sage_scale_mode::table;
  const bool salient = ks > 0;
  auto words = [](std::uint64_t n, std::uint64_t payload, std::uint64_t bit_breakdown::*cat) {
    return sage_section_info{n, 4, payload, cat};  // u32 words, partly padding
  };
  auto array = [](std::uint64_t n, std::uint64_t element_bits, std::uint64_t bit_breakdown::*cat) {
    return sage_section_info{n, element_bits / 8, n * element_bits, cat};
  };
  switch (id) {
    case sage_section::col_perm:
      return words(static_cast<std::uint64_t>(s.perm_words()), cols * static_cast<std::uint64_t>(s.perm_bits()),
                   &bit_breakdown::salient_position_bits);
    case sage_section::group_offsets:
      return array(column ? g + 1 : 0, 32, &bit_breakdown::group_id_bits);
    case sage_section::signs:
      return words(p * rows * static_cast<std::uint64_t>(s.sign_row_words()), p * rows * kb, &bit_breakdown::sign_bits);
    case sage_section::weight_groups:
      return words(rows * static_cast<std::uint64_t>(s.id_row_words()),
                   rows * kb * static_cast<std::uint64_t>(s.id_bits()), &bit_breakdown::group_id_bits);
    case sage_section::row_scales:
      return array(table ? 0 : p * rows, 16, &bit_breakdown::scale_bits);
    case sage_section::group_scales:
      return array(table ? 0 : p * g, 16, &bit_breakdown::scale_bits);
    case sage_section::table_alpha:
      return array(table ? p * rows * g : 0, 16, &bit_breakdown::scale_bits);
    case sage_section::table_mean:
      return array(s.has_mean ? p * rows * g : 0, 16, &bit_breakdown::scale_bits);
    case sage_section::salient_codes:
      return words(rows * static_cast<std::uint64_t>(s.salient_row_words()), rows * ks * s.salient_bits,
                   &bit_breakdown::code_bits);
    case sage_section::salient_scales:
      return array(salient ? rows : 0, 16, &bit_breakdown::scale_bits);
    case sage_section::salient_zeros:
      return array(salient && !s.salient_symmetric ? rows : 0, 8, &bit_breakdown::scale_bits);
    case sage_section::kept_rows:
      return array(s.has_kept_rows ? rows : 0, 32, &bit_breakdown::metadata_bits);
    case sage_section::kept_cols:
      return array(s.has_kept_cols ? cols : 0, 32, &bit_breakdown::metadata_bits);
    case sage_section::count:
      break;
  }
  return {};
}

/// The column group g with offsets[g] <= j < offsets[g + 1] of stored binarized column j, by binary search over the
/// G + 1 rising group offsets (only offsets[1 .. G - 1] are read: a staged copy of the first G entries serves).
SAGEPTQ_HOST_DEVICE int find_column_group(const std::uint32_t* offsets, int groups, index_t j) noexcept {
  int lo = 0, hi = groups;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (static_cast<index_t>(offsets[mid]) <= j)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/// Non-owning packed matrix: the argument kernels and decoders take. Trivially copyable.
template <class Space = host_space>
struct sage_view {
  sage_shape shape;
  const std::uint32_t* col_perm = nullptr;
  const std::uint32_t* group_offsets = nullptr;
  const std::uint32_t* signs = nullptr;
  const std::uint32_t* weight_groups = nullptr;
  const fp16* row_scales = nullptr;
  const fp16* group_scales = nullptr;
  const fp16* table_alpha = nullptr;
  const fp16* table_mean = nullptr;
  const std::uint32_t* salient_codes = nullptr;
  const fp16* salient_scales = nullptr;
  const std::uint8_t* salient_zeros = nullptr;
  const std::uint32_t* kept_rows = nullptr;
  const std::uint32_t* kept_cols = nullptr;

  /// Source (original) column of stored column j.
  SAGEPTQ_HOST_DEVICE index_t source_column(index_t j) const noexcept {
    if (shape.identity_perm) return j;
    return shape.perm_bits() == 0 ? 0 : static_cast<index_t>(read_code(col_perm, j, shape.perm_bits()));
  }
  /// Sign bit of plane p at row r, stored binarized column j (true: +1).
  SAGEPTQ_HOST_DEVICE bool positive(int p, index_t r, index_t j) const noexcept {
    const std::uint32_t word = signs[(static_cast<index_t>(p) * shape.rows + r) * shape.sign_row_words() + j / 32];
    return (word >> (j % 32)) & 1u;
  }
  /// Group of stored binarized column j in row r.
  SAGEPTQ_HOST_DEVICE int group(index_t r, index_t j) const noexcept {
    if (shape.group_mode == sage_group_mode::weight)
      return shape.id_bits() == 0
                 ? 0
                 : static_cast<int>(read_code(weight_groups + r * shape.id_row_words(), j, shape.id_bits()));
    return find_column_group(group_offsets, static_cast<int>(shape.groups), j);
  }
  /// Value of stored binarized column j of row r.
  SAGEPTQ_HOST_DEVICE float binary_value(index_t r, index_t j) const noexcept {
    const index_t g = group(r, j);
    float value = 0;
    for (int p = 0; p < shape.planes; ++p) {
      float term;
      if (shape.scale_mode == sage_scale_mode::factorized) {
        term = binary_term(positive(p, r, j),
                           factorized_scale(row_scales[p * static_cast<index_t>(shape.rows) + r].to_float(),
                                            group_scales[p * static_cast<index_t>(shape.groups) + g].to_float()));
      } else {
        const index_t at = (p * static_cast<index_t>(shape.rows) + r) * shape.groups + g;
        term = shape.has_mean ? binary_term(positive(p, r, j), table_alpha[at].to_float(), table_mean[at].to_float())
                              : binary_term(positive(p, r, j), table_alpha[at].to_float());
      }
      value = p == 0 ? term : value + term;
    }
    return value;
  }
  SAGEPTQ_HOST_DEVICE std::uint32_t salient_code(index_t r, index_t k) const noexcept {
    return read_code(salient_codes + r * shape.salient_row_words(), k, shape.salient_bits);
  }
  /// Value of salient code k of row r: scale * (q - zero), the arithmetic of quant::uniform_grid::value (restated
  /// here because that one is host-only).
  SAGEPTQ_HOST_DEVICE float salient_value(index_t r, index_t k) const noexcept {
    const float max_code = static_cast<float>(shape.salient_max_code());
    const float zero = shape.salient_symmetric ? 0.5f * max_code : static_cast<float>(salient_zeros[r]);
    return salient_scales[r].to_float() * (static_cast<float>(salient_code(r, k)) - zero);
  }
  /// Value of stored column j (binarized for j < K_b, salient tail otherwise) of row r.
  SAGEPTQ_HOST_DEVICE float stored_value(index_t r, index_t j) const noexcept {
    const index_t kb = shape.binarized_cols();
    return j < kb ? binary_value(r, j) : salient_value(r, j - kb);
  }
};

static_assert(std::is_trivially_copyable_v<sage_view<device_space>>, "a kernel argument must be trivially copyable");

/// Owning host matrix. Arrays are in serialized order; sizes follow section_info(shape, ...).
struct sage_matrix {
  sage_shape shape;
  std::vector<std::uint32_t> col_perm;
  std::vector<std::uint32_t> group_offsets;
  std::vector<std::uint32_t> signs;
  std::vector<std::uint32_t> weight_groups;
  std::vector<fp16> row_scales;
  std::vector<fp16> group_scales;
  std::vector<fp16> table_alpha;
  std::vector<fp16> table_mean;
  std::vector<std::uint32_t> salient_codes;
  std::vector<fp16> salient_scales;
  std::vector<std::uint8_t> salient_zeros;
  std::vector<std::uint32_t> kept_rows;
  std::vector<std::uint32_t> kept_cols;

  [[nodiscard]] sage_view<host_space> view() const noexcept;

  /// Every serialized bit by purpose; full_bits() == 8 * serialize(*this).size().
  [[nodiscard]] bit_breakdown bits() const noexcept;
};

/// Calls f(section, array) for every array of m in serialized order (m const or not).
template <class Matrix, class F>
  requires std::is_same_v<std::remove_const_t<Matrix>, sage_matrix>
void for_each_section(Matrix& m, F&& f) {
  f(sage_section::col_perm, m.col_perm);
  f(sage_section::group_offsets, m.group_offsets);
  f(sage_section::signs, m.signs);
  f(sage_section::weight_groups, m.weight_groups);
  f(sage_section::row_scales, m.row_scales);
  f(sage_section::group_scales, m.group_scales);
  f(sage_section::table_alpha, m.table_alpha);
  f(sage_section::table_mean, m.table_mean);
  f(sage_section::salient_codes, m.salient_codes);
  f(sage_section::salient_scales, m.salient_scales);
  f(sage_section::salient_zeros, m.salient_zeros);
  f(sage_section::kept_rows, m.kept_rows);
  f(sage_section::kept_cols, m.kept_cols);
}

/// Calls f(section, pointer) for every array pointer of a view, in serialized order.
template <class Space, class F>
void for_each_section(sage_view<Space>& v, F&& f) {
  f(sage_section::col_perm, v.col_perm);
  f(sage_section::group_offsets, v.group_offsets);
  f(sage_section::signs, v.signs);
  f(sage_section::weight_groups, v.weight_groups);
  f(sage_section::row_scales, v.row_scales);
  f(sage_section::group_scales, v.group_scales);
  f(sage_section::table_alpha, v.table_alpha);
  f(sage_section::table_mean, v.table_mean);
  f(sage_section::salient_codes, v.salient_codes);
  f(sage_section::salient_scales, v.salient_scales);
  f(sage_section::salient_zeros, v.salient_zeros);
  f(sage_section::kept_rows, v.kept_rows);
  f(sage_section::kept_cols, v.kept_cols);
}

inline sage_view<host_space> sage_matrix::view() const noexcept {
  const void* data[static_cast<int>(sage_section::count)] = {};
  for_each_section(*this, [&](sage_section id, const auto& array) {
    data[static_cast<int>(id)] = array.empty() ? nullptr : array.data();
  });
  sage_view<host_space> v{shape};
  for_each_section(v, [&](sage_section id, auto& ptr) {
    ptr = static_cast<std::remove_reference_t<decltype(ptr)>>(data[static_cast<int>(id)]);
  });
  return v;
}

/// Serialized layout constants (docs/format.md).
struct sage_file {
  static constexpr std::uint8_t magic[8] = {'S', 'A', 'G', 'E', 'P', 'T', 'Q', 'W'};
  static constexpr std::uint16_t version = 1;
  static constexpr std::size_t header_bytes = 64;
  static constexpr std::size_t alignment = 16;
  // Flag bits of the header's u32 flags field; the others must be zero.
  static constexpr std::uint32_t flag_has_mean = 1u << 0;
  static constexpr std::uint32_t flag_salient_symmetric = 1u << 1;
  static constexpr std::uint32_t flag_kept_rows = 1u << 2;
  static constexpr std::uint32_t flag_kept_cols = 1u << 3;
  static constexpr std::uint32_t flag_identity_perm = 1u << 4;
  static constexpr std::uint32_t flag_word_rows = 1u << 5;
  static constexpr std::uint32_t known_flags = 0x3fu;
  static constexpr std::uint64_t max_weights = std::uint64_t{1} << 40;
  static constexpr std::size_t checksum_offset = 56;  ///< u64 FNV-1a of the file with these 8 bytes as zeros

  static std::uint64_t checksum(std::span<const std::uint8_t> file) noexcept {
    constexpr std::uint8_t zeros[8] = {};
    std::uint64_t h = fnv1a64(file.first(checksum_offset));
    h = fnv1a64(zeros, h);
    return fnv1a64(file.subspan(checksum_offset + 8), h);
  }
};

/// Where every section starts in the serialized bytes (a section without elements takes no bytes and keeps the
/// offset it would have), and the total size: header, 16-byte aligned sections, final alignment.
struct sage_offsets {
  std::uint64_t section[static_cast<int>(sage_section::count)] = {};
  std::uint64_t total = 0;
};

inline sage_offsets serialized_offsets(const sage_shape& s) noexcept {
  constexpr std::uint64_t a = sage_file::alignment;
  sage_offsets o;
  std::uint64_t end = sage_file::header_bytes;
  for (int i = 0; i < static_cast<int>(sage_section::count); ++i) {
    const sage_section_info info = section_info(s, static_cast<sage_section>(i));
    o.section[i] = (end + a - 1) / a * a;
    if (info.elements > 0) end = o.section[i] + info.elements * info.element_bytes;
  }
  o.total = (end + a - 1) / a * a;
  return o;
}

inline std::uint64_t serialized_bytes(const sage_shape& s) noexcept { return serialized_offsets(s).total; }

/// Every serialized bit of a matrix of this shape, by purpose: header and kept lists are metadata, the permutation
/// is salient_position, offsets and weight ids are group_id, word tails and alignment are padding.
inline bit_breakdown sage_bits(const sage_shape& s) noexcept {
  bit_breakdown b;
  b.weights = std::uint64_t{s.rows} * s.cols;
  b.metadata_bits = 8 * sage_file::header_bytes;
  std::uint64_t payload = b.metadata_bits;
  for (int i = 0; i < static_cast<int>(sage_section::count); ++i) {
    const sage_section_info info = section_info(s, static_cast<sage_section>(i));
    b.*info.category += info.payload_bits;
    payload += info.payload_bits;
  }
  b.padding_bits = 8 * serialized_bytes(s) - payload;
  b.paper_bits = b.sign_bits + b.code_bits;
  return b;
}

inline bit_breakdown sage_matrix::bits() const noexcept { return sage_bits(shape); }

/// A view of serialized bytes in place, for a buffer the caller copied them into (a device copy, a mapped file):
/// every array is read at its section offset, so the buffer must be 16-byte aligned and hold bytes that passed
/// deserialize() (or came from serialize()). The arrays are read as native integers: little-endian targets only.
template <class Space = host_space>
sage_view<Space> view_serialized(const sage_shape& shape, const void* bytes) noexcept {
  static_assert(std::endian::native == std::endian::little, "sageptq: in-place views need a little-endian target");
  const sage_offsets o = serialized_offsets(shape);
  sage_view<Space> v{shape};
  for_each_section(v, [&]<class T>(sage_section id, const T*& ptr) {
    ptr = section_info(shape, id).elements == 0
              ? nullptr
              : reinterpret_cast<const T*>(static_cast<const std::uint8_t*>(bytes) + o.section[static_cast<int>(id)]);
  });
  return v;
}

/// Header rules shared by the builder and the reader: ranges, mode combinations, size limits.
inline outcome check_shape(const sage_shape& s, status code) {
  auto bad = [code](const std::string& why) { return fail(code, "sage matrix: " + why); };
  if (s.rows == 0 || s.cols == 0) return bad("rows and cols must be > 0");
  if (s.rows > 0x7fffffffu || s.cols > 0x7fffffffu || std::uint64_t{s.rows} * s.cols > sage_file::max_weights)
    return bad("shape " + std::to_string(s.rows) + " x " + std::to_string(s.cols) + " is beyond the format's limits");
  if (s.salient_cols > s.cols) return bad("more salient columns than columns");
  if (s.planes < 1 || s.planes > sage_shape::max_planes) return bad("planes must be in [1, 4]");
  if (s.groups < 1 || s.groups > sage_shape::max_groups) return bad("groups must be in [1, 65536]");
  if (s.group_mode != sage_group_mode::column && s.group_mode != sage_group_mode::weight) return bad("bad group mode");
  if (s.scale_mode != sage_scale_mode::factorized && s.scale_mode != sage_scale_mode::table)
    return bad("bad scale mode");
  if (s.has_mean && s.scale_mode != sage_scale_mode::table) return bad("a mean needs the table scale mode");
  if (s.salient_cols > 0 ? (s.salient_bits < 1 || s.salient_bits > 8) : s.salient_bits != 0)
    return bad("salient bits must be in [1, 8] with salient columns, 0 without");
  if (s.salient_cols == 0 && s.salient_symmetric) return bad("salient_symmetric set without salient columns");
  if (s.has_kept_rows ? s.orig_rows < s.rows : s.orig_rows != s.rows) return bad("orig_rows disagrees with rows");
  if (s.has_kept_cols ? s.orig_cols < s.cols : s.orig_cols != s.cols) return bad("orig_cols disagrees with cols");
  return {};
}

namespace detail {
/// Bits [from, 32 * words.size()) of a word row are zero.
inline bool tail_is_zero(std::span<const std::uint32_t> row, std::uint64_t from) noexcept {
  for (std::uint64_t w = from / 32; w < row.size(); ++w) {
    const std::uint64_t first = std::max<std::uint64_t>(from, 32 * w) - 32 * w;
    const std::uint32_t mask = first >= 32 ? 0u : ~0u << first;
    if (row[static_cast<std::size_t>(w)] & mask) return false;
  }
  return true;
}
inline bool strictly_increasing_below(const std::vector<std::uint32_t>& v, std::uint32_t bound) noexcept {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] >= bound || (i > 0 && v[i] <= v[i - 1])) return false;
  return true;
}
}  // namespace detail

/// Content rules: array sizes match the shape, the permutation is one, offsets and ids are in range, every scale is
/// finite, zero points fit the grid, kept lists increase, and every padding bit is zero.
inline outcome validate(const sage_matrix& m, status code = status::malformed_input) {
  auto bad = [code](const std::string& why) { return fail(code, "sage matrix: " + why); };
  if (auto ok = check_shape(m.shape, code); !ok) return ok;
  const sage_shape& s = m.shape;
  bool sizes_ok = true;
  for_each_section(
      m, [&](sage_section id, const auto& array) { sizes_ok &= array.size() == section_info(s, id).elements; });
  if (!sizes_ok) return bad("an array's size disagrees with the shape");

  const auto v = m.view();
  std::vector<char> seen(s.cols, 0);
  for (index_t j = 0; j < s.cols; ++j) {
    const index_t c = v.source_column(j);
    if (c >= s.cols || seen[static_cast<std::size_t>(c)]) return bad("col_perm is not a permutation");
    seen[static_cast<std::size_t>(c)] = 1;
  }
  if (!detail::tail_is_zero(m.col_perm, std::uint64_t{s.cols} * s.perm_bits()))
    return bad("col_perm padding is not zero");
  const index_t kb = s.binarized_cols();
  if (s.group_mode == sage_group_mode::column) {
    if (m.group_offsets.front() != 0 || m.group_offsets.back() != kb ||
        !std::is_sorted(m.group_offsets.begin(), m.group_offsets.end()))
      return bad("group_offsets must rise from 0 to the binarized column count");
  } else {
    for (index_t r = 0; r < s.rows; ++r) {
      for (index_t j = 0; j < kb; ++j)
        if (static_cast<std::uint32_t>(v.group(r, j)) >= s.groups) return bad("a weight group id is >= groups");
      if (!detail::tail_is_zero(
              {m.weight_groups.data() + r * s.id_row_words(), static_cast<std::size_t>(s.id_row_words())},
              static_cast<std::uint64_t>(kb) * s.id_bits()))
        return bad("weight group padding is not zero");
    }
  }
  for (std::size_t row = 0; row < m.signs.size() / std::max<std::size_t>(1, s.sign_row_words()); ++row)
    if (!detail::tail_is_zero({m.signs.data() + row * s.sign_row_words(), static_cast<std::size_t>(s.sign_row_words())},
                              static_cast<std::uint64_t>(kb)))
      return bad("sign padding is not zero");
  for (index_t r = 0; r < s.rows && s.salient_cols > 0; ++r) {
    if (!detail::tail_is_zero(
            {m.salient_codes.data() + r * s.salient_row_words(), static_cast<std::size_t>(s.salient_row_words())},
            std::uint64_t{s.salient_cols} * s.salient_bits))
      return bad("salient code padding is not zero");
    if (!s.salient_symmetric && m.salient_zeros[static_cast<std::size_t>(r)] > s.salient_max_code())
      return bad("a salient zero point is beyond the grid");
  }
  bool finite = true;
  for_each_section(m, [&](sage_section, const auto& array) {
    if constexpr (std::is_same_v<typename std::decay_t<decltype(array)>::value_type, fp16>)
      for (fp16 h : array) finite &= is_finite(h.to_float());
  });
  if (!finite) return bad("a scale is not finite");
  if (!detail::strictly_increasing_below(m.kept_rows, s.orig_rows) ||
      !detail::strictly_increasing_below(m.kept_cols, s.orig_cols))
    return bad("kept lists must increase strictly and stay below the original extents");
  return {};
}

/// The serialized bytes (docs/format.md). Deterministic: equal matrices give equal bytes.
inline std::vector<std::uint8_t> serialize(const sage_matrix& m) {
  const sage_shape& s = m.shape;
  std::vector<std::uint8_t> out;
  out.reserve(static_cast<std::size_t>(serialized_bytes(s)));
  byte_writer w(out);
  for (std::uint8_t c : sage_file::magic) w.put(c, 1);
  w.put(sage_file::version, 2);
  w.put(sage_file::header_bytes, 2);
  w.put((s.has_mean ? sage_file::flag_has_mean : 0u) | (s.salient_symmetric ? sage_file::flag_salient_symmetric : 0u) |
            (s.has_kept_rows ? sage_file::flag_kept_rows : 0u) | (s.has_kept_cols ? sage_file::flag_kept_cols : 0u) |
            (s.identity_perm ? sage_file::flag_identity_perm : 0u) | (s.word_rows ? sage_file::flag_word_rows : 0u),
        4);
  for (std::uint32_t v : {s.rows, s.cols, s.salient_cols, s.groups}) w.put(v, 4);
  for (std::uint8_t v :
       {s.planes, s.salient_bits, static_cast<std::uint8_t>(s.group_mode), static_cast<std::uint8_t>(s.scale_mode)})
    w.put(v, 1);
  for (std::uint32_t v : {s.orig_rows, s.orig_cols, 0u}) w.put(v, 4);
  w.put(serialized_bytes(s), 8);
  w.put(0, 8);  // checksum, filled in below
  for_each_section(m, [&](sage_section, const auto& array) {
    if (array.empty()) return;
    w.pad_to(sage_file::alignment);
    w.put_array(array);
  });
  w.pad_to(sage_file::alignment);
  const std::uint64_t checksum = sage_file::checksum(out);
  for (std::size_t i = 0; i < 8; ++i)
    out[sage_file::checksum_offset + i] = static_cast<std::uint8_t>(checksum >> (8 * i));
  return out;
}

/// Parse and validate serialized bytes. Never reads out of bounds and allocates only after the sizes the header
/// implies were checked against the buffer.
/// @return the matrix, or malformed_input (truncated, wrong magic or version, inconsistent sizes or contents).
inline result<sage_matrix> deserialize(std::span<const std::uint8_t> bytes) {
  auto bad = [](const std::string& why) { return fail(status::malformed_input, "sage bytes: " + why); };
  byte_reader in(bytes);
  bool complete = true;
  auto field = [&](std::size_t width) {
    std::uint64_t x = 0;
    complete = complete && in.get(x, width);
    return x;
  };
  bool magic_ok = true;
  for (std::uint8_t c : sage_file::magic) magic_ok &= field(1) == c;
  const std::uint64_t version = field(2), header_bytes = field(2), flags = field(4);
  sage_matrix m;
  sage_shape& s = m.shape;
  s.rows = static_cast<std::uint32_t>(field(4));
  s.cols = static_cast<std::uint32_t>(field(4));
  s.salient_cols = static_cast<std::uint32_t>(field(4));
  s.groups = static_cast<std::uint32_t>(field(4));
  s.planes = static_cast<std::uint8_t>(field(1));
  s.salient_bits = static_cast<std::uint8_t>(field(1));
  const std::uint64_t group_mode = field(1), scale_mode = field(1);
  s.orig_rows = static_cast<std::uint32_t>(field(4));
  s.orig_cols = static_cast<std::uint32_t>(field(4));
  const std::uint64_t reserved = field(4), total = field(8), checksum = field(8);
  if (!complete) return bad("truncated header (" + std::to_string(bytes.size()) + " bytes)");
  if (!magic_ok) return bad("wrong magic");
  if (version != sage_file::version)
    return bad("unsupported version " + std::to_string(version) + " (this build reads " +
               std::to_string(sage_file::version) + ")");
  if (header_bytes != sage_file::header_bytes) return bad("wrong header size");
  if (flags & ~std::uint64_t{sage_file::known_flags}) return bad("unknown flags");
  if (reserved != 0) return bad("the reserved header field is not zero");
  if (group_mode > 1 || scale_mode > 1) return bad("unknown group or scale mode");
  s.group_mode = static_cast<sage_group_mode>(group_mode);
  s.scale_mode = static_cast<sage_scale_mode>(scale_mode);
  s.has_mean = flags & sage_file::flag_has_mean;
  s.salient_symmetric = flags & sage_file::flag_salient_symmetric;
  s.has_kept_rows = flags & sage_file::flag_kept_rows;
  s.has_kept_cols = flags & sage_file::flag_kept_cols;
  s.identity_perm = flags & sage_file::flag_identity_perm;
  s.word_rows = flags & sage_file::flag_word_rows;
  if (auto ok = check_shape(s, status::malformed_input); !ok) return ok;
  const std::uint64_t expected = serialized_bytes(s);
  if (total != expected || bytes.size() != expected)
    return bad("size mismatch: header says " + std::to_string(total) + " bytes, shape implies " +
               std::to_string(expected) + ", buffer holds " + std::to_string(bytes.size()));
  if (checksum != sage_file::checksum(bytes)) return bad("checksum mismatch (corrupted bytes)");

  bool read_ok = true;
  for_each_section(m, [&](sage_section id, auto& array) {
    const std::uint64_t n = section_info(s, id).elements;
    if (n == 0 || !read_ok) return;
    array.resize(static_cast<std::size_t>(n));
    read_ok = in.skip_zero_padding(sage_file::alignment) && in.get_array(array);
  });
  if (!read_ok || !in.skip_zero_padding(sage_file::alignment)) return bad("nonzero section padding");
  if (auto ok = validate(m); !ok) return ok;
  return m;
}

/// Decode into a rows x cols float matrix in the ORIGINAL column order (the scalar reference of every kernel).
template <class Space>
void decode(const sage_view<Space>& packed, matrix_view<float> out) {
  static_assert(std::is_same_v<Space, host_space>, "sageptq: decode() runs on host memory");
  SAGEPTQ_ASSERT(out.rows() == packed.shape.rows && out.cols() == packed.shape.cols);
  std::vector<index_t> source(static_cast<std::size_t>(packed.shape.cols));
  for (index_t j = 0; j < packed.shape.cols; ++j) source[static_cast<std::size_t>(j)] = packed.source_column(j);
  for (index_t r = 0; r < packed.shape.rows; ++r)
    for (index_t j = 0; j < packed.shape.cols; ++j)
      out(r, source[static_cast<std::size_t>(j)]) = packed.stored_value(r, j);
}

/// What the pipeline knows before it fills a sage matrix in (all column indices are source columns).
struct sage_spec {
  index_t rows = 0;
  index_t cols = 0;
  std::vector<index_t> salient_columns;  ///< stored at the tail in this order
  int salient_bits = 4;                  ///< ignored without salient columns
  bool salient_symmetric = false;
  int planes = 1;
  int groups = 1;
  sage_group_mode group_mode = sage_group_mode::column;
  std::vector<std::int32_t> column_group;  ///< column groups: group of every source column (salient ones ignored);
                                           ///< empty means all in group 0
  sage_scale_mode scale_mode = sage_scale_mode::factorized;
  bool with_mean = false;                ///< table mode only
  std::vector<std::uint32_t> kept_rows;  ///< optional pruning metadata: source rows of an orig_rows-row matrix
  std::vector<std::uint32_t> kept_cols;
  index_t orig_rows = 0;  ///< required with kept_rows
  index_t orig_cols = 0;
  bool word_rows = false;  ///< 4-byte sign rows: fewer padding bits for narrow matrices, no 16-byte kernel loads
};

/// Fills a sage_matrix from the quantizer's signs, group assignment, scales and salient codes. Setters take source
/// coordinates; scales must already be fp16 values (quant::binarize rounds them; finish() checks), so decode()
/// reproduces the quantizer's floats exactly. Setter preconditions are assertions; finish() checks the values.
class sage_builder {
 public:
  /// @return a builder with every sign negative, scale 0 and code 0, or invalid_argument / invalid_shape.
  static result<sage_builder> create(const sage_spec& spec) {
    auto bad = [](status code, const std::string& why) { return fail(code, "sage_builder: " + why); };
    if (spec.rows <= 0 || spec.cols <= 0 || spec.rows > 0x7fffffff || spec.cols > 0x7fffffff)
      return bad(status::invalid_shape, "rows and cols must be in [1, 2^31)");
    sage_builder b;
    sage_shape& s = b.m_.shape;
    s.rows = static_cast<std::uint32_t>(spec.rows);
    s.cols = static_cast<std::uint32_t>(spec.cols);
    s.salient_cols = static_cast<std::uint32_t>(std::min<std::size_t>(spec.salient_columns.size(), 0xffffffffu));
    s.groups = static_cast<std::uint32_t>(std::clamp(spec.groups, 0, 1 << 20));
    s.planes = static_cast<std::uint8_t>(std::clamp(spec.planes, 0, 255));
    s.salient_bits =
        spec.salient_columns.empty() ? 0 : static_cast<std::uint8_t>(std::clamp(spec.salient_bits, 0, 255));
    s.group_mode = spec.group_mode;
    s.scale_mode = spec.scale_mode;
    s.has_mean = spec.with_mean;
    s.salient_symmetric = !spec.salient_columns.empty() && spec.salient_symmetric;
    s.has_kept_rows = !spec.kept_rows.empty();
    s.has_kept_cols = !spec.kept_cols.empty();
    s.orig_rows =
        static_cast<std::uint32_t>(s.has_kept_rows ? std::clamp<index_t>(spec.orig_rows, 0, 0xffffffff) : spec.rows);
    s.orig_cols =
        static_cast<std::uint32_t>(s.has_kept_cols ? std::clamp<index_t>(spec.orig_cols, 0, 0xffffffff) : spec.cols);
    if (auto ok = check_shape(s, status::invalid_argument); !ok) return ok;
    if (s.has_kept_rows && spec.kept_rows.size() != s.rows)
      return bad(status::invalid_shape, "kept_rows needs rows entries");
    if (s.has_kept_cols && spec.kept_cols.size() != s.cols)
      return bad(status::invalid_shape, "kept_cols needs cols entries");
    if (!spec.column_group.empty() && static_cast<index_t>(spec.column_group.size()) != spec.cols)
      return bad(status::invalid_shape, "column_group needs one entry per column");

    // Stored order: binarized columns sorted by (group, source index), then the salient columns as listed.
    std::vector<char> salient(static_cast<std::size_t>(spec.cols), 0);
    for (index_t c : spec.salient_columns) {
      if (c < 0 || c >= spec.cols || salient[static_cast<std::size_t>(c)])
        return bad(status::invalid_argument, "salient columns must be distinct and in [0, cols)");
      salient[static_cast<std::size_t>(c)] = 1;
    }
    const bool by_column = s.group_mode == sage_group_mode::column;
    auto group_of = [&](index_t c) {
      return by_column && !spec.column_group.empty() ? spec.column_group[static_cast<std::size_t>(c)] : 0;
    };
    std::vector<index_t> order;
    for (index_t c = 0; c < spec.cols; ++c) {
      if (salient[static_cast<std::size_t>(c)]) continue;
      if (group_of(c) < 0 || group_of(c) >= spec.groups)
        return bad(status::invalid_argument, "column " + std::to_string(c) + " has a group outside [0, groups)");
      order.push_back(c);
    }
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t c) { return group_of(a) < group_of(c); });
    order.insert(order.end(), spec.salient_columns.begin(), spec.salient_columns.end());
    s.word_rows = spec.word_rows;
    s.identity_perm = true;  // an identity permutation is a flag, not cols * ceil(log2 cols) bits
    for (index_t j = 0; j < spec.cols; ++j) s.identity_perm &= order[static_cast<std::size_t>(j)] == j;

    for_each_section(b.m_, [&](sage_section id, auto& array) { array.resize(section_info(s, id).elements); });
    b.stored_.assign(static_cast<std::size_t>(spec.cols), 0);
    for (index_t j = 0; j < spec.cols; ++j) {
      if (s.perm_bits() > 0)
        write_code(b.m_.col_perm.data(), j, s.perm_bits(),
                   static_cast<std::uint32_t>(order[static_cast<std::size_t>(j)]));
      b.stored_[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] = j;
    }
    if (by_column) {
      for (index_t j = 0; j < s.binarized_cols(); ++j)
        ++b.m_.group_offsets[static_cast<std::size_t>(group_of(order[static_cast<std::size_t>(j)])) + 1];
      std::partial_sum(b.m_.group_offsets.begin(), b.m_.group_offsets.end(), b.m_.group_offsets.begin());
    }
    b.scales_.assign(b.m_.row_scales.size() + b.m_.group_scales.size() + b.m_.table_alpha.size() +
                         b.m_.table_mean.size() + b.m_.salient_scales.size(),
                     0.0f);
    b.zeros_.assign(b.m_.salient_scales.size(),
                    s.salient_symmetric ? 0.5f * static_cast<float>(s.salient_max_code()) : 0.0f);
    b.m_.kept_rows = spec.kept_rows;
    b.m_.kept_cols = spec.kept_cols;
    return b;
  }

  [[nodiscard]] const sage_shape& shape() const noexcept { return m_.shape; }
  /// Position of source column c in the stored order (binarized: < K_b; salient: K_b + its index in the list).
  [[nodiscard]] index_t stored_column(index_t c) const noexcept { return stored_[static_cast<std::size_t>(c)]; }
  [[nodiscard]] bool is_salient(index_t c) const noexcept { return stored_column(c) >= m_.shape.binarized_cols(); }

  void set_sign(int plane, index_t r, index_t c, bool positive) noexcept {
    const index_t j = binarized(c);
    SAGEPTQ_ASSERT(plane >= 0 && plane < m_.shape.planes && r >= 0 && r < m_.shape.rows);
    std::uint32_t& word = m_.signs[static_cast<std::size_t>(
        (plane * static_cast<index_t>(m_.shape.rows) + r) * m_.shape.sign_row_words() + j / 32)];
    const std::uint32_t bit = 1u << (j % 32);
    word = positive ? (word | bit) : (word & ~bit);
  }
  /// positive(r, c) -> bool for every row and binarized source column c.
  template <class F>
  void set_signs(int plane, F&& positive) {
    for (index_t r = 0; r < m_.shape.rows; ++r)
      for (index_t c = 0; c < m_.shape.cols; ++c)
        if (!is_salient(c)) set_sign(plane, r, c, static_cast<bool>(positive(r, c)));
  }
  /// Weight groups only: the group of weight (r, c).
  void set_weight_group(index_t r, index_t c, int g) noexcept {
    SAGEPTQ_ASSERT(m_.shape.group_mode == sage_group_mode::weight && g >= 0 &&
                   static_cast<std::uint32_t>(g) < m_.shape.groups);
    if (m_.shape.id_bits() > 0)
      assign_code(m_.weight_groups.data() + r * m_.shape.id_row_words(), binarized(c), m_.shape.id_bits(),
                  static_cast<std::uint32_t>(g));
  }
  /// Factorized scales: alpha of row r and beta of group g, plane p.
  void set_row_scale(int plane, index_t r, float alpha) noexcept {
    SAGEPTQ_ASSERT(m_.shape.scale_mode == sage_scale_mode::factorized);
    scale(plane * static_cast<index_t>(m_.shape.rows) + r) = alpha;
  }
  void set_group_scale(int plane, int g, float beta) noexcept {
    SAGEPTQ_ASSERT(m_.shape.scale_mode == sage_scale_mode::factorized);
    scale(static_cast<index_t>(m_.row_scales.size()) + plane * static_cast<index_t>(m_.shape.groups) + g) = beta;
  }
  /// Table scales: alpha (and mu, with a mean) of (row r, group g), plane p.
  void set_table_scale(int plane, index_t r, int g, float alpha, float mu = 0.0f) noexcept {
    SAGEPTQ_ASSERT(m_.shape.scale_mode == sage_scale_mode::table && (m_.shape.has_mean || mu == 0.0f));
    const index_t at = (plane * static_cast<index_t>(m_.shape.rows) + r) * m_.shape.groups + g;
    scale(at) = alpha;
    if (m_.shape.has_mean) scale(static_cast<index_t>(m_.table_alpha.size()) + at) = mu;
  }
  /// Row r's salient grid (its max_code must be 2^b_s - 1, its scale an fp16 value).
  void set_salient_grid(index_t r, const quant::uniform_grid& grid) noexcept {
    SAGEPTQ_ASSERT(m_.shape.salient_cols > 0);
    scale(static_cast<index_t>(scales_.size() - m_.salient_scales.size()) + r) = grid.scale;
    zeros_[static_cast<std::size_t>(r)] = grid.zero;
    grid_ok_ &= grid.max_code == m_.shape.salient_max_code();
  }
  void set_salient_code(index_t r, index_t c, std::uint32_t code) noexcept {
    const index_t k = stored_column(c) - m_.shape.binarized_cols();
    SAGEPTQ_ASSERT(k >= 0 && r >= 0 && r < m_.shape.rows);
    code_ok_ &= code <= m_.shape.salient_max_code();
    assign_code(m_.salient_codes.data() + r * m_.shape.salient_row_words(), k, m_.shape.salient_bits,
                code & m_.shape.salient_max_code());
  }

  /// @return the packed matrix, or invalid_argument if a scale is not an fp16 value, a grid does not fit the
  ///         format (wrong bit width, zero point not an integer of the grid, symmetric mismatch) or a code is too
  ///         large.
  result<sage_matrix> finish() && {
    auto bad = [](const std::string& why) { return fail(status::invalid_argument, "sage_builder: " + why); };
    if (!grid_ok_) return bad("a salient grid has another bit width than the format");
    if (!code_ok_) return bad("a salient code exceeds 2^bits - 1");
    std::size_t at = 0;
    bool scales_ok = true;
    for (auto* array : {&m_.row_scales, &m_.group_scales, &m_.table_alpha, &m_.table_mean, &m_.salient_scales})
      for (fp16& h : *array) {
        const float f = scales_[at++];
        h = fp16(f);
        scales_ok &= is_finite(f) && h.to_float() == f;
      }
    if (!scales_ok) return bad("a scale is not finite or not an fp16 value (round it before quantizing)");
    const float max_code = static_cast<float>(m_.shape.salient_max_code());
    for (std::size_t r = 0; r < m_.salient_scales.size(); ++r) {
      const float z = zeros_[r];
      if (m_.shape.salient_symmetric) {
        if (z != 0.5f * max_code) return bad("a symmetric salient grid needs zero = (2^bits - 1) / 2");
      } else if (!(z >= 0.0f && z <= max_code && z == static_cast<float>(static_cast<int>(z)))) {
        return bad("an asymmetric salient zero point must be an integer in [0, 2^bits - 1]");
      } else {
        m_.salient_zeros[r] = static_cast<std::uint8_t>(z);
      }
    }
    if (auto ok = validate(m_, status::invalid_argument); !ok) return ok;
    return std::move(m_);
  }

 private:
  sage_builder() = default;
  index_t binarized(index_t c) const noexcept {
    const index_t j = stored_column(c);
    SAGEPTQ_ASSERT(j < m_.shape.binarized_cols());
    return j;
  }
  float& scale(index_t i) noexcept { return scales_[static_cast<std::size_t>(i)]; }
  /// Overwrite code c of a word row (write_code only ORs): flip exactly the bits in which old and new differ.
  static void assign_code(std::uint32_t* row, index_t c, int bits, std::uint32_t code) noexcept {
    const std::uint32_t flip = read_code(row, c, bits) ^ code;
    const index_t bit = c * bits;
    const int shift = static_cast<int>(bit % 32);
    row[bit / 32] ^= flip << shift;
    if (shift + bits > 32) row[bit / 32 + 1] ^= flip >> (32 - shift);
  }

  sage_matrix m_;
  std::vector<index_t> stored_;  ///< source column -> stored column
  std::vector<float> scales_;    ///< row, group, table alpha, table mean, salient scales (serialized order)
  std::vector<float> zeros_;     ///< salient grid zeros
  bool grid_ok_ = true;
  bool code_ok_ = true;
};

}  // namespace format
SAGEPTQ_NAMESPACE_END
