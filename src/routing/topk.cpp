#include "xmoe/routing/topk.h"

#include "xmoe/routing/losses.h"

#include <ATen/ATen.h>

#include <limits>

namespace xmoe {

TopK select_topk(const at::Tensor& values, int64_t k) {
  TORCH_CHECK(values.dim() == 2, "xmoe::select_topk: values must be [T, E], got ", values.sizes());
  TORCH_CHECK(k >= 1 && k <= values.size(1), "xmoe::select_topk: k = ", k, " must be in [1, ",
              values.size(1), "]");
  at::Tensor indices;
  if (k == 1) {
    indices = values.argmax(1, /*keepdim=*/true);  // first maximal index on ties
  } else {
    // A stable descending sort keeps equal values in index order: ties go to the lower index.
    indices = std::get<1>(values.detach().sort(/*stable=*/true, /*dim=*/1, /*descending=*/true))
                  .narrow(1, 0, k)
                  .contiguous();
  }
  return {values.gather(1, indices), indices};
}

namespace {

// Standard Gumbel samples −log(−log U), U ~ U(0,1), drawn on the CPU generator.
at::Tensor gumbel_like(const at::Tensor& like, at::Generator generator) {
  at::Tensor u = at::empty(like.sizes(), like.options().device(at::kCPU).dtype(at::kDouble));
  u.uniform_(1e-10, 1.0, generator);
  return (-at::log(-at::log(u))).to(like.options());
}

}  // namespace

GateSelection gate_topk(const at::Tensor& logits, int64_t k, GateKind gate, bool normalize_topk,
                        SecondExpertPolicy policy, bool training, at::Generator generator) {
  const int64_t n_tokens = logits.size(0);
  GateSelection out;
  out.gate_probs = at::softmax(logits, 1);

  const bool sampling = training && k > 1 && policy == SecondExpertPolicy::kSampling;
  if (sampling) {
    // First expert by the clean logits, the others by logits + Gumbel noise (first excluded).
    at::Tensor first = logits.detach().argmax(1, /*keepdim=*/true);
    at::Tensor noisy = logits.detach() + gumbel_like(logits, generator);
    noisy.scatter_(1, first, -std::numeric_limits<double>::infinity());
    at::Tensor rest = select_topk(noisy, k - 1).indices;
    out.expert_ids = at::cat({first, rest}, 1);
  } else {
    out.expert_ids = select_topk(logits.detach(), k).indices;
  }

  at::Tensor gates = gate == GateKind::kSoftmax ? out.gate_probs.gather(1, out.expert_ids)
                                                : at::sigmoid(logits.gather(1, out.expert_ids));
  out.active = at::ones({n_tokens, k}, logits.options().dtype(at::kBool));
  if (training && k > 1 && policy == SecondExpertPolicy::kRandom) {
    // Keep slot j >= 2 with probability min(1, 2·g_j) (GShard's random routing).
    at::Tensor u = at::empty({n_tokens, k - 1}, logits.options().device(at::kCPU).dtype(at::kDouble));
    u.uniform_(0.0, 1.0, generator);
    at::Tensor keep = (2.0 * gates.detach().narrow(1, 1, k - 1).to(at::kDouble).cpu() > u)
                          .to(logits.device());
    out.active.narrow(1, 1, k - 1).copy_(keep);
    gates = gates * out.active.to(gates.scalar_type());
  }
  if (gate == GateKind::kSoftmax && k > 1 && normalize_topk) {
    const double eps = logits.scalar_type() == at::kDouble ? 2.2e-16 : 1.2e-7;
    gates = gates / gates.sum(1, /*keepdim=*/true).clamp_min(eps);
  }
  out.gates = gates;
  return out;
}

kernels::RoutingGate routing_gate_aten(const at::Tensor& logits, const at::Tensor& balance_logits,
                                       int64_t k, GateKind gate, bool normalize_topk,
                                       SecondExpertPolicy policy, bool training,
                                       at::Generator generator, at::Tensor* active) {
  GateSelection sel = gate_topk(logits, k, gate, normalize_topk, policy, training, generator);
  kernels::RoutingGate out;
  out.expert_ids = sel.expert_ids;
  out.gates = sel.gates;
  const at::Tensor balance_probs =
      balance_logits.defined() ? at::softmax(balance_logits, 1) : sel.gate_probs;
  out.balance_loss = switch_balance_loss(balance_probs, sel.expert_ids.select(1, 0));
  out.z_loss = router_z_loss(logits);
  at::NoGradGuard no_grad;
  at::Tensor active_ids = sel.expert_ids.masked_select(sel.active);
  out.tokens_per_expert = at::bincount(active_ids.cpu(), {}, logits.size(1));
  out.entropy = mean_entropy(sel.gate_probs);
  if (active != nullptr) *active = sel.active;
  return out;
}

}  // namespace xmoe
