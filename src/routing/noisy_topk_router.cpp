#include "xmoe/routing/noisy_topk_router.h"

#include "xmoe/routing/losses.h"
#include "xmoe/routing/topk.h"

#include <ATen/ATen.h>

namespace xmoe {

NoisyTopKRouterImpl::NoisyTopKRouterImpl(RouterOptions options) : RouterImpl(std::move(options)) {
  // Zero init (Shazeer 2017): no signal at the start, only noise.
  w_gate = register_parameter("w_gate", at::zeros({options_.d_model(), options_.n_expert()}));
  w_noise = register_parameter("w_noise", at::zeros({options_.d_model(), options_.n_expert()}));
}

RoutingResult NoisyTopKRouterImpl::route(const at::Tensor& h, const RouteInputs& inputs) {
  const int64_t n_tokens = h.size(0);
  const int64_t n_expert = options_.n_expert();
  const int64_t k = options_.top_k();
  check_finite(h, "router input");
  at::Tensor x = maybe_jitter(h);
  at::Tensor clean = at::matmul(x, w_gate);  // [T, E]
  const bool noisy = is_training();
  at::Tensor noise_std, logits = clean;
  if (noisy) {
    noise_std = at::softplus(at::matmul(x, w_noise)) + options_.noise_epsilon();  // [T, E]
    at::Tensor eps = inputs.noise;
    if (eps.defined()) {
      TORCH_CHECK(eps.dim() == 2 && eps.size(0) == n_tokens && eps.size(1) == n_expert,
                  "noisy_topk router (layer '", options_.name(), "'): noise must be [", n_tokens,
                  ", ", n_expert, "], got ", eps.sizes());
      eps = eps.to(clean.options());
    } else {
      eps = at::empty({n_tokens, n_expert}, at::TensorOptions().dtype(at::kDouble))
                .normal_(0.0, 1.0, generator_)
                .to(clean.options());
    }
    logits = clean + eps * noise_std;  // H(x)
  }
  const int64_t bad = check_finite(logits, "router scores");

  // G(x) = softmax over the k largest H(x) (the others are −∞).
  const int64_t n_top = std::min(k + 1, n_expert);
  TopK top = select_topk(logits, n_top);
  at::Tensor expert_ids = top.indices.narrow(1, 0, k).contiguous();
  at::Tensor gates = at::softmax(top.values.narrow(1, 0, k), 1);  // [T, k]
  at::Tensor dense_gates = at::zeros_like(logits).scatter(1, expert_ids, gates);  // [T, E]
  at::Tensor in_topk = at::zeros_like(logits, at::kBool).scatter_(1, expert_ids, true);

  RoutingResult result;
  result.scores = logits;
  result.gate_logits = logits;
  result.expert_ids = expert_ids;
  result.gates = gates;
  result.active = at::ones({n_tokens, k}, logits.options().dtype(at::kBool));
  result.router_input = h.detach();
  result.aux["importance"] = cv_squared(dense_gates.sum(0));
  at::Tensor load = noisy && k < n_expert
                        ? smooth_load(clean, noise_std, top.values, in_topk, k)
                        : in_topk.to(logits.scalar_type()).sum(0);
  result.aux["load"] = cv_squared(load);
  result.aux["balance"] = switch_balance_loss(at::softmax(logits, 1), expert_ids.select(1, 0));
  result.aux["z"] = router_z_loss(logits);

  at::NoGradGuard no_grad;
  result.stats.tokens_per_expert = at::bincount(expert_ids.reshape(-1).cpu(), {}, n_expert);
  result.stats.router_entropy = mean_entropy(dense_gates);
  result.stats.nonfinite_count = bad;
  return result;
}

}  // namespace xmoe
