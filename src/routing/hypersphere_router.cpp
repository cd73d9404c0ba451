#include "xmoe/routing/hypersphere_router.h"

#include "xmoe/routing/losses.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>

#include <cmath>

namespace xmoe {

namespace {
constexpr double kNormEps = 1e-4;         // SPEC §2.3.2
constexpr double kMinTemperature = 1e-4;  // SPEC §2.3.3
}  // namespace

HypersphereRouterImpl::HypersphereRouterImpl(RouterOptions options)
    : RouterImpl(std::move(options)) {
  const int64_t d_model = options_.d_model();
  const int64_t d_route = options_.dim_reduction() ? options_.resolved_d_e() : d_model;
  if (options_.dim_reduction()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(d_model));
    proj = register_parameter("proj", uniform_init({d_route, d_model}, bound, generator_));
  }
  expert_embed = register_parameter(
      "expert_embed", orthogonal_init(options_.n_expert(), d_route, /*gain=*/1.0, generator_));
  temperature = register_parameter(
      "temperature", at::full({1}, options_.resolved_temperature_init(), at::kFloat),
      /*requires_grad=*/options_.learn_temperature() && options_.l2_norm());
  rescale_expert_embeddings();
}

bool HypersphereRouterImpl::trainable_by_design(const std::string& name) const {
  if (name == "temperature") return options_.learn_temperature() && options_.l2_norm();
  return true;
}

void HypersphereRouterImpl::rescale_expert_embeddings() {
  at::NoGradGuard no_grad;
  at::Tensor norms = expert_embed.norm(2, {1}, /*keepdim=*/true).clamp_min(kNormEps);
  expert_embed.mul_(options_.expert_norm() / norms);
}

RoutingResult HypersphereRouterImpl::route(const at::Tensor& h, const RouteInputs& /*inputs*/) {
  check_finite(h, "router input");
  // Frozen embeddings are never touched, so frozen fine-tuning leaves them bit-identical.
  if (is_training() && !frozen_) rescale_expert_embeddings();
  at::Tensor x = maybe_jitter(h);
  at::Tensor z = options_.dim_reduction() ? at::matmul(x, proj.t()) : x;  // [T, d_e]

  at::Tensor scores, logits, balance_logits;  // balance_logits undefined: the gate logits
  if (options_.l2_norm()) {
    at::Tensor zn = options_.normalize_tokens() ? l2_normalize(z, kNormEps) : z;
    scores = at::matmul(zn, l2_normalize(expert_embed, kNormEps).t());  // [T, E] cosine
    logits = scores / temperature.clamp_min(kMinTemperature);
    balance_logits = scores / options_.balance_temperature();
  } else {
    scores = at::matmul(z, expert_embed.t());  // plain dot product, no temperature
    logits = scores;
  }
  const int64_t bad = check_finite(scores, "router scores");
  RoutingResult result = finish_routing(scores, logits, balance_logits, bad);
  result.router_input = z.detach();
  return result;
}

}  // namespace xmoe
