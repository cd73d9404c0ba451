// Shazeer et al. (2017) noisy top-k gating (SPEC §2.2).
//   H(x)_i = (x W_g)_i + ε_i · σ_i(x),  σ_i(x) = softplus((x W_noise)_i) + noise_epsilon,
//   ε ~ N(0, 1) in training only;  G(x) = softmax(KeepTopK(H(x), k)).
//   aux "importance" = CV²(Σ_x G(x)), aux "load" = CV²(Load), Load_i = Σ_x Φ(...) (smooth
//   estimator) in training, the token count per expert without noise; aux "balance" (Switch,
//   P = softmax(H)) is reported too.
#pragma once

#include "xmoe/routing/router.h"

namespace xmoe {

class NoisyTopKRouterImpl : public RouterImpl {
 public:
  explicit NoisyTopKRouterImpl(RouterOptions options);
  RoutingResult route(const at::Tensor& h, const RouteInputs& inputs = {}) override;

  at::Tensor w_gate;   // [d_model, E], zero-initialised, SPEC name "router.w_gate"
  at::Tensor w_noise;  // [d_model, E], zero-initialised, SPEC name "router.w_noise"
};

}  // namespace xmoe
