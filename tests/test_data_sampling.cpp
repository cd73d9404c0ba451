// Multilingual sampling q_l = p_l^a / Σ_m p_m^a (SPEC §6) on hand-computed cases.
#include "xmoe/data/sampling.h"

#include "test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

namespace xmoe {
namespace {

using xmoe_test::Contains;

TEST(DataSampling, HandComputedAlpha07) {
  // q ∝ n^0.7: 100^0.7 = 25.118864, 10^0.7 = 5.011872, 1^0.7 = 1; Σ = 31.130737.
  const std::vector<double> q = language_sampling_probs({100, 10, 1}, 0.7);
  ASSERT_EQ(q.size(), 3u);
  EXPECT_NEAR(q[0], 25.118864315095795 / 31.130736651368515, 1e-12);
  EXPECT_NEAR(q[1], 5.011872336272722 / 31.130736651368515, 1e-12);
  EXPECT_NEAR(q[2], 1.0 / 31.130736651368515, 1e-12);
  EXPECT_NEAR(q[0], 0.80688, 1e-5);
  EXPECT_NEAR(q[1], 0.16099, 1e-5);
  EXPECT_NEAR(q[2], 0.03212, 1e-5);
  // The low-resource language is up-sampled relative to p = 1/111 = 0.009.
  EXPECT_GT(q[2], 1.0 / 111.0);
}

TEST(DataSampling, HandComputedSquareRoot) {
  // a = 0.5: √90 : √10 = 3 : 1 → (0.75, 0.25); an empty language gets 0.
  const std::vector<double> q = language_sampling_probs({90, 10, 0}, 0.5);
  EXPECT_NEAR(q[0], 0.75, 1e-12);
  EXPECT_NEAR(q[1], 0.25, 1e-12);
  EXPECT_EQ(q[2], 0.0);
}

TEST(DataSampling, AlphaOneGivesTheDataProportions) {
  const std::vector<int64_t> counts = {100, 10, 1, 0, 889};
  const std::vector<double> q = language_sampling_probs(counts, 1.0);
  for (size_t l = 0; l < counts.size(); ++l) {
    EXPECT_NEAR(q[l], static_cast<double>(counts[l]) / 1000.0, 1e-15) << "l=" << l;
  }
}

TEST(DataSampling, SumsToOneAndFlattensAsAlphaFalls) {
  const std::vector<int64_t> counts = {5000000, 120000, 3000, 7};
  double previous_smallest = 0.0;
  for (double a : {1.0, 0.7, 0.5, 0.3, 0.1}) {
    const std::vector<double> q = language_sampling_probs(counts, a);
    double sum = 0;
    for (double v : q) sum += v;
    EXPECT_NEAR(sum, 1.0, 1e-12) << "a=" << a;
    EXPECT_GT(q[3], previous_smallest) << "a=" << a;  // the rarest language gains as a falls
    previous_smallest = q[3];
  }
  // A single language always has q = 1.
  EXPECT_EQ(language_sampling_probs({42}, 0.7), std::vector<double>{1.0});
}

TEST(DataSampling, InvalidInputsNameTheField) {
  auto message = [](const std::vector<int64_t>& counts, double a) {
    try {
      language_sampling_probs(counts, a);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_TRUE(Contains(message({1, 2}, 0.0), "alpha"));
  EXPECT_TRUE(Contains(message({1, 2}, -0.5), "alpha"));
  EXPECT_TRUE(Contains(message({1, 2}, 1.5), "alpha"));
  EXPECT_TRUE(Contains(message({1, 2}, std::nan("")), "alpha"));
  EXPECT_TRUE(Contains(message({}, 0.7), "empty"));
  EXPECT_TRUE(Contains(message({3, -1}, 0.7), "counts[1]"));
  EXPECT_TRUE(Contains(message({0, 0}, 0.7), "zero"));
}

TEST(DataSampling, DrawLanguageInvertsTheCdf) {
  const std::vector<double> q = {0.5, 0.0, 0.3, 0.2};
  EXPECT_EQ(draw_language(q, 0.0), 0);
  EXPECT_EQ(draw_language(q, 0.4999), 0);
  EXPECT_EQ(draw_language(q, 0.5), 2);  // the empty language is skipped
  EXPECT_EQ(draw_language(q, 0.7999), 2);
  EXPECT_EQ(draw_language(q, 0.8), 3);
  EXPECT_EQ(draw_language(q, 0.9999999), 3);
  EXPECT_EQ(draw_language({0.6, 0.4, 0.0}, 1.0), 1);  // rounding at the top: last positive q
  EXPECT_THROW(draw_language({0.0, 0.0}, 0.5), std::invalid_argument);
  EXPECT_THROW(draw_language({}, 0.5), std::invalid_argument);
}

}  // namespace
}  // namespace xmoe
