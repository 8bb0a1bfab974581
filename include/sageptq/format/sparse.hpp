#pragma once
/// @file sparse.hpp
/// Weights stored apart from a dense code matrix at fp16 (SEPTQ's kept 1 %), compressed by rows (CSR):
///
///   row_offsets : uint32 [rows + 1], the entries of row r are [row_offsets[r], row_offsets[r + 1])
///   columns     : uint16 [nnz], strictly increasing within a row
///   values      : fp16   [nnz]
///
/// Column indices are always uint16, so a matrix may have at most 65536 columns (every LLaMA-family linear layer;
/// encode_sparse rejects wider ones): fixed-width indices are plain loads for a GEMV kernel, and ⌈log₂ cols⌉-bit
/// streams would save at most 0.06 bpw at 1 % density.
///
/// Bits: offsets and columns are salient_position_bits, values salient_value_bits; full bits are exactly the bytes
/// stored × 8. paper_bits = 0: publications quote SEPTQ by its dense code width ("2-bit") and leave the kept weights
/// out. Encoding is single-threaded (a pass over the mask).

#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/numeric.hpp"
#include "../core/status.hpp"
#include "../core/tensor_view.hpp"
#include "bit_accounting.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

/// Non-owning CSR of kept weights: what decoders and kernels take. Trivially copyable.
template <class Space = host_space>
struct sparse_view {
  const std::uint32_t* row_offsets = nullptr;
  const std::uint16_t* columns = nullptr;
  const fp16* values = nullptr;
  index_t rows = 0;
  index_t cols = 0;

  /// Index of the kept entry (r, c) in columns/values, or -1 when (r, c) is not kept (binary search in row r).
  SAGEPTQ_HOST_DEVICE index_t find(index_t r, index_t c) const noexcept {
    index_t lo = row_offsets[r], hi = row_offsets[r + 1];
    while (lo < hi) {
      const index_t mid = lo + (hi - lo) / 2;
      if (columns[mid] < c)
        lo = mid + 1;
      else
        hi = mid;
    }
    return lo < row_offsets[r + 1] && columns[lo] == c ? lo : -1;
  }
};

/// Owning host CSR of kept weights.
struct sparse_matrix {
  static constexpr index_t max_cols = index_t{1} << 16;  ///< uint16 column indices

  index_t rows = 0;
  index_t cols = 0;
  std::vector<std::uint32_t> row_offsets;  ///< rows + 1
  std::vector<std::uint16_t> columns;
  std::vector<fp16> values;

  [[nodiscard]] index_t kept() const noexcept { return static_cast<index_t>(values.size()); }

  [[nodiscard]] sparse_view<host_space> view() const noexcept {
    return {row_offsets.data(), columns.data(), values.data(), rows, cols};
  }

  [[nodiscard]] bit_breakdown bits() const noexcept {
    bit_breakdown b;
    b.weights = static_cast<std::uint64_t>(rows * cols);
    b.salient_position_bits = 32 * static_cast<std::uint64_t>(row_offsets.size()) +
                              16 * static_cast<std::uint64_t>(columns.size());
    b.salient_value_bits = 16 * static_cast<std::uint64_t>(values.size());
    return b;
  }
};

/// Store the entries of a rows x cols row-major `mask` (nonzero = kept) with their `values` (same layout) rounded
/// to fp16. @return the CSR, or invalid_shape (sizes), unsupported (more than 65536 columns or 2^32 − 1 kept
/// weights, a kept value beyond the fp16 range), non_finite_input (a kept value is NaN/Inf).
inline result<sparse_matrix> encode_sparse(index_t rows, index_t cols, std::span<const std::uint8_t> mask,
                                           std::span<const float> values) {
  if (rows <= 0 || cols <= 0 || static_cast<index_t>(mask.size()) != rows * cols ||
      static_cast<index_t>(values.size()) != rows * cols)
    return fail(status::invalid_shape, "sparse encoding of a " + std::to_string(rows) + " x " + std::to_string(cols) +
                                           " matrix got a mask of " + std::to_string(mask.size()) + " and " +
                                           std::to_string(values.size()) + " values");
  if (cols > sparse_matrix::max_cols)
    return fail(status::unsupported, "sparse column indices are 16-bit: " + std::to_string(cols) + " columns > 65536");
  sparse_matrix out;
  out.rows = rows;
  out.cols = cols;
  out.row_offsets.reserve(static_cast<std::size_t>(rows + 1));
  out.row_offsets.push_back(0);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t c = 0; c < cols; ++c) {
      const auto i = static_cast<std::size_t>(r * cols + c);
      if (!mask[i]) continue;
      if (!is_finite(values[i]))
        return fail(status::non_finite_input,
                    "kept value at (" + std::to_string(r) + ", " + std::to_string(c) + ") is not finite");
      const fp16 v(values[i]);
      if (!is_finite(v.to_float()))
        return fail(status::unsupported,
                    "kept value at (" + std::to_string(r) + ", " + std::to_string(c) + ") exceeds the fp16 range");
      if (out.values.size() == std::numeric_limits<std::uint32_t>::max())
        return fail(status::unsupported, "more than 2^32 - 1 kept weights do not fit uint32 row offsets");
      out.columns.push_back(static_cast<std::uint16_t>(c));
      out.values.push_back(v);
    }
    out.row_offsets.push_back(static_cast<std::uint32_t>(out.values.size()));
  }
  return out;
}

/// Write the kept values over `out` (rows x cols); other entries are left as they are.
template <class Space>
void overlay(const sparse_view<Space>& kept, matrix_view<float> out) {
  static_assert(std::is_same_v<Space, host_space>, "sageptq: overlay() runs on host memory");
  SAGEPTQ_ASSERT(out.rows() == kept.rows && out.cols() == kept.cols);
  for (index_t r = 0; r < kept.rows; ++r)
    for (index_t k = kept.row_offsets[r]; k < kept.row_offsets[r + 1]; ++k)
      out(r, kept.columns[k]) = kept.values[k].to_float();
}

}  // namespace format
SAGEPTQ_NAMESPACE_END
