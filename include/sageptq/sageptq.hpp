#pragma once
/// @file sageptq.hpp
/// Umbrella header for host code: core vocabulary, packed formats and the CPU stages. Never includes a .cuh.

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

#include "format/bit_accounting.hpp"
#include "format/q1_0.hpp"
#include "format/rtn.hpp"

#include "quant/error.hpp"
#include "quant/q1_0.hpp"
#include "quant/rtn.hpp"
#include "quant/uniform_grid.hpp"

#include "synthetic/layer.hpp"
