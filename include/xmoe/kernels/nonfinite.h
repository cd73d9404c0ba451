// Count of NaN and ±∞ elements of a tensor: the divergence check of the routers.
//
// Why not numel − isfinite(t).sum(): that builds a bool tensor and sums it as int64, two passes
// and ~0.5 ms for a [2048, 128] router input here, once per MoE layer and step; the count below
// is one vectorised pass over the float bits.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

namespace xmoe::kernels {

/// Number of non-finite elements of t (any shape). float32/float64 CPU tensors take one pass over
/// the exponent bits on every thread; other dtypes and devices count through ATen.
int64_t count_nonfinite(const at::Tensor& t);

}  // namespace xmoe::kernels
