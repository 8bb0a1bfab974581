#pragma once
/// @file core.hpp
/// Umbrella header for what needs only the standard library (target sageptq::core): core vocabulary, packed formats,
/// the CPU GEMV kernels, the quantizers that need no linear algebra (rtn, q1_0) with their error measure, and TOGA's
/// decision space, budgeted allocation and search (toga/: an engine supplies the losses and the scores).
/// sageptq.hpp includes this and adds the stages that need Eigen and nanoflann.

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

#include "quant/error.hpp"
#include "quant/q1_0.hpp"
#include "quant/rtn.hpp"
#include "quant/uniform_grid.hpp"
#include "synthetic/layer.hpp"
#include "toga/allocate.hpp"
#include "toga/decision.hpp"
#include "toga/search.hpp"
