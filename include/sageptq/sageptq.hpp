#pragma once
/// @file sageptq.hpp
/// Umbrella header for host code: everything in core.hpp plus every CPU stage (needs Eigen and nanoflann: link
/// sageptq::sageptq). Never includes a .cuh. Opt-in headers stay out: interop/ (adaptors for other
/// libraries) and io/ (safetensors and model files, needs nlohmann_json).

#include "core.hpp"

#include "calib/hessian.hpp"
#include "compensate/gptq.hpp"
#include "compensate/septq.hpp"
#include "graph/builder.hpp"
#include "group/assign.hpp"
#include "group/estimators.hpp"
#include "group/search.hpp"
#include "quant/binarize.hpp"
#include "quant/residual.hpp"
#include "quant/uniform.hpp"
#include "saliency/metric.hpp"
#include "saliency/split.hpp"

#include "pipeline/calibrate.hpp"
#include "pipeline/column_runs.hpp"
#include "pipeline/compose.hpp"
#include "pipeline/quantize_matrix.hpp"

