#pragma once
/// @file cuda.cuh
/// Umbrella header for device code (.cu files compiled by nvcc): the host+device vocabulary of core/ and the packed
/// formats of format/, plus cuda/. Needs no Eigen or nanoflann; link sageptq::cuda.

#include "config.hpp"
#include "version.hpp"

#include "core/memory_space.hpp"
#include "core/numeric.hpp"
#include "core/status.hpp"
#include "core/tensor_traits.hpp"
#include "core/tensor_view.hpp"

#include "format/bit_accounting.hpp"
#include "format/q1_0.hpp"
#include "format/rtn.hpp"
#include "format/sage.hpp"

#include "cuda/config.cuh"
#include "cuda/gemv/gemv.cuh"
