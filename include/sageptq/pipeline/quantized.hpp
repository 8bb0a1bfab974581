#pragma once
/// @file quantized.hpp
/// What every quantization method returns for one matrix: the packed matrix, its decoded values, and a report of
/// what was chosen and what it cost. Method functions (pipeline/gptq.hpp, septq.hpp, billm.hpp, sage.hpp, ...)
/// return `result<quantized<Packed>>`; `quantize_matrix` (pipeline/quantize_matrix.hpp) wraps them by name.

#include <string>
#include <vector>

#include "../config.hpp"
#include "../core/tensor_view.hpp"
#include "../format/bit_accounting.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace pipeline {

/// Wall time of each stage, in seconds (zero for stages a method does not run).
struct stage_times {
  double saliency = 0;
  double grouping = 0;
  double quantize = 0;  ///< quantizer + error compensation
  double search = 0;    ///< adaptive threshold / G search, including the quantizations it ran
  double pack = 0;

  [[nodiscard]] double total() const noexcept { return saliency + grouping + quantize + search + pack; }
};

/// What a method chose for one matrix and what it cost.
struct matrix_report {
  std::string method;
  index_t rows = 0, cols = 0;
  int groups = 1;                ///< G of the binarized part (1 for methods without groups)
  double salient_fraction = 0;   ///< fraction of weights stored at higher precision
  double hessian_error = 0;      ///< tr((W - Q) H (W - Q)^T) with the damped H (0 without calibration)
  double relative_error = 0;     ///< sqrt(hessian_error / tr(W H W^T)) = ||(W - Q)X|| / ||WX|| on calibration data
  format::bit_breakdown bits;    ///< every stored bit (bits.full_bpw(), bits.paper_bpw())
  stage_times times;
  std::string notes;             ///< numerical outcomes and choices worth reading (empty when none)
};

template <class Packed>
struct quantized {
  Packed packed;
  std::vector<float> dequantized;  ///< rows x cols, row-major, original column order: decode(packed) exactly
  matrix_report report;

  [[nodiscard]] matrix_view<const float> dequantized_view() const noexcept {
    return make_matrix_view(dequantized.data(), report.rows, report.cols);
  }
};

}  // namespace pipeline
SAGEPTQ_NAMESPACE_END
