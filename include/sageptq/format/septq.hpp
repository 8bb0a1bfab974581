#pragma once
/// @file septq.hpp
/// SEPTQ's packed matrix: dense uniform codes for every weight (format/rtn.hpp, one grid per row) and the kept
/// weights as an fp16 overlay (format/sparse.hpp). Decoding takes the dense value and replaces it by the kept value
/// where one is stored. The dense code under a kept weight is still stored and counted: the dense stream stays
/// regular, so a GEMV kernel runs the dense pass unchanged and adds (kept − dense) corrections, or overrides.
/// Full bits = dense bits + sparse bits, exactly the bytes stored; paper bits = the dense code bits (b per weight).

#include <cstdint>

#include "../config.hpp"
#include "../core/memory_space.hpp"
#include "../core/tensor_view.hpp"
#include "bit_accounting.hpp"
#include "rtn.hpp"
#include "sparse.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

template <class Space = host_space>
struct septq_view {
  rtn_view<Space> dense;
  sparse_view<Space> kept;

  /// Decoded weight (r, c).
  SAGEPTQ_HOST_DEVICE float operator()(index_t r, index_t c) const noexcept {
    const index_t k = kept.find(r, c);
    return k >= 0 ? kept.values[k].to_float() : dense(r, c);
  }
};

struct septq_matrix {
  rtn_matrix dense;
  sparse_matrix kept;  ///< same rows x cols as dense

  [[nodiscard]] septq_view<host_space> view() const noexcept { return {dense.view(), kept.view()}; }

  [[nodiscard]] bit_breakdown bits() const noexcept {
    bit_breakdown b = dense.bits();
    const std::uint64_t weights = b.weights;
    b += kept.bits();
    b.weights = weights;  // both parts describe the same weights
    return b;
  }
};

template <class Space>
void decode(const septq_view<Space>& packed, matrix_view<float> out) {
  SAGEPTQ_ASSERT(packed.dense.rows == packed.kept.rows && packed.dense.cols == packed.kept.cols);
  decode(packed.dense, out);
  overlay(packed.kept, out);
}

}  // namespace format
SAGEPTQ_NAMESPACE_END
