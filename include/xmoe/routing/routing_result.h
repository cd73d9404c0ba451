// What a router decided for one batch: everything the layer, the metrics and the
// reports need, without reaching into router internals.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <string>

namespace xmoe {

/// Per-batch routing statistics (plain numbers, for logs and reports).
struct RoutingStats {
  at::Tensor tokens_per_expert;  // [E] int64: active slots routed to each expert, before dropping
  double dropped_fraction = 0.0;  // share of active slots dropped by capacity (set by the layer)
  double router_entropy = 0.0;    // mean over tokens of -Σ_i p_i log p_i of the gate distribution
  int64_t nonfinite_count = 0;    // non-finite router scores (only nonzero when not checked)
  std::string path = "reference"; // which expert-compute path ran (set by the layer)
};

struct RoutingResult {
  at::Tensor scores;         // [T, E] router scores s before gating (SPEC §8 "scores")
  at::Tensor gate_logits;    // [T, E] logits the gate uses (s/τ for X-MoE, s otherwise)
  at::Tensor expert_ids;     // [T, k] int64, in order of decreasing score
  at::Tensor gates;          // [T, k] combine weights (after renormalisation; the layer zeroes
                             //        dropped slots)
  at::Tensor active;         // [T, k] bool, false for slots removed by the random policy
  at::Tensor router_input;   // [T, r] representation the router scored (h, or z for X-MoE);
                             //        detached, for representation-collapse analysis
  std::map<std::string, at::Tensor> aux;  // unweighted scalar losses: "balance", and
                                          // "importance", "load", "z" where computed
  RoutingStats stats;
};

}  // namespace xmoe
