// Helpers shared by the pre-training and fine-tuning loops for their metrics.jsonl lines.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>

namespace xmoe::train_detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// JSON has no NaN or infinity: a non-finite value becomes null.
inline nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace xmoe::train_detail
