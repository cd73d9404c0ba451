// Dispatch plan: which (token, slot) pairs go to which expert, grouped into contiguous
// per-expert blocks by a stable counting sort (SPEC §4). One plan serves forward and backward.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <vector>

namespace xmoe {

struct DispatchPlan {
  int64_t n_tokens = 0;
  int64_t top_k = 0;
  int64_t n_expert = 0;
  int64_t capacity = -1;  // slots per expert; −1 = dropless
  /// Kept slots grouped by expert. Within an expert, slots keep their fill order:
  /// all first choices in token order, then all second choices, and so on.
  /// Rows: the kept slots of the computed tokens (all tokens unless make_dispatch_plan was given
  /// `computed`), N = offsets[E].
  at::Tensor slot_index;   // [N] int64, flat slot id t·k + j
  at::Tensor token_index;  // [N] int64, token t of each kept slot
  std::vector<int64_t> offsets;  // [E + 1]: expert e owns rows [offsets[e], offsets[e+1])
  at::Tensor row_of_slot;        // [T·k] int64: the row of each slot, −1 when it has none
  at::Tensor kept;               // [T, k] bool: active and within capacity
  at::Tensor tokens_per_expert;  // [E] int64: active slots per expert, before dropping
  int64_t n_active = 0;          // active slots (before dropping)
  int64_t n_dropped = 0;         // active slots dropped by capacity

  int64_t n_kept() const { return n_active - n_dropped; }
  int64_t n_rows() const { return offsets.empty() ? 0 : offsets.back(); }
  /// Kept slots of tokens whose output is not computed (no row).
  int64_t n_skipped() const { return n_kept() - n_rows(); }
  double dropped_fraction() const {
    return n_active == 0 ? 0.0 : static_cast<double>(n_dropped) / static_cast<double>(n_active);
  }
};

/// Capacity C = ceil(capacity_factor · k · T / E) (SPEC §2.4); capacity_factor 0 → −1 (dropless).
int64_t expert_capacity(double capacity_factor, int64_t n_tokens, int64_t top_k, int64_t n_expert);

/// Builds the plan from expert_ids [T, k] int64 (values in [0, E)) and active [T, k] bool
/// (undefined = all active). capacity < 0: dropless. Runs on the CPU in O(T·k + E).
/// computed [T] bool (undefined = all): the tokens whose output the caller uses. The slots of the
/// others still take capacity and stay kept — routing, capacity and statistics are those of all
/// tokens — but get no row, so no expert computes them (row_of_slot −1, output 0).
DispatchPlan make_dispatch_plan(const at::Tensor& expert_ids, const at::Tensor& active,
                                int64_t n_expert, int64_t capacity,
                                const at::Tensor& computed = at::Tensor());

}  // namespace xmoe
