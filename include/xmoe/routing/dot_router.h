// Dot-product router: Switch (top-1) and GShard (top-k) baseline, "SMoE" in the paper (SPEC §2.1).
//   s_i(x) = h(x) · e_i                  (weight [E, d_model], a bias-free Linear)
//   softmax gate: g = softmax(s) of the chosen experts (renormalised for k > 1)
//   sigmoid gate: g_i = sigmoid(s_i)
//   balance loss from P = softmax(s).
#pragma once

#include "xmoe/routing/router.h"

namespace xmoe {

class DotRouterImpl : public RouterImpl {
 public:
  explicit DotRouterImpl(RouterOptions options);
  RoutingResult route(const at::Tensor& h, const RouteInputs& inputs = {}) override;

  at::Tensor weight;  // [E, d_model], SPEC name "router.weight"
};

}  // namespace xmoe
