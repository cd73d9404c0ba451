// Multilingual sampling (SPEC §6; Conneau & Lample 2019, "Cross-lingual Language Model
// Pretraining", §3.1): language l with n_l sentences is drawn with probability
//
//   q_l = p_l^a / Σ_m p_m^a,   p_l = n_l / Σ_m n_m,   a ∈ (0, 1]
//
// a = 1 samples in proportion to the data (q = p); smaller a flattens the distribution towards
// uniform and so up-samples the low-resource languages (a = 0.7 by default, as in XLM).
// A language with n_l = 0 gets q_l = 0.
#pragma once

#include <cstdint>
#include <vector>

namespace xmoe {

/// The default exponent a of SPEC §6.
constexpr double kDefaultSamplingAlpha = 0.7;

/// q [n_languages] for the per-language counts n [n_languages] (sentences or lines).
/// Computed as q_l = n_l^a / Σ_m n_m^a (the Σ n normaliser of p cancels), in double precision.
/// Throws std::invalid_argument when `counts` is empty, a count is negative, every count is
/// zero, or alpha is not in (0, 1]; the message names the offending field and index.
std::vector<double> language_sampling_probs(const std::vector<int64_t>& counts,
                                            double alpha = kDefaultSamplingAlpha);

/// Inverse-CDF draw: the first l with u < Σ_{m <= l} q_m, for u ∈ [0, 1); languages with
/// q_l = 0 are never returned (rounding at the top end falls to the last positive q_l).
/// Throws std::invalid_argument when q is empty or has no positive entry.
int64_t draw_language(const std::vector<double>& q, double u);

}  // namespace xmoe
