// 2-D token maps (analysis/token_map.h): PCA projection against known geometry.
#include "xmoe/analysis/token_map.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <stdexcept>

namespace xmoe::analysis {
namespace {

at::Tensor matrix(std::vector<double> values, int64_t rows, int64_t cols) {
  return at::tensor(values, at::kDouble).reshape({rows, cols});
}

void expect_near(const at::Tensor& actual, const at::Tensor& expected, double tol) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  const double diff = (actual - expected).abs().max().item<double>();
  EXPECT_LE(diff, tol) << "actual:\n" << actual << "\nexpected:\n" << expected;
}

TEST(PcaTokenMap, KnownTwoDimensionalCase) {
  // Principal axes u1 = (0.8, 0.6) (spread ±2) and u2 = (−0.6, 0.8) (spread ±1), shifted by
  // (10, −5). Points ±2·u1, ±1·u2: mean = shift, variances 2 and 0.5 → v1 = u1, v2 = u2, both
  // with their largest-|·| entry (0.8) already positive, so the map is exactly the coefficients.
  at::Tensor x = matrix({1.6, 1.2, -1.6, -1.2, -0.6, 0.8, 0.6, -0.8}, 4, 2) +
                 at::tensor({10.0, -5.0}, at::kDouble);
  at::Tensor map = pca_2d(x);
  EXPECT_EQ(map.scalar_type(), at::kDouble);
  expect_near(map, matrix({2, 0, -2, 0, 0, 1, 0, -1}, 4, 2), 1e-12);
}

TEST(PcaTokenMap, PointsOnALineRecoverTheDirection) {
  // x_n = p + t_n·u in 3-D with u = (2, −6, 3)/7 (unit). The largest-|·| loading of u is −6/7,
  // so the component is −u and column 0 is −(t_n − t̄); column 1 carries no variance: exactly 0.
  at::Tensor t = at::tensor({-3.0, -1.0, 0.5, 2.0, 4.0, 7.5}, at::kDouble);
  at::Tensor u = at::tensor({2.0, -6.0, 3.0}, at::kDouble) / 7.0;
  at::Tensor p = at::tensor({1.0, 2.0, -4.0}, at::kDouble);
  at::Tensor x = p + t.unsqueeze(1) * u;  // [6, 3]
  at::Tensor map = pca_2d(x);
  expect_near(map.select(1, 0), -(t - t.mean()), 1e-12);
  EXPECT_EQ(map.select(1, 1).abs().max().item<double>(), 0.0);
}

TEST(PcaTokenMap, TranslationInvariantSignStableAndDeterministic) {
  at::Generator gen = make_generator(7);
  at::Tensor x = at::empty({50, 6}, at::kDouble).normal_(0, 1, gen) *
                 at::tensor({5.0, 3.0, 1.0, 0.5, 0.2, 0.1}, at::kDouble);
  at::Tensor map = pca_2d(x);
  EXPECT_TRUE(at::equal(map, pca_2d(x)));  // bit-identical on a second call
  expect_near(pca_2d(x + at::full({1, 6}, 123.0, at::kDouble)), map, 1e-9);
  // −x has the same principal axes; the sign rule keeps them, so the map mirrors exactly.
  expect_near(pca_2d(-x), -map, 1e-9);
  // float32 input gives the float64 map of the same data.
  expect_near(pca_2d(x.to(at::kFloat)), pca_2d(x.to(at::kFloat).to(at::kDouble)), 1e-12);
}

TEST(PcaTokenMap, ColumnsAreTheTopTwoUncorrelatedComponents) {
  at::Generator gen = make_generator(3);
  at::Tensor x = at::empty({200, 5}, at::kDouble).normal_(0, 1, gen);
  x = at::matmul(x, at::empty({5, 5}, at::kDouble).normal_(0, 1, gen));  // correlated
  at::Tensor map = pca_2d(x);
  at::Tensor centred = x - x.mean(0, true);
  at::Tensor cov = at::matmul(centred.t(), centred) / 200.0;
  at::Tensor eigen = std::get<0>(at::linalg_eigh(cov));  // ascending
  at::Tensor var = map.pow(2).mean(0);                   // the map has zero mean
  EXPECT_NEAR(var[0].item<double>(), eigen[4].item<double>(), 1e-9);
  EXPECT_NEAR(var[1].item<double>(), eigen[3].item<double>(), 1e-9);
  EXPECT_NEAR((map.select(1, 0) * map.select(1, 1)).sum().item<double>(), 0.0, 1e-8);
  EXPECT_NEAR(map.mean(0).abs().max().item<double>(), 0.0, 1e-12);
}

TEST(PcaTokenMap, DegenerateShapes) {
  // d == 1: one component, positive loading; column 1 all zeros.
  expect_near(pca_2d(matrix({1, 2, 3}, 3, 1)), matrix({-1, 0, 0, 0, 1, 0}, 3, 2), 1e-12);
  // N == 2 in 3-D: the centred data ∓(0.5, 1, 1) has rank 1; component (1, 2, 2)/3.
  at::Tensor two = matrix({0, 0, 0, 1, 2, 2}, 2, 3);
  expect_near(pca_2d(two), matrix({-1.5, 0, 1.5, 0}, 2, 2), 1e-12);
  // All points identical: no variance at all.
  EXPECT_EQ(pca_2d(at::ones({4, 3}, at::kDouble)).abs().max().item<double>(), 0.0);
}

TEST(PcaTokenMap, RejectsBadInput) {
  EXPECT_THROW(pca_2d(at::Tensor()), std::invalid_argument);
  EXPECT_THROW(pca_2d(at::ones({5}, at::kDouble)), std::invalid_argument);
  EXPECT_THROW(pca_2d(at::ones({1, 3}, at::kDouble)), std::invalid_argument);
  EXPECT_THROW(pca_2d(at::ones({4, 0}, at::kDouble)), std::invalid_argument);
  EXPECT_THROW(pca_2d(at::ones({4, 3}, at::kLong)), std::invalid_argument);
  at::Tensor bad = at::ones({4, 3}, at::kDouble);
  bad[2][1] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(pca_2d(bad), std::invalid_argument);
}

}  // namespace
}  // namespace xmoe::analysis
