// X-MoE hypersphere routing (Chi et al. 2022, §3; SPEC §2.3).
//   z = W_p · h                       W_p [d_e, d_model]   (dim_reduction; else z = h)
//   s_i = (z · e_i) / (‖z‖ ‖e_i‖)      e [E, d_e], norms clamped at 1e-4     (l2_norm)
//   gate logits s/τ, τ = max(temperature, 1e-4) learnable; softmax or sigmoid gate
//   before each training forward every e_i is rescaled (no grad) to ‖e_i‖ = expert_norm
//   balance loss from P = softmax(s/τ₀), τ₀ = balance_temperature (paper eq. 9)
// Ablations: l2_norm off → s = z · e_i, no temperature, P = softmax(s).
// normalize_tokens off → s = z · e_i/‖e_i‖ (torchscale's variant, see docs/routing.md).
#pragma once

#include "xmoe/routing/router.h"

namespace xmoe {

class HypersphereRouterImpl : public RouterImpl {
 public:
  explicit HypersphereRouterImpl(RouterOptions options);
  RoutingResult route(const at::Tensor& h, const RouteInputs& inputs = {}) override;

  /// Rescales every expert embedding to ‖e_i‖ = expert_norm (in place, no gradient).
  void rescale_expert_embeddings();

  at::Tensor proj;          // [d_e, d_model] (undefined without dim_reduction), "router.proj"
  at::Tensor expert_embed;  // [E, d_e] ([E, d_model] without dim_reduction), "router.expert_embed"
  at::Tensor temperature;   // [1], τ itself, "router.temperature"

 protected:
  bool trainable_by_design(const std::string& name) const override;
};

}  // namespace xmoe
