// einmoe/einmoe.hpp - the whole public API.
#pragma once

#include "einmoe/version.hpp"
#include "einmoe/core/error.hpp"
#include "einmoe/core/dim.hpp"
#include "einmoe/core/tensor.hpp"
#include "einmoe/core/threads.hpp"
#include "einmoe/core/eigen_interop.hpp"
#include "einmoe/core/xtensor_interop.hpp"
#include "einmoe/ops/elementwise.hpp"
#include "einmoe/ops/reduce.hpp"
#include "einmoe/ops/softmax.hpp"
#include "einmoe/ops/cumsum.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/ops/manip.hpp"
#include "einmoe/ops/einsum.hpp"
#include "einmoe/io/npy.hpp"
