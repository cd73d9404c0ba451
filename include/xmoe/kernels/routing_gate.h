// The gate of a top-k router and its two auxiliary losses in one pass over the logits, with a
// hand-written backward (SPEC §1, §2.1, §2.4, §2.5, §3).
//
// From gate logits l [T, E] and balance logits b [T, E] (the same tensor for the dot router;
// s / τ and s / τ_b for X-MoE):
//   p = softmax(l),  ids [T, k] = the k largest l per row, in decreasing order, ties to the
//   lower index;
//   softmax gate: g_j = p[ids_j], renormalised to Σ_j g_j = 1 when k > 1 and `normalize_topk`
//                 (the sum clamped below at ε = 1.2e-7 for float, 2.2e-16 for double);
//   sigmoid gate: g_j = σ(l[ids_j]);
//   balance = E · Σ_e f_e · P_e,  f_e = share of tokens whose first choice is e,
//             P_e = mean_t softmax(b)_te;
//   z = mean_t (log Σ_e e^{l_te})².
// Also returned, without gradient: the routed slots per expert (all k slots) and the mean gate
// entropy −Σ_e p_e log p_e, the statistics the router reports.
//
// Why not the ATen composition (routing_gate_aten in xmoe/routing/topk.h, still the reference
// and the path for other devices): it is ~25 small operators over [T, E] forward and as many
// backward; forward + backward at T = 2048, E = 8 took 1.24 ms against 0.40 ms for this kernel
// (bench/bench_routing.cpp, 2 threads, docs/performance.md).
// Sums over tokens run over fixed blocks of rows in float64 and are added in block order, so the
// results do not depend on the thread count.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

namespace xmoe::kernels {

struct RoutingGate {
  at::Tensor gates;              // [T, k] combine weights (differentiable)
  at::Tensor expert_ids;         // [T, k] int64
  at::Tensor balance_loss;       // scalar (differentiable in l, or in b when given)
  at::Tensor z_loss;             // scalar (differentiable in l)
  at::Tensor tokens_per_expert;  // [E] int64, slots of every rank
  double entropy = 0;            // mean over tokens of −Σ_e p_e log p_e
};

/// Whether routing_gate handles these logits: contiguous-able float or double on the CPU, with
/// T ≥ 1. Finite values are the caller's to check (NaN has no place in a top-k).
bool routing_gate_supported(const at::Tensor& logits);

/// `balance_logits` undefined = the gate logits themselves. Throws c10::Error for mismatched
/// shapes or k outside [1, E].
RoutingGate routing_gate(const at::Tensor& logits, const at::Tensor& balance_logits, int64_t k,
                         bool sigmoid_gate, bool normalize_topk);

}  // namespace xmoe::kernels
