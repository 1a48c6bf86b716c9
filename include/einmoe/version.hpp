// einmoe/version.hpp
#pragma once

#define EINMOE_VERSION_MAJOR 0
#define EINMOE_VERSION_MINOR 1
#define EINMOE_VERSION_PATCH 0

namespace einmoe {
inline constexpr const char* version = "0.1.0";
}
