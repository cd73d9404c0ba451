// Top-k choice and gating (SPEC §1, §2.1, §2.4) on hand-computed tiny cases.
#include "xmoe/routing/topk.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

namespace xmoe {
namespace {

at::Tensor row(std::vector<double> v) {
  return at::tensor(v, at::kDouble).reshape({1, static_cast<int64_t>(v.size())});
}

std::vector<int64_t> ids_of(const at::Tensor& t) {
  at::Tensor c = t.reshape({-1}).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(TopK, TiesBreakTowardLowerExpertIndex) {
  EXPECT_EQ(ids_of(select_topk(row({1, 3, 3, 2}), 1).indices), (std::vector<int64_t>{1}));
  EXPECT_EQ(ids_of(select_topk(row({1, 3, 3, 2}), 2).indices), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(ids_of(select_topk(row({5, 5, 5, 5}), 3).indices), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(ids_of(select_topk(row({0, 2, 1, 2, 2}), 4).indices),
            (std::vector<int64_t>{1, 3, 4, 2}));
}

TEST(TopK, ValuesAreDecreasingAndDifferentiable) {
  at::Tensor v = row({0.5, -1, 2, 0.25}).requires_grad_();
  TopK top = select_topk(v, 3);
  EXPECT_EQ(ids_of(top.indices), (std::vector<int64_t>{2, 0, 3}));
  EXPECT_TRUE(at::allclose(top.values, row({2, 0.5, 0.25})));
  top.values.sum().backward();
  EXPECT_TRUE(at::equal(v.grad(), row({1, 0, 1, 1})));
}

TEST(TopK, RejectsKOutsideRange) {
  EXPECT_THROW(select_topk(row({1, 2}), 3), c10::Error);
  EXPECT_THROW(select_topk(row({1, 2}), 0), c10::Error);
}

GateSelection gate(const at::Tensor& logits, int64_t k, GateKind g, bool normalize = true,
                   SecondExpertPolicy policy = SecondExpertPolicy::kAll, bool training = false) {
  return gate_topk(logits, k, g, normalize, policy, training, make_generator(7));
}

TEST(GateTopK, SoftmaxTop1GateIsTheWinnersProbability) {
  // softmax(0, ln 2, 0) = (1/4, 1/2, 1/4)
  GateSelection s = gate(row({0, std::log(2.0), 0}), 1, GateKind::kSoftmax);
  EXPECT_EQ(ids_of(s.expert_ids), (std::vector<int64_t>{1}));
  EXPECT_NEAR(s.gates.item<double>(), 0.5, 1e-12);
  EXPECT_TRUE(at::allclose(s.gate_probs, row({0.25, 0.5, 0.25})));
}

TEST(GateTopK, GShardRenormalisesTheChosenSoftmaxGates) {
  // softmax(ln 1, ln 2, ln 3, ln 4) = (0.1, 0.2, 0.3, 0.4); top-2 = experts 3, 2.
  at::Tensor logits = row({0, std::log(2.0), std::log(3.0), std::log(4.0)});
  GateSelection s = gate(logits, 2, GateKind::kSoftmax);
  EXPECT_EQ(ids_of(s.expert_ids), (std::vector<int64_t>{3, 2}));
  EXPECT_TRUE(at::allclose(s.gates, row({0.4 / 0.7, 0.3 / 0.7})));
  GateSelection raw = gate(logits, 2, GateKind::kSoftmax, /*normalize=*/false);
  EXPECT_TRUE(at::allclose(raw.gates, row({0.4, 0.3})));
}

TEST(GateTopK, SigmoidGatesAreNotRenormalised) {
  GateSelection s = gate(row({0, 1, -1}), 2, GateKind::kSigmoid);
  EXPECT_EQ(ids_of(s.expert_ids), (std::vector<int64_t>{1, 0}));
  EXPECT_NEAR(s.gates[0][0].item<double>(), 1 / (1 + std::exp(-1.0)), 1e-12);
  EXPECT_NEAR(s.gates[0][1].item<double>(), 0.5, 1e-12);
}

TEST(GateTopK, RandomPolicyKeepsSecondExpertWithProbabilityTwiceItsGate) {
  // Every token: softmax = (0.9, 0.1) → the second slot is kept with probability 0.2.
  const int64_t n = 20000;
  at::Tensor logits = row({std::log(9.0), 0}).expand({n, 2}).contiguous();
  GateSelection train = gate(logits, 2, GateKind::kSoftmax, true, SecondExpertPolicy::kRandom, true);
  const double kept = train.active.select(1, 1).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(kept, 0.2, 0.015);  // 5σ of a binomial(20000, 0.2) share is 0.014
  EXPECT_TRUE(train.active.select(1, 0).all().item<bool>());
  // A dropped second slot gives the first expert the whole weight.
  at::Tensor dropped = ~train.active.select(1, 1);
  EXPECT_TRUE(at::allclose(train.gates.select(1, 0).masked_select(dropped),
                           at::ones({dropped.sum().item<int64_t>()}, at::kDouble)));
  // Evaluation is deterministic: every slot stays.
  GateSelection eval = gate(logits, 2, GateKind::kSoftmax, true, SecondExpertPolicy::kRandom, false);
  EXPECT_TRUE(eval.active.all().item<bool>());
}

TEST(GateTopK, SamplingPolicyKeepsTheFirstExpertAndSamplesTheSecond) {
  const int64_t n = 20000;
  // softmax over (ln 6, ln 3, ln 1) = (0.6, 0.3, 0.1); with the first (0) excluded, Gumbel-max
  // picks expert 1 with probability 0.3 / 0.4 = 0.75.
  at::Tensor logits = row({std::log(6.0), std::log(3.0), 0}).expand({n, 3}).contiguous();
  GateSelection s = gate(logits, 2, GateKind::kSoftmax, true, SecondExpertPolicy::kSampling, true);
  EXPECT_TRUE((s.expert_ids.select(1, 0) == 0).all().item<bool>());
  const double share1 = (s.expert_ids.select(1, 1) == 1).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(share1, 0.75, 0.016);
  GateSelection eval = gate(logits, 2, GateKind::kSoftmax, true, SecondExpertPolicy::kSampling, false);
  EXPECT_TRUE((eval.expert_ids.select(1, 1) == 1).all().item<bool>());
}

}  // namespace
}  // namespace xmoe
