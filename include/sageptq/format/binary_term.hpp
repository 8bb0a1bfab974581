#pragma once
/// @file binary_term.hpp
/// The float arithmetic of one binarized weight, shared by the quantizers (quant/binarize.hpp, quant/residual.hpp)
/// and the decoders of packed formats (format/sage.hpp), so "decode reproduces the quantizer bit for bit" holds by
/// construction. Each operation is a single IEEE float operation (no multiply-add), so contraction cannot change it.

#include "../config.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace format {

/// alpha * s with s = +1 if `positive` else -1 (a sign flip: exact).
SAGEPTQ_HOST_DEVICE constexpr float binary_term(bool positive, float alpha) noexcept {
  return positive ? alpha : -alpha;
}

/// alpha * s + mu: the sign flip, then one float addition.
SAGEPTQ_HOST_DEVICE constexpr float binary_term(bool positive, float alpha, float mu) noexcept {
  return (positive ? alpha : -alpha) + mu;
}

/// The scale of a factorized (row x group) binarization: one float product of the two stored fp16 values.
SAGEPTQ_HOST_DEVICE constexpr float factorized_scale(float row_scale, float group_scale) noexcept {
  return row_scale * group_scale;
}

}  // namespace format
SAGEPTQ_NAMESPACE_END
