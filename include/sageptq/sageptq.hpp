#pragma once
/// @file sageptq.hpp
/// Umbrella header for host code: core vocabulary, packed formats, CPU kernels and every CPU stage (needs Eigen and
/// nanoflann: link sageptq::sageptq). Never includes a .cuh. Opt-in headers stay out: interop/ (adaptors for other
/// libraries) and io/ (safetensors and model files, needs nlohmann_json).

#include "config.hpp"
#include "version.hpp"

#include "core/executor.hpp"
#include "core/memory_space.hpp"
#include "core/numeric.hpp"
#include "core/random.hpp"
#include "core/status.hpp"
#include "core/tensor_traits.hpp"
#include "core/tensor_view.hpp"
#include "core/validate.hpp"

#include "format/billm.hpp"
#include "format/binary_term.hpp"
#include "format/bit_accounting.hpp"
#include "format/byte_io.hpp"
#include "format/q1_0.hpp"
#include "format/rtn.hpp"
#include "format/sage.hpp"
#include "format/septq.hpp"
#include "format/sparse.hpp"

#include "cpu/gemv.hpp"

#include "calib/hessian.hpp"
#include "compensate/gptq.hpp"
#include "compensate/septq.hpp"
#include "graph/builder.hpp"
#include "group/assign.hpp"
#include "group/estimators.hpp"
#include "group/search.hpp"
#include "quant/binarize.hpp"
#include "quant/error.hpp"
#include "quant/q1_0.hpp"
#include "quant/residual.hpp"
#include "quant/rtn.hpp"
#include "quant/uniform.hpp"
#include "quant/uniform_grid.hpp"
#include "saliency/metric.hpp"
#include "saliency/split.hpp"

#include "pipeline/compose.hpp"
#include "pipeline/quantize_matrix.hpp"

#include "synthetic/layer.hpp"
