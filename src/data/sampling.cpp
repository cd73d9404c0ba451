#include "xmoe/data/sampling.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace xmoe {

std::vector<double> language_sampling_probs(const std::vector<int64_t>& counts, double alpha) {
  const std::string where = "xmoe::language_sampling_probs: ";
  if (!(std::isfinite(alpha) && alpha > 0.0 && alpha <= 1.0)) {
    throw std::invalid_argument(where + "alpha = " + std::to_string(alpha) +
                                " must be in (0, 1]");
  }
  if (counts.empty()) throw std::invalid_argument(where + "counts is empty (no languages)");
  int64_t total = 0;
  for (size_t l = 0; l < counts.size(); ++l) {
    if (counts[l] < 0) {
      throw std::invalid_argument(where + "counts[" + std::to_string(l) + "] = " +
                                  std::to_string(counts[l]) + " must be >= 0");
    }
    total += counts[l];
  }
  if (total == 0) throw std::invalid_argument(where + "every count is zero");

  // p_l^a / Σ p_m^a with p_l = n_l / N; dividing by N first keeps pow() in [0, 1].
  std::vector<double> q(counts.size());
  double sum = 0.0;
  for (size_t l = 0; l < counts.size(); ++l) {
    const double p = static_cast<double>(counts[l]) / static_cast<double>(total);
    q[l] = counts[l] == 0 ? 0.0 : std::pow(p, alpha);
    sum += q[l];
  }
  for (double& v : q) v /= sum;
  return q;
}

int64_t draw_language(const std::vector<double>& q, double u) {
  int64_t last_positive = -1;
  double cdf = 0.0;
  for (size_t l = 0; l < q.size(); ++l) {
    if (!(q[l] > 0.0)) continue;
    last_positive = static_cast<int64_t>(l);
    cdf += q[l];
    if (u < cdf) return last_positive;
  }
  if (last_positive < 0) {
    throw std::invalid_argument("xmoe::draw_language: no language has a positive probability");
  }
  return last_positive;
}

}  // namespace xmoe
