// Fully connected layer on oneDNN's sgemm.
//
//   y = x Wᵀ + b          x [..., in], W [out, in], b [out] (optional) → y [..., out]
//   ∂x = ∂y W,   ∂W = ∂yᵀ x,   ∂b = Σ_rows ∂y
//
// Why not at::linear: LibTorch reaches OpenBLAS, which clears C in a separate pass before every
// beta = 0 product (sgemm_beta: 6 % of a tiny training step in `perf`); oneDNN does not, and it is
// as fast or faster on these shapes (docs/performance.md). The bias is written into y first and
// the product accumulated onto it (beta = 1), so the bias costs no extra pass either.
#pragma once

#include <ATen/Tensor.h>

namespace xmoe::kernels {

/// float32 / float64 CPU tensors use this kernel (float64 through a plain loop, for gradient
/// checks); any other dtype or device falls back to at::linear. `bias` may be undefined.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

}  // namespace xmoe::kernels
