#include "xmoe/routing/dot_router.h"

#include "xmoe/util/init.h"

#include <ATen/ATen.h>

#include <cmath>

namespace xmoe {

DotRouterImpl::DotRouterImpl(RouterOptions options) : RouterImpl(std::move(options)) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(options_.d_model()));
  weight = register_parameter(
      "weight", uniform_init({options_.n_expert(), options_.d_model()}, bound, generator_));
}

RoutingResult DotRouterImpl::route(const at::Tensor& h, const RouteInputs& /*inputs*/) {
  check_finite(h, "router input");
  at::Tensor x = maybe_jitter(h);
  at::Tensor scores = at::matmul(x, weight.t());  // [T, E]  s_i = h·e_i
  const int64_t bad = check_finite(scores, "router scores");
  RoutingResult result = finish_routing(scores, scores, at::Tensor(), bad);
  result.router_input = h.detach();
  return result;
}

}  // namespace xmoe
