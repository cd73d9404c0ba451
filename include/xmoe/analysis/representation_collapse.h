// Representation collapse (Zhu et al. 2021; X-MoE paper eq. 11; SPEC §7):
//   classes k = the expert each token is routed to (K non-empty classes, n tokens),
//   μ_k class means, μ_G the global mean,
//   Σ_W = (1/n) Σ_k Σ_{x∈k} (x−μ_k)(x−μ_k)ᵀ,   Σ_B = (1/K) Σ_k (μ_k−μ_G)(μ_k−μ_G)ᵀ,
//   RC  = (1/K) · Tr(Σ_W Σ_B⁺).
// Smaller RC = tokens collapse more tightly onto their experts' class means.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

namespace xmoe::analysis {

struct CollapseResult {
  double rc = 0.0;          // NaN when undefined (fewer than 2 non-empty classes)
  bool defined = false;     // false: K < 2, Σ_B = 0 and RC has no meaning
  int64_t n_classes = 0;    // K
  int64_t n_tokens = 0;     // n
  int64_t rank_between = 0; // rank of Σ_B used by the pseudo-inverse (≤ K − 1)
};

/// Relative tolerance of the pseudo-inverse: singular values of Σ_B below
/// kPinvRelativeTolerance · σ_max are treated as zero (computed in float64).
inline constexpr double kPinvRelativeTolerance = 1e-8;

/// x [n, r] representations (any floating dtype; computed in float64), classes [n] int64.
/// Invariant to the order of the tokens.
CollapseResult representation_collapse(const at::Tensor& x, const at::Tensor& classes);

}  // namespace xmoe::analysis
