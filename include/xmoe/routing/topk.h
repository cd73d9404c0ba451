// Deterministic top-k selection over experts and the gating that follows it (SPEC §1, §2.1, §2.4).
#pragma once

#include "xmoe/kernels/routing_gate.h"
#include "xmoe/routing/router_options.h"

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>

namespace xmoe {

struct TopK {
  at::Tensor values;   // [T, k] largest values, decreasing (differentiable: a gather)
  at::Tensor indices;  // [T, k] int64; equal values ordered by the lower expert index first
};

/// The k largest entries of each row of `values` [T, E]; ties break toward the lower index.
TopK select_topk(const at::Tensor& values, int64_t k);

struct GateSelection {
  at::Tensor expert_ids;  // [T, k] int64
  at::Tensor gates;       // [T, k] combine weights
  at::Tensor active;      // [T, k] bool (false: removed by the random second-expert policy)
  at::Tensor gate_probs;  // [T, E] the gate's distribution: softmax(logits) (both gates)
};

/// From gate logits l [T, E] (s, or s/τ for X-MoE):
///  softmax gate: g_i = softmax(l)_i of the k largest; renormalised to sum 1 when k > 1 and
///                `normalize_topk` (GShard);
///  sigmoid gate: g_i = sigmoid(l_i), never renormalised.
/// Second-expert policies apply in training only (`training`), with noise from `generator`.
GateSelection gate_topk(const at::Tensor& logits, int64_t k, GateKind gate, bool normalize_topk,
                        SecondExpertPolicy policy, bool training, at::Generator generator);

/// gate_topk, then the Switch balance loss over softmax(`balance_logits`) (undefined: the gate
/// distribution softmax(logits)), the z-loss and the statistics (slots per expert counting active
/// slots only, gate entropy): the ATen composition that kernels::routing_gate fuses, for any
/// device, dtype and second-expert policy. The active-slot mask goes to `active`.
kernels::RoutingGate routing_gate_aten(const at::Tensor& logits, const at::Tensor& balance_logits,
                                       int64_t k, GateKind gate, bool normalize_topk,
                                       SecondExpertPolicy policy, bool training,
                                       at::Generator generator, at::Tensor* active);

}  // namespace xmoe
