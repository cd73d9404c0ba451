// Analysis metrics (SPEC §7) on synthetic data with known answers.
#include "xmoe/analysis/representation_collapse.h"
#include "xmoe/analysis/routing_consistency.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

namespace xmoe::analysis {
namespace {

at::Tensor ids(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }

TEST(RepresentationCollapse, TwoClassOneDimensionalClosedForm) {
  // Class 0: {0, 2} (μ = 1), class 1: {5, 7, 9} (μ = 7); μ_G = 23/5.
  at::Tensor x = at::tensor({0.0, 2.0, 5.0, 7.0, 9.0}, at::kDouble).unsqueeze(1);
  CollapseResult r = representation_collapse(x, ids({0, 0, 1, 1, 1}));
  const double sw = (1 + 1 + 4 + 0 + 4) / 5.0;
  const double mg = 23.0 / 5.0;
  const double sb = ((1 - mg) * (1 - mg) + (7 - mg) * (7 - mg)) / 2.0;
  ASSERT_TRUE(r.defined);
  EXPECT_EQ(r.n_classes, 2);
  EXPECT_EQ(r.rank_between, 1);
  EXPECT_NEAR(r.rc, 0.5 * sw / sb, 1e-12);
}

TEST(RepresentationCollapse, TightClustersAreSmallShuffledLabelsLarge) {
  at::Generator gen = make_generator(1);
  const int64_t per = 200, k = 4, dim = 8;
  at::Tensor centers = at::empty({k, dim}, at::kDouble).normal_(0, 5, gen);
  at::Tensor labels = at::arange(k, at::kLong).repeat_interleave(per);
  at::Tensor x = centers.index_select(0, labels) +
                 at::empty({k * per, dim}, at::kDouble).normal_(0, 0.1, gen);
  const double tight = representation_collapse(x, labels).rc;
  at::Tensor shuffled = labels.index_select(0, at::randperm(k * per, gen, at::kLong));
  const double mixed = representation_collapse(x, shuffled).rc;
  EXPECT_LT(tight, 1e-2);
  EXPECT_GT(mixed, 100 * tight);
  // Order of the tokens does not matter.
  at::Tensor perm = at::randperm(k * per, gen, at::kLong);
  EXPECT_NEAR(representation_collapse(x.index_select(0, perm), labels.index_select(0, perm)).rc,
              tight, 1e-9 * std::max(1.0, tight));
  // Class ids need not be contiguous: empty experts do not count in K.
  EXPECT_NEAR(representation_collapse(x, labels * 3 + 1).rc, tight, 1e-12);
}

TEST(RepresentationCollapse, SingleClassIsUndefinedNotAnError) {
  at::Tensor x = at::randn({10, 3}, at::kDouble);
  CollapseResult r = representation_collapse(x, at::zeros({10}, at::kLong));
  EXPECT_FALSE(r.defined);
  EXPECT_EQ(r.n_classes, 1);
  EXPECT_TRUE(std::isnan(r.rc));
}

TEST(RoutingFluctuation, ShareOfChangedAssignments) {
  EXPECT_DOUBLE_EQ(routing_fluctuation(ids({0, 1, 2, 3}), ids({0, 1, 2, 3})), 0.0);
  EXPECT_DOUBLE_EQ(routing_fluctuation(ids({0, 1, 2, 3}), ids({0, 2, 2, 1})), 0.5);
  EXPECT_DOUBLE_EQ(token_agreement(ids({0, 1, 2, 3}), ids({0, 2, 2, 1})), 0.5);
  EXPECT_THROW(routing_fluctuation(ids({0, 1}), ids({0})), c10::Error);
}

TEST(InterRunConsistency, IdenticalRunsGiveOneAndPearsonMatchesHand) {
  at::Tensor run = at::tensor({10.0, 20.0, 30.0, 40.0, 5.0, 5.0, 1.0, 9.0}, at::kDouble).reshape({2, 4});
  std::vector<double> same = interrun_consistency({run, run, run});
  ASSERT_EQ(same.size(), 2u);
  EXPECT_NEAR(same[0], 1.0, 1e-12);
  EXPECT_NEAR(same[1], 1.0, 1e-12);
  // ρ((1,2,3), (1,3,2)): deviations (−1,0,1), (−1,1,0) → 1 / (√2·√2) = 0.5
  EXPECT_NEAR(pearson(at::tensor({1.0, 2.0, 3.0}), at::tensor({1.0, 3.0, 2.0})), 0.5, 1e-12);
  at::Tensor a = at::tensor({1.0, 2.0, 3.0}).reshape({1, 3});
  at::Tensor b = at::tensor({1.0, 3.0, 2.0}).reshape({1, 3});
  at::Tensor c = at::tensor({3.0, 2.0, 1.0}).reshape({1, 3});
  // pairs: ρ(a,b) = 0.5, ρ(a,c) = −1, ρ(b,c) = −0.5 → mean −1/3
  EXPECT_NEAR(interrun_consistency({a, b, c})[0], -1.0 / 3.0, 1e-12);
  EXPECT_THROW(interrun_consistency({a}), c10::Error);
}

}  // namespace
}  // namespace xmoe::analysis
