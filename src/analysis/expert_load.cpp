#include "xmoe/analysis/expert_load.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace xmoe::analysis {

namespace {

[[noreturn]] void fail_load_stats(const std::string& message) {
  throw std::invalid_argument("xmoe::analysis::expert_load_stats: " + message);
}

// counts as a contiguous float64 CPU vector, after checking shape, dtype and values.
std::vector<double> checked_counts(const at::Tensor& counts) {
  if (!counts.defined()) fail_load_stats("counts is an undefined tensor");
  if (counts.dim() != 1) {
    std::ostringstream s;
    s << "counts must be 1-D [E], got shape " << counts.sizes();
    fail_load_stats(s.str());
  }
  if (counts.numel() == 0) fail_load_stats("counts must have at least one expert, got [0]");
  if (counts.scalar_type() == at::kBool || counts.is_complex()) {
    fail_load_stats(std::string("counts must be an integer or floating tensor, got ") +
         c10::toString(counts.scalar_type()));
  }
  at::Tensor c = counts.detach().to(at::kCPU, at::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  std::vector<double> out(p, p + c.numel());
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      fail_load_stats("counts[" + std::to_string(i) + "] is not finite (" + std::to_string(out[i]) + ")");
    }
    if (out[i] < 0.0) {
      fail_load_stats("counts[" + std::to_string(i) + "] is negative (" + std::to_string(out[i]) + ")");
    }
  }
  return out;
}

}  // namespace

ExpertLoadStats expert_load_stats(const at::Tensor& counts, double dropped_fraction) {
  const std::vector<double> c = checked_counts(counts);
  if (!(dropped_fraction >= 0.0 && dropped_fraction <= 1.0)) {  // also rejects NaN
    fail_load_stats("dropped_fraction must lie in [0, 1], got " + std::to_string(dropped_fraction));
  }
  const double n_experts = static_cast<double>(c.size());
  double total = 0.0;
  for (double v : c) total += v;

  ExpertLoadStats stats;
  stats.dropped_fraction = dropped_fraction;
  stats.load.assign(c.size(), 0.0);
  if (total == 0.0) {  // nothing routed: shares are 0, the ratios undefined
    const double nan = std::numeric_limits<double>::quiet_NaN();
    stats.cv = stats.max_over_mean = stats.entropy = nan;
    return stats;
  }
  const double mean = total / n_experts;  // c̄
  double squares = 0.0, largest = 0.0, entropy = 0.0;
  for (size_t i = 0; i < c.size(); ++i) {
    const double p = c[i] / total;
    stats.load[i] = p;
    squares += (c[i] - mean) * (c[i] - mean);
    largest = std::max(largest, c[i]);
    if (p > 0.0) entropy -= p * std::log(p);  // 0·ln 0 = 0
  }
  stats.cv = std::sqrt(squares / n_experts) / mean;
  stats.max_over_mean = largest / mean;
  stats.entropy = entropy;
  return stats;
}

}  // namespace xmoe::analysis
