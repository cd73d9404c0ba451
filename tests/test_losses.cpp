// Aux losses (SPEC §2.2, §2.5, §3) on hand-computed tiny cases.
#include "xmoe/routing/losses.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace xmoe {
namespace {

using xmoe_test::mat;
at::Tensor ids(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }

TEST(BalanceLoss, UniformRouterGivesExactlyOne) {
  for (int64_t e : {2, 4, 7, 32}) {
    at::Tensor probs = at::full({10, e}, 1.0 / static_cast<double>(e), at::kDouble);
    at::Tensor top1 = at::arange(10, at::kLong).remainder(e);
    EXPECT_NEAR(switch_balance_loss(probs, top1).item<double>(), 1.0, 1e-12) << "E=" << e;
  }
}

TEST(BalanceLoss, HandComputed) {
  // P = mean rows = (0.55, 0.45); f = (1, 0) → L = 2 · (1·0.55 + 0·0.45) = 1.1
  at::Tensor probs = mat({0.7, 0.3, 0.4, 0.6}, 2);
  EXPECT_NEAR(switch_balance_loss(probs, ids({0, 0})).item<double>(), 1.1, 1e-12);
  // f = (0.5, 0.5): L = 2 · (0.5·0.55 + 0.5·0.45) = 1
  EXPECT_NEAR(switch_balance_loss(probs, ids({0, 1})).item<double>(), 1.0, 1e-12);
  // Collapse on one expert with confident probabilities: L → E.
  at::Tensor collapsed = mat({1, 0, 0, 1, 0, 0}, 2);
  EXPECT_NEAR(switch_balance_loss(collapsed, ids({0, 0})).item<double>(), 3.0, 1e-12);
}

TEST(BalanceLoss, GradientFlowsThroughProbabilitiesOnly) {
  at::Tensor probs = mat({0.7, 0.3, 0.4, 0.6}, 2).requires_grad_();
  switch_balance_loss(probs, ids({0, 0})).backward();
  // dL/dprobs[x, j] = E · f_j / T = 2 · (1, 0) / 2
  EXPECT_TRUE(at::allclose(probs.grad(), mat({1, 0, 1, 0}, 2)));
}

TEST(CvSquared, PopulationVarianceOverMeanSquared) {
  // mean 2, population variance 2/3 → (2/3) / 4
  EXPECT_NEAR(cv_squared(at::tensor({1.0, 2.0, 3.0}, at::kDouble)).item<double>(), 1.0 / 6.0, 1e-9);
  EXPECT_NEAR(cv_squared(at::tensor({5.0, 5.0}, at::kDouble)).item<double>(), 0.0, 1e-15);
  // All zero: the 1e-10 keeps it finite.
  EXPECT_EQ(cv_squared(at::zeros({4}, at::kDouble)).item<double>(), 0.0);
  EXPECT_EQ(cv_squared(at::tensor({3.0}, at::kDouble)).item<double>(), 0.0);
}

TEST(ZLoss, MeanSquaredLogSumExp) {
  // rows: lse(0, 0) = ln 2; lse(ln 3, 0) = ln 4 = 2 ln 2 → mean(ln²2, 4 ln²2) = 2.5 ln²2
  at::Tensor logits = mat({0, 0, std::log(3.0), 0}, 2);
  const double ln2 = std::log(2.0);
  EXPECT_NEAR(router_z_loss(logits).item<double>(), 2.5 * ln2 * ln2, 1e-12);
}

TEST(NormalCdf, KnownValues) {
  at::Tensor x = at::tensor({0.0, 1.959963984540054, -1.0, 3.0}, at::kDouble);
  at::Tensor p = normal_cdf(x);
  EXPECT_NEAR(p[0].item<double>(), 0.5, 1e-15);
  EXPECT_NEAR(p[1].item<double>(), 0.975, 1e-12);
  EXPECT_NEAR(p[2].item<double>(), 0.15865525393145707, 1e-12);
  EXPECT_NEAR(p[3].item<double>(), 0.9986501019683699, 1e-12);
}

TEST(SmoothLoad, KthExcludingThresholdPerExpert) {
  // One token, E = 3, k = 1. clean (1, 0, −1); noisy H (1.2, 0.5, −0.3); σ = 1.
  // Expert 0 is in the top 1: threshold = 2nd largest H = 0.5 → Φ(0.5)
  // Experts 1, 2 are out: threshold = 1st largest H = 1.2 → Φ(−1.2), Φ(−2.2)
  at::Tensor clean = mat({1, 0, -1}, 1);
  at::Tensor std1 = at::ones({1, 3}, at::kDouble);
  at::Tensor top2 = mat({1.2, 0.5}, 1);
  at::Tensor in_topk = at::tensor({1, 0, 0}).to(at::kBool).reshape({1, 3});
  at::Tensor load = smooth_load(clean, std1, top2, in_topk, 1);
  EXPECT_NEAR(load[0].item<double>(), 0.6914624612740131, 1e-12);
  EXPECT_NEAR(load[1].item<double>(), 0.11506967022170822, 1e-12);
  EXPECT_NEAR(load[2].item<double>(), 0.013903447513498597, 1e-12);
}

TEST(SmoothLoad, SumsOverTokensAndDividesByNoiseScale) {
  // Two tokens, E = 2, k = 1, σ = 2: token 0 picks expert 0, token 1 expert 1.
  at::Tensor clean = mat({1, 0, 0, 1}, 2);
  at::Tensor sigma = at::full({2, 2}, 2.0, at::kDouble);
  at::Tensor top2 = mat({1.5, 0.1, 1.4, -0.2}, 2);
  at::Tensor in_topk = at::tensor({1, 0, 0, 1}).to(at::kBool).reshape({2, 2});
  at::Tensor load = smooth_load(clean, sigma, top2, in_topk, 1);
  auto phi = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  EXPECT_NEAR(load[0].item<double>(), phi((1 - 0.1) / 2) + phi((0 - 1.4) / 2), 1e-12);
  EXPECT_NEAR(load[1].item<double>(), phi((0 - 1.5) / 2) + phi((1 + 0.2) / 2), 1e-12);
}

TEST(Entropy, UniformIsLogEAndOneHotIsZero) {
  EXPECT_NEAR(mean_entropy(at::full({3, 8}, 0.125, at::kDouble)), std::log(8.0), 1e-12);
  EXPECT_NEAR(mean_entropy(mat({1, 0, 0, 0, 1, 0}, 2)), 0.0, 1e-15);
  EXPECT_NEAR(mean_entropy(mat({0.5, 0.5, 1, 0}, 2)), std::log(2.0) / 2, 1e-12);
}

TEST(L2Normalize, UnitRowsAndEpsFloor) {
  at::Tensor v = mat({3, 4, 0, 0, 1e-6, 0}, 3);
  at::Tensor n = l2_normalize(v, 1e-4);
  EXPECT_TRUE(at::allclose(n, mat({0.6, 0.8, 0, 0, 1e-2, 0}, 3)));
}

}  // namespace
}  // namespace xmoe
