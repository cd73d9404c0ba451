// GELU, the exact erf form, and its derivative.
//
//   gelu(x) = x · Φ(x),   Φ(x) = ½ (1 + erf(x / √2))
//   gelu'(x) = Φ(x) + x · φ(x),   φ(x) = e^(−x²/2) / √(2π)
//
// float32 on CPU: erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e−7, the approximation ATen's
// vectorised erf uses too), whose e^(−x²/2) is shared with φ, so h and gelu' together take one
// exp per element; the loops have a copy compiled for AVX2 + FMA, chosen at run time.
// With autograd, forward writes gelu'(x) beside gelu(x) and saves it instead of x (the same
// memory), so backward is one multiply. Why not at::gelu: LibTorch 1.13's backward evaluates erf
// and exp again, compute-bound on the development machine (~1.5-2.7 ns per element per core);
// the multiply is memory-bound (docs/performance.md).
// float64 uses std::erfc / std::exp (gradient checks); other dtypes and devices use ATen.
#pragma once

#include <ATen/Tensor.h>

namespace xmoe::kernels {

/// gelu(x), differentiable: x of any shape → the same shape. Without grad mode or without
/// requires_grad it computes gelu(x) alone.
at::Tensor gelu(const at::Tensor& x);

/// h = gelu(a) and g = gelu'(a) in one pass (a, h, g of one shape, distinct buffers), so that a
/// backward is one multiply, ∂a = ∂h ⊙ g; no autograd. The grouped expert FFN uses it.
void gelu_with_derivative_out(const at::Tensor& a, at::Tensor& h, at::Tensor& g);

}  // namespace xmoe::kernels
