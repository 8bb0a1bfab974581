#pragma once
/// @file memory_space.hpp
/// Memory-space tags. The space is part of a view's type, so a host view cannot reach a kernel launcher by mistake.

#include "../config.hpp"

SAGEPTQ_NAMESPACE_BEGIN

struct host_space {};
struct device_space {};

SAGEPTQ_NAMESPACE_END
