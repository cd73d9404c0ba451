// A gradient-clipped AdamW step in one pass over each parameter.
//
//   c = min(1, max_norm / (‖g‖₂ + 1e-6))      ‖g‖₂ over every gradient (c = 1 for max_norm = ∞)
//   p ← p · (1 − lr·λ)
//   m ← β₁·m + (1 − β₁)·c·g,   v ← β₂·v + (1 − β₂)·(c·g)²
//   p ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//
// The same update and the same per-parameter state (AdamWParamState: step, exp_avg, exp_avg_sq)
// as torch::nn::utils::clip_grad_norm_ followed by torch::optim::AdamW::step, so checkpoints do
// not change; but one read of p, g, m, v and one write of p, m, v per element instead of about
// ten ATen passes (AdamW + clipping were ~5 % of a tiny training step, docs/performance.md).
// Gradients are read, not scaled in place.
#pragma once

#include <torch/optim/adamw.h>

#include <functional>
#include <vector>

namespace xmoe {

/// One step over every parameter group of `optimizer` (parameters without a gradient are
/// skipped, as AdamW does). Float32 contiguous CPU parameters take the fused pass; any other
/// parameter, and amsgrad groups, take torch's own ops. Returns the total gradient norm before
/// clipping, as clip_grad_norm_ does; when it is not finite nothing is updated.
/// `total_norm` (optional) computes ‖g‖₂ from the parameters that have a gradient, for a norm
/// over more than this process holds (expert-parallel training: the experts of every rank).
using GradientNorm = std::function<double(const std::vector<at::Tensor>& with_grad)>;
double clipped_adamw_step(torch::optim::AdamW& optimizer, double max_norm,
                          const GradientNorm& total_norm = nullptr);

/// Σ ‖g‖² over the gradients of `params` in float64 (every parameter must have one): fixed
/// chunks added in order, so the same value for any thread count.
double squared_gradient_norm(const std::vector<at::Tensor>& params);

}  // namespace xmoe
