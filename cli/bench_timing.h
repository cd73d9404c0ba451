// Wall-clock helpers shared by the `bench` subcommands.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace xmoe::cli {

/// Milliseconds on the monotonic clock (differences only).
inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Median of v (mean of the two middle values for an even count); v must not be empty.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace xmoe::cli
