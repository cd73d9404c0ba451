// One feed-forward sub-layer applied block-wise to expert-sorted rows, with oneDNN GEMMs and a
// hand-written backward (the compute core of the dropless fast path).
//
//   for each expert e, rows R_e = [offsets[e], offsets[e+1]):
//     a[R_e]  = xs[R_e] · w1[e]ᵀ + b1[e]         [n_e, d_ff]   (bias pre-filled, GEMM beta = 1)
//     h[R_e]  = act(a[R_e]), g[R_e] = act'(a[R_e])  (kernels::gelu_with_derivative_out / ATen)
//     ys[R_e] = h[R_e] · w2[e]ᵀ + b2[e]          [n_e, d_model]
//
// Saved for backward: xs, h and g (activation memory O(N · d_ff)); a lives one block at a time;
// nothing of size T × E × C.
// Backward: gb2 = Σ gys, gw2 = gysᵀ h, gh = gys w2, ga = gh ⊙ g, gb1 = Σ ga, gw1 = gaᵀ xs,
// gxs = ga w1 — six GEMMs per expert in all, forward included.
#pragma once

#include "xmoe/kernels/activation.h"

#include <ATen/Tensor.h>

#include <vector>

namespace xmoe::kernels {

/// xs [N, d_model] float32 contiguous CPU; w1 [E, d_ff, d_model], b1 [E, d_ff],
/// w2 [E, d_model, d_ff], b2 [E, d_model]; offsets [E + 1] with offsets[E] = N.
/// Returns ys [N, d_model]; differentiable in xs and all four weights.
at::Tensor grouped_ffn(const at::Tensor& xs, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2,
                       const std::vector<int64_t>& offsets, Activation activation);

}  // namespace xmoe::kernels
