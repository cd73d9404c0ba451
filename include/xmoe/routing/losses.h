// Auxiliary routing losses and the small functions they are built from (SPEC §2.2, §2.5, §3).
// All return unweighted scalars; the layer multiplies them by their coefficients.
#pragma once

#include <ATen/Tensor.h>

namespace xmoe {

/// Switch/GShard balance loss  L = E · Σ_j f_j · P_j  (SPEC §3).
///   probs [T, E]: routing probabilities (rows sum to 1), P_j = mean_x probs[x, j];
///   top1  [T] int64: each token's first choice, f_j = share of tokens with top1 = j.
/// A uniform router gives exactly 1. Gradient flows through `probs` only.
at::Tensor switch_balance_loss(const at::Tensor& probs, const at::Tensor& top1);

/// Squared coefficient of variation: population variance / (mean² + 1e-10) of a vector [E].
at::Tensor cv_squared(const at::Tensor& v);

/// Router z-loss (ST-MoE): mean_x (logsumexp_i logits[x, i])², logits [T, E].
at::Tensor router_z_loss(const at::Tensor& logits);

/// Standard normal CDF Φ(x) = ½·erfc(−x/√2), elementwise and differentiable.
at::Tensor normal_cdf(const at::Tensor& x);

/// Shazeer's smooth load estimator (SPEC §2.2): Load_i = Σ_x P(x, i),
///   P(x,i) = Φ((clean[x,i] − kth_excluding(noisy[x], k, i)) / noise_std[x,i]).
/// clean, noisy, noise_std [T, E]; topk_plus_one [T, k+1] the k+1 largest noisy values
/// (decreasing); in_topk [T, E] bool marks the experts chosen for each token.
/// Returns [E].
at::Tensor smooth_load(const at::Tensor& clean, const at::Tensor& noise_std,
                       const at::Tensor& topk_plus_one, const at::Tensor& in_topk, int64_t k);

/// Mean over rows of the entropy −Σ_i p_i log p_i of a row-stochastic matrix probs [T, E].
double mean_entropy(const at::Tensor& probs);

/// v / max(‖v‖₂, eps) along the last dimension (as torch.nn.functional.normalize).
at::Tensor l2_normalize(const at::Tensor& v, double eps);

}  // namespace xmoe
