// Helpers shared by the pre-training and fine-tuning loops for their metrics.jsonl lines.
#pragma once

#include <ATen/Tensor.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

namespace xmoe::train_detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// JSON has no NaN or infinity: a non-finite value becomes null.
inline nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

/// Tokens per expert of each MoE layer ([E] int64 tensors) as a list of integer lists: the
/// "expert_counts" of a train line.
inline nlohmann::json expert_counts_json(const std::vector<at::Tensor>& counts) {
  nlohmann::json lists = nlohmann::json::array();
  for (const at::Tensor& c : counts) {
    const at::Tensor cc = c.contiguous();
    lists.push_back(
        std::vector<int64_t>(cc.data_ptr<int64_t>(), cc.data_ptr<int64_t>() + cc.numel()));
  }
  return lists;
}

}  // namespace xmoe::train_detail
