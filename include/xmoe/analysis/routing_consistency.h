// How stable routing is over training and across runs (X-MoE paper §4.5, Figure 3; SPEC §7).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <vector>

namespace xmoe::analysis {

/// Routing-fluctuation ratio: share of the same fixed tokens whose top-1 expert differs between
/// two checkpoints. before, after [n] int64. Lower = more consistent routing.
/// RF falls with the learning rate: record lr and step gap with every value (FluctuationRecord).
double routing_fluctuation(const at::Tensor& before, const at::Tensor& after);

struct FluctuationRecord {
  int64_t step = 0;          // the later checkpoint's step
  int64_t step_gap = 0;      // steps since the earlier checkpoint
  double learning_rate = 0;  // learning rate at `step`
  double ratio = 0;          // routing_fluctuation(earlier, later)
};

/// Pearson correlation ρ(a, b) of two vectors [E]; 0 when either is constant.
double pearson(const at::Tensor& a, const at::Tensor& b);

/// Inter-run consistency: loads[r] is run r's sequence of windowed expert-load vectors
/// [n_windows, E] (tokens per expert in each window of m steps). For every window w the value
/// is the mean of ρ(loads[a][w], loads[b][w]) over all pairs a < b. Returns [n_windows].
/// Runs must have the same shape; needs at least 2 runs.
std::vector<double> interrun_consistency(const std::vector<at::Tensor>& loads);

/// Share of fixed evaluation tokens routed to the same top-1 expert by two runs.
double token_agreement(const at::Tensor& a, const at::Tensor& b);

}  // namespace xmoe::analysis
