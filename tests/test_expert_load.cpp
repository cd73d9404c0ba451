// Expert-load statistics (analysis/expert_load.h) against hand-computed values.
#include "xmoe/analysis/expert_load.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

namespace xmoe::analysis {
namespace {

at::Tensor counts(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }

TEST(ExpertLoad, HandComputedFourExperts) {
  // c = [1, 2, 3, 6]: S = 12, c̄ = 3, load = [1/12, 1/6, 1/4, 1/2].
  // σ² = ((1−3)² + (2−3)² + (3−3)² + (6−3)²) / 4 = (4 + 1 + 0 + 9) / 4 = 3.5
  //   → cv = √3.5 / 3 ≈ 0.623610.
  // max / mean = 6 / 3 = 2.
  // entropy = (1/12)·ln 12 + (1/6)·ln 6 + (1/4)·ln 4 + (1/2)·ln 2
  //         ≈ 0.207076 + 0.298627 + 0.346574 + 0.346574 ≈ 1.198849 nats.
  ExpertLoadStats s = expert_load_stats(counts({1, 2, 3, 6}));
  ASSERT_EQ(s.load.size(), 4u);
  EXPECT_DOUBLE_EQ(s.load[0], 1.0 / 12);
  EXPECT_DOUBLE_EQ(s.load[1], 1.0 / 6);
  EXPECT_DOUBLE_EQ(s.load[2], 1.0 / 4);
  EXPECT_DOUBLE_EQ(s.load[3], 1.0 / 2);
  EXPECT_NEAR(s.cv, std::sqrt(3.5) / 3.0, 1e-14);
  EXPECT_NEAR(s.cv, 0.623610, 1e-6);
  EXPECT_DOUBLE_EQ(s.max_over_mean, 2.0);
  const double entropy =
      std::log(12.0) / 12 + std::log(6.0) / 6 + std::log(4.0) / 4 + std::log(2.0) / 2;
  EXPECT_NEAR(s.entropy, entropy, 1e-14);
  EXPECT_NEAR(s.entropy, 1.198849, 1e-6);
  EXPECT_EQ(s.dropped_fraction, 0.0);
}

TEST(ExpertLoad, UniformIsZeroCvAndMaximalEntropy) {
  ExpertLoadStats s = expert_load_stats(counts({5, 5, 5, 5, 5, 5, 5, 5}));
  EXPECT_DOUBLE_EQ(s.cv, 0.0);
  EXPECT_DOUBLE_EQ(s.max_over_mean, 1.0);
  EXPECT_NEAR(s.entropy, std::log(8.0), 1e-14);
  for (double p : s.load) EXPECT_DOUBLE_EQ(p, 0.125);
}

TEST(ExpertLoad, OneHotIsZeroEntropyAndExtremeCv) {
  // c = [0, 0, 7, 0]: c̄ = 7/4, σ² = (3·(7/4)² + (21/4)²) / 4 = (7/4)²·3 → cv = √3 = √(E − 1).
  ExpertLoadStats s = expert_load_stats(counts({0, 0, 7, 0}));
  EXPECT_EQ(s.entropy, 0.0);  // 0·ln 0 terms contribute exactly 0, ln 1 = 0
  EXPECT_NEAR(s.cv, std::sqrt(3.0), 1e-14);
  EXPECT_DOUBLE_EQ(s.max_over_mean, 4.0);
  EXPECT_EQ(s.load, (std::vector<double>{0.0, 0.0, 1.0, 0.0}));
}

TEST(ExpertLoad, ScaleAndDtypeDoNotMatter) {
  ExpertLoadStats a = expert_load_stats(counts({1, 2, 3, 6}));
  ExpertLoadStats b = expert_load_stats(at::tensor({10.f, 20.f, 30.f, 60.f}));
  ExpertLoadStats c = expert_load_stats(at::tensor({1.0 / 12, 1.0 / 6, 0.25, 0.5}, at::kDouble));
  for (const ExpertLoadStats* o : {&b, &c}) {
    EXPECT_NEAR(o->cv, a.cv, 1e-12);
    EXPECT_NEAR(o->max_over_mean, a.max_over_mean, 1e-12);
    EXPECT_NEAR(o->entropy, a.entropy, 1e-12);
    for (size_t i = 0; i < a.load.size(); ++i) EXPECT_NEAR(o->load[i], a.load[i], 1e-12);
  }
  // A single expert: everything routed to it is perfectly "even".
  ExpertLoadStats one = expert_load_stats(counts({3}));
  EXPECT_EQ(one.cv, 0.0);
  EXPECT_EQ(one.max_over_mean, 1.0);
  EXPECT_EQ(one.entropy, 0.0);
}

TEST(ExpertLoad, DroppedFractionIsPassedThrough) {
  ExpertLoadStats s = expert_load_stats(counts({1, 2, 3, 6}), /*dropped_fraction=*/0.25);
  EXPECT_EQ(s.dropped_fraction, 0.25);
  EXPECT_EQ(expert_load_stats(counts({1, 1}), 1.0).dropped_fraction, 1.0);
  EXPECT_NEAR(s.cv, std::sqrt(3.5) / 3.0, 1e-14);  // the other fields are unaffected
}

TEST(ExpertLoad, AllZeroCountsGiveZeroLoadAndNaNRatios) {
  ExpertLoadStats s = expert_load_stats(counts({0, 0, 0}), 0.5);
  EXPECT_EQ(s.load, (std::vector<double>{0.0, 0.0, 0.0}));
  EXPECT_TRUE(std::isnan(s.cv));
  EXPECT_TRUE(std::isnan(s.max_over_mean));
  EXPECT_TRUE(std::isnan(s.entropy));
  EXPECT_EQ(s.dropped_fraction, 0.5);
}

TEST(ExpertLoad, RejectsBadInput) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_THROW(expert_load_stats(at::Tensor()), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(at::ones({2, 2})), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(at::ones({}, at::kLong)), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(at::empty({0}, at::kLong)), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(at::ones({3}, at::kBool)), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(counts({1, -1, 2})), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(at::tensor({1.0, nan}, at::kDouble)), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(at::tensor({1.0, inf}, at::kDouble)), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(counts({1, 2}), -0.1), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(counts({1, 2}), 1.5), std::invalid_argument);
  EXPECT_THROW(expert_load_stats(counts({1, 2}), nan), std::invalid_argument);
  try {
    expert_load_stats(counts({4, -2}));
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("expert_load_stats"), std::string::npos) << what;
    EXPECT_NE(what.find("counts[1] is negative"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace xmoe::analysis
