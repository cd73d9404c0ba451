// Expert-load statistics of one MoE layer (SPEC §7 "per-layer expert-load histograms, load CV,
// dropped-token fraction"): how evenly the routed slots spread over the E experts.
//
// Input: c ∈ R^E, c_i = routed slots (token-expert assignments) of expert i, summed over any
// number of tokens or steps. With S = Σ_i c_i and the mean count c̄ = S / E:
//   load_i        = c_i / S                                  (share of the slots; Σ load_i = 1)
//   cv            = σ / c̄,  σ = sqrt((1/E) Σ_i (c_i − c̄)²)  (population std; 0 = perfectly even,
//                                                            sqrt(E − 1) = all slots on one expert)
//   max_over_mean = max_i c_i / c̄                           (1 = even, E = one expert takes all)
//   entropy       = −Σ_i load_i · ln load_i  (nats, 0·ln 0 = 0; ln E = even, 0 = one expert)
// cv, max_over_mean and entropy do not depend on the scale of c (counts or shares give the same).
// This is the entropy of the layer's load distribution, not RoutingStats::router_entropy (the mean
// entropy of each token's gate distribution).
//
// All-zero counts (no slot routed, S = 0): load is all 0 and cv, max_over_mean and entropy are
// NaN (undefined; reports print them as missing), not an error.
#pragma once

#include <ATen/Tensor.h>

#include <vector>

namespace xmoe::analysis {

struct ExpertLoadStats {
  double cv = 0.0;                // σ / c̄ (population std over experts)
  double max_over_mean = 0.0;     // max_i c_i / c̄
  double entropy = 0.0;           // −Σ load_i ln load_i, nats
  double dropped_fraction = 0.0;  // share of slots dropped by capacity, passed through
  std::vector<double> load;       // [E] c_i / S
};

/// counts [E] (E ≥ 1; any integer or floating dtype, any device; computed in float64) must be
/// finite and non-negative. dropped_fraction (from RoutingStats) must lie in [0, 1]; it is copied
/// into the result so one struct carries every per-layer load number of metrics.jsonl.
/// Throws std::invalid_argument naming the function and the bad value otherwise.
ExpertLoadStats expert_load_stats(const at::Tensor& counts, double dropped_fraction = 0.0);

}  // namespace xmoe::analysis
