#pragma once
/// @file version.hpp
/// Library version. Bumped by hand with CHANGELOG.md; the CMake project version must agree (a test checks).

#define SAGEPTQ_VERSION_MAJOR 0
#define SAGEPTQ_VERSION_MINOR 1
#define SAGEPTQ_VERSION_PATCH 0
/// Single integer for preprocessor comparisons: major * 10000 + minor * 100 + patch.
#define SAGEPTQ_VERSION (SAGEPTQ_VERSION_MAJOR * 10000 + SAGEPTQ_VERSION_MINOR * 100 + SAGEPTQ_VERSION_PATCH)
