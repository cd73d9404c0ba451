// Each router's scores, gates, choices and aux losses on hand-computed tiny cases (SPEC §2, §3).
#include "xmoe/kernels/nonfinite.h"
#include "xmoe/routing/dot_router.h"
#include "xmoe/routing/hypersphere_router.h"
#include "xmoe/routing/noisy_topk_router.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace xmoe {
namespace {

using xmoe_test::mat;

void set(at::Tensor& param, const at::Tensor& value) {
  at::NoGradGuard no_grad;
  param.copy_(value);
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <class Router>
std::shared_ptr<Router> make(const RouterOptions& options) {
  auto r = std::make_shared<Router>(options);
  r->to(at::kDouble);
  return r;
}

// ---- dot product ---------------------------------------------------------------------------

TEST(DotRouter, ScoresGatesAndBalanceByHand) {
  auto r = make<DotRouterImpl>(RouterOptions(2, 3));
  set(r->weight, mat({1, 0, 0, 1, 1, 1}, 3));
  r->eval();
  RoutingResult out = r->route(mat({1, 2}, 1));  // s = (1, 2, 3)
  EXPECT_TRUE(at::allclose(out.scores, mat({1, 2, 3}, 1)));
  EXPECT_EQ(out.expert_ids.item<int64_t>(), 2);
  const double z = std::exp(1) + std::exp(2) + std::exp(3);
  EXPECT_NEAR(out.gates.item<double>(), std::exp(3) / z, 1e-12);
  // One token: f = (0, 0, 1), P = softmax(s) → L = 3 · e³/z
  EXPECT_NEAR(out.aux.at("balance").item<double>(), 3 * std::exp(3) / z, 1e-12);
  EXPECT_NEAR(out.aux.at("z").item<double>(), std::pow(std::log(z), 2), 1e-12);
  EXPECT_EQ(out.stats.tokens_per_expert[2].item<int64_t>(), 1);
}

// Scores near 1e20 are finite in float32, their z-loss (lse², ~1e40) is not: it is inf, for the
// caller's finiteness checks to report, rather than an exception from the conversion.
TEST(DotRouter, Float32ZLossPastTheRangeIsInfinite) {
  DotRouterImpl r(RouterOptions(2, 3));
  set(r.weight, mat({1, 0, 0, 1, 1, 1}, 3).to(at::kFloat));
  RoutingResult out;
  ASSERT_NO_THROW(out = r.route(mat({1e20, 0}, 1).to(at::kFloat)));
  EXPECT_TRUE(std::isinf(out.aux.at("z").item<double>()));
  EXPECT_TRUE(std::isfinite(out.aux.at("balance").item<double>()));
}

TEST(DotRouter, SigmoidGate) {
  auto r = make<DotRouterImpl>(RouterOptions(2, 3).gate(GateKind::kSigmoid));
  set(r->weight, mat({1, 0, 0, 1, 1, 1}, 3));
  RoutingResult out = r->route(mat({1, 2, -1, 0.5}, 2));  // s = (1, 2, 3), (−1, 0.5, −0.5)
  EXPECT_EQ(out.expert_ids[0].item<int64_t>(), 2);
  EXPECT_EQ(out.expert_ids[1].item<int64_t>(), 1);
  EXPECT_NEAR(out.gates[0].item<double>(), sigmoid(3), 1e-12);
  EXPECT_NEAR(out.gates[1].item<double>(), sigmoid(0.5), 1e-12);
}

TEST(DotRouter, GShardTop2) {
  auto r = make<DotRouterImpl>(RouterOptions(2, 3).top_k(2));
  set(r->weight, mat({1, 0, 0, 1, 1, 1}, 3));
  RoutingResult out = r->route(mat({1, 2}, 1));
  EXPECT_EQ(out.expert_ids[0][0].item<int64_t>(), 2);
  EXPECT_EQ(out.expert_ids[0][1].item<int64_t>(), 1);
  // softmax renormalised over the two: e³/(e³+e²), e²/(e³+e²)
  EXPECT_NEAR(out.gates[0][0].item<double>(), sigmoid(1), 1e-12);
  EXPECT_NEAR(out.gates[0][1].item<double>(), sigmoid(-1), 1e-12);
}

TEST(DotRouter, UniformRouterBalanceIsOne) {
  auto r = make<DotRouterImpl>(RouterOptions(4, 4));
  set(r->weight, at::zeros({4, 4}, at::kDouble));  // every score equal
  RoutingResult out = r->route(at::randn({12, 4}, at::kDouble));
  EXPECT_NEAR(out.aux.at("balance").item<double>(), 1.0, 1e-12);
  EXPECT_TRUE((out.expert_ids == 0).all().item<bool>());  // ties → lowest index
}

TEST(DotRouter, NonFiniteInputIsRefusedOrCounted) {
  auto r = make<DotRouterImpl>(RouterOptions(2, 2).name("enc.3.moe"));
  at::Tensor h = mat({1, NAN, INFINITY, 0, 1, 1}, 3);
  try {
    r->route(h);
    FAIL() << "expected a throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("enc.3.moe"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2 non-finite"), std::string::npos) << e.what();
  }
  auto lenient = make<DotRouterImpl>(RouterOptions(2, 2).check_finite(false));
  RoutingResult out = lenient->route(h);
  EXPECT_EQ(out.stats.nonfinite_count, 4);  // scores of the 2 bad tokens
}

TEST(CountNonfinite, CountsNanAndInfinitiesInEveryLayout) {
  // Finite edge values (largest, smallest denormal, −0) must not count; spread over more than one
  // parallel chunk (65 536 elements) in float and double, and through the ATen fallback.
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    at::Tensor t = at::zeros({300000}, dtype);
    const double big = dtype == at::kFloat ? 3.4e38 : 1.7e308;
    const double tiny = dtype == at::kFloat ? 1.4e-45 : 4.9e-324;
    t[1] = big;
    t[2] = -big;
    t[3] = tiny;
    t[4] = -0.0;
    t[10] = NAN;
    t[70000] = INFINITY;
    t[299999] = -INFINITY;
    t[150000] = -NAN;
    EXPECT_EQ(kernels::count_nonfinite(t), 4) << dtype;
    EXPECT_EQ(kernels::count_nonfinite(t.view({600, 500}).t()), 4) << dtype;  // non-contiguous
    EXPECT_EQ(kernels::count_nonfinite(t.narrow(0, 11, 1000)), 0) << dtype;
  }
  EXPECT_EQ(kernels::count_nonfinite(at::empty({0, 3})), 0);
  EXPECT_EQ(kernels::count_nonfinite(at::ones({4}, at::kHalf).index_fill_(0, at::tensor({int64_t{1}}), NAN)), 1);
}

// ---- noisy top-k ---------------------------------------------------------------------------

struct NoisyCase {
  std::shared_ptr<NoisyTopKRouterImpl> router;
  at::Tensor h = mat({1, 0, 0, 1}, 2);  // h = I: clean logits = W_g rows
  at::Tensor w_gate = mat({2, 1, 0, 0, 1, 3}, 2);
  at::Tensor w_noise = mat({0, 0, 0, 1, -1, 0}, 2);
  NoisyCase(int64_t k) {
    router = make<NoisyTopKRouterImpl>(RouterOptions(2, 3).kind("noisy_topk").top_k(k));
    set(router->w_gate, w_gate);
    set(router->w_noise, w_noise);
  }
};

TEST(NoisyTopKRouter, ZeroInitialised) {
  NoisyTopKRouterImpl r(RouterOptions(3, 4).kind("noisy_topk"));
  EXPECT_EQ(r.w_gate.abs().sum().item<double>(), 0.0);
  EXPECT_EQ(r.w_noise.abs().sum().item<double>(), 0.0);
}

TEST(NoisyTopKRouter, EvaluationIsNoiseFreeWithCountLoad) {
  NoisyCase c(2);
  c.router->eval();
  RoutingResult out = c.router->route(c.h);
  // clean rows (2, 1, 0) and (0, 1, 3); top-2: (0, 1) and (2, 1)
  EXPECT_TRUE(at::allclose(out.scores, c.w_gate));
  EXPECT_TRUE(at::equal(out.expert_ids, at::tensor({0, 1, 2, 1}, at::kLong).reshape({2, 2})));
  EXPECT_NEAR(out.gates[0][0].item<double>(), sigmoid(1), 1e-12);
  EXPECT_NEAR(out.gates[1][0].item<double>(), sigmoid(2), 1e-12);
  // Importance = (σ(1), σ(−1) + σ(−2), σ(2)); load = counts (1, 2, 1) → CV² = (1/6)/(16/9)
  at::Tensor importance = at::tensor({sigmoid(1), sigmoid(-1) + sigmoid(-2), sigmoid(2)}, at::kDouble);
  const double m = importance.mean().item<double>();
  const double var = (importance - m).pow(2).mean().item<double>();
  EXPECT_NEAR(out.aux.at("importance").item<double>(), var / (m * m + 1e-10), 1e-12);
  EXPECT_NEAR(out.aux.at("load").item<double>(), (2.0 / 9.0) / (16.0 / 9.0), 1e-9);
  RoutingResult again = c.router->route(c.h);
  EXPECT_TRUE(at::equal(again.scores, out.scores));
}

TEST(NoisyTopKRouter, TrainingUsesSuppliedNoiseAndSmoothLoad) {
  NoisyCase c(1);
  c.router->train();
  at::Tensor eps = mat({0.5, -1.0, 0.25, 1.0, 0.0, -0.5}, 2);
  RoutingResult out = c.router->route(c.h, RouteInputs{eps});
  // σ = softplus(h W_noise) + 0.01: row 0 softplus(0, 0, 0), row 1 softplus(1, −1, 0)
  auto softplus = [](double x) { return std::log1p(std::exp(x)); };
  const double s0 = softplus(0) + 0.01;
  const std::vector<double> sigma = {s0, s0, s0, softplus(1) + 0.01, softplus(-1) + 0.01, s0};
  std::vector<double> H(6);
  const std::vector<double> clean = {2, 1, 0, 0, 1, 3};
  const std::vector<double> e = {0.5, -1.0, 0.25, 1.0, 0.0, -0.5};
  for (int i = 0; i < 6; ++i) H[i] = clean[i] + e[i] * sigma[i];
  EXPECT_TRUE(at::allclose(out.scores, mat(H, 2)));
  // Row 0: H = (2.3516, 0.2966, 0.1758) → expert 0; row 1: H = (1.3233, 1.0, 2.6484) → expert 2.
  EXPECT_EQ(out.expert_ids[0][0].item<int64_t>(), 0);
  EXPECT_EQ(out.expert_ids[1][0].item<int64_t>(), 2);
  EXPECT_DOUBLE_EQ(out.gates[0][0].item<double>(), 1.0);  // softmax over one value
  // Load_i = Σ_x Φ((clean − threshold)/σ), threshold = 2nd largest H if i chosen, else largest.
  auto phi = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  std::vector<double> load(3, 0.0);
  for (int t = 0; t < 2; ++t) {
    std::vector<double> row(H.begin() + 3 * t, H.begin() + 3 * t + 3);
    std::vector<double> sorted = row;
    std::sort(sorted.rbegin(), sorted.rend());
    const int chosen = t == 0 ? 0 : 2;
    for (int i = 0; i < 3; ++i) {
      const double threshold = i == chosen ? sorted[1] : sorted[0];
      load[i] += phi((clean[3 * t + i] - threshold) / sigma[3 * t + i]);
    }
  }
  const double m = (load[0] + load[1] + load[2]) / 3;
  double var = 0;
  for (double l : load) var += (l - m) * (l - m) / 3;
  EXPECT_NEAR(out.aux.at("load").item<double>(), var / (m * m + 1e-10), 1e-10);
}

TEST(NoisyTopKRouter, RejectsSecondExpertPolicies) {
  EXPECT_THROW(NoisyTopKRouterImpl(RouterOptions(2, 3).kind("noisy_topk").top_k(2)
                                       .second_expert_policy(SecondExpertPolicy::kRandom)),
               std::invalid_argument);
}

// ---- X-MoE hypersphere ---------------------------------------------------------------------

std::shared_ptr<HypersphereRouterImpl> identity_xmoe(RouterOptions o) {
  auto r = make<HypersphereRouterImpl>(o.kind("xmoe"));
  if (r->proj.defined()) set(r->proj, at::eye(2, at::kDouble));
  set(r->expert_embed, at::eye(2, at::kDouble));
  return r;
}

TEST(HypersphereRouter, DefaultsFollowThePaper) {
  HypersphereRouterImpl r(RouterOptions(16, 32).kind("xmoe"));
  EXPECT_EQ(r.proj.sizes(), (std::vector<int64_t>{16, 16}));  // d_e = E/2
  EXPECT_EQ(r.expert_embed.sizes(), (std::vector<int64_t>{32, 16}));
  EXPECT_NEAR(r.temperature.item<double>(), 0.3, 1e-7);
  HypersphereRouterImpl s(RouterOptions(16, 2).kind("xmoe").gate(GateKind::kSigmoid));
  EXPECT_EQ(s.proj.size(0), 2);  // at least 2
  EXPECT_NEAR(s.temperature.item<double>(), 0.07, 1e-7);
  EXPECT_TRUE(at::allclose(r.expert_embed.norm(2, {1}), at::full({32}, 1.5), 1e-5, 1e-5));
  // With E <= d_e the initial directions are orthogonal, each rescaled to the norm 1.5.
  HypersphereRouterImpl wide(RouterOptions(16, 4).kind("xmoe").d_e(8));
  at::Tensor gram = at::matmul(wide.expert_embed, wide.expert_embed.t()) / 2.25;
  EXPECT_TRUE(at::allclose(gram, at::eye(4), 1e-5, 1e-5));
}

TEST(HypersphereRouter, CosineScoresTemperatureAndBalanceByHand) {
  auto r = identity_xmoe(RouterOptions(2, 2));
  r->train();
  RoutingResult out = r->route(mat({3, 4}, 1));
  // z = (3, 4) → (0.6, 0.8); e rescaled to norm 1.5 but normalised for the cosine.
  EXPECT_TRUE(at::allclose(out.scores, mat({0.6, 0.8}, 1)));
  EXPECT_TRUE(at::allclose(out.gate_logits, mat({0.6 / 0.3, 0.8 / 0.3}, 1), 1e-6, 1e-6));
  EXPECT_EQ(out.expert_ids.item<int64_t>(), 1);
  EXPECT_NEAR(out.gates.item<double>(), sigmoid((0.8 - 0.6) / 0.3), 1e-6);
  // Balance P = softmax(s / 0.07), f = (0, 1) → L = 2 · P_1
  EXPECT_NEAR(out.aux.at("balance").item<double>(), 2 * sigmoid(0.2 / 0.07), 1e-9);
  EXPECT_TRUE(at::allclose(r->expert_embed.norm(2, {1}), at::full({2}, 1.5, at::kDouble)));
  EXPECT_TRUE(at::allclose(out.router_input, mat({3, 4}, 1)));  // z, for RC analysis
}

// Cosine routing does not depend on the token's scale, also where float32 cannot square it:
// rows near 1e20 route like the rows themselves (their norm overflowed to inf, scores were 0).
TEST(HypersphereRouter, ScaleInvariantBeyondFloat32Squares) {
  HypersphereRouterImpl r(RouterOptions(8, 4).kind("xmoe"));
  r.eval();
  const at::Tensor h = at::randn({6, 8}, make_generator(3));
  const RoutingResult plain = r.route(h), huge = r.route(h * 1e20);
  EXPECT_TRUE(at::equal(plain.expert_ids, huge.expert_ids));
  EXPECT_TRUE(at::allclose(plain.scores, huge.scores, 1e-5, 1e-6));
  EXPECT_GT(plain.scores.abs().max().item<double>(), 0.01);
}

TEST(HypersphereRouter, SigmoidGateDividesByTemperature) {
  auto r = identity_xmoe(RouterOptions(2, 2).gate(GateKind::kSigmoid));
  RoutingResult out = r->route(mat({3, 4}, 1));
  EXPECT_NEAR(out.gates.item<double>(), sigmoid(0.8 / 0.07), 1e-6);
}

TEST(HypersphereRouter, TemperatureIsClampedFromBelow) {
  auto r = identity_xmoe(RouterOptions(2, 2));
  set(r->temperature, at::full({1}, -3.0, at::kDouble));
  RoutingResult out = r->route(mat({3, 4}, 1));
  EXPECT_TRUE(at::allclose(out.gate_logits, mat({0.6 / 1e-4, 0.8 / 1e-4}, 1)));
}

TEST(HypersphereRouter, TorchscaleVariantNormalisesOnlyExperts) {
  auto r = make<HypersphereRouterImpl>(RouterOptions(2, 2).kind("xmoe_torchscale")
                                           .normalize_tokens(false).learn_temperature(false)
                                           .temperature_init(1.0).balance_temperature(1.0));
  set(r->proj, at::eye(2, at::kDouble));
  set(r->expert_embed, at::eye(2, at::kDouble) * 7);
  RoutingResult out = r->route(mat({3, 4}, 1));
  EXPECT_TRUE(at::allclose(out.scores, mat({3, 4}, 1)));  // z · e/‖e‖
  EXPECT_FALSE(r->temperature.requires_grad());
  EXPECT_NEAR(out.gates.item<double>(), sigmoid(1), 1e-9);
  auto registered = RouterRegistry::create(RouterOptions(2, 2).kind("xmoe_torchscale"));
  auto* h = dynamic_cast<HypersphereRouterImpl*>(registered.get());
  ASSERT_NE(h, nullptr);
  EXPECT_FALSE(h->options().normalize_tokens());
  EXPECT_FALSE(h->temperature.requires_grad());
}

TEST(HypersphereRouter, AblationsWithoutDimReductionOrL2) {
  auto flat = identity_xmoe(RouterOptions(2, 2).dim_reduction(false));
  EXPECT_FALSE(flat->proj.defined());
  EXPECT_EQ(flat->expert_embed.sizes(), (std::vector<int64_t>{2, 2}));  // [E, d_model]
  EXPECT_TRUE(at::allclose(flat->route(mat({3, 4}, 1)).scores, mat({0.6, 0.8}, 1)));

  auto dot = identity_xmoe(RouterOptions(2, 2).l2_norm(false));
  dot->eval();  // no rescaling in evaluation: e stays the identity
  RoutingResult out = dot->route(mat({3, 4}, 1));
  EXPECT_TRUE(at::allclose(out.scores, mat({3, 4}, 1)));
  EXPECT_TRUE(at::allclose(out.gate_logits, out.scores));  // no temperature
  EXPECT_NEAR(out.aux.at("balance").item<double>(), 2 * sigmoid(1), 1e-12);
}

TEST(HypersphereRouter, FrozenRouterNeverRescales) {
  auto r = identity_xmoe(RouterOptions(2, 2));
  set(r->expert_embed, mat({3, 0, 0, 0.5}, 2));
  r->set_frozen(true);
  r->train();
  r->route(mat({3, 4}, 1));
  EXPECT_TRUE(at::equal(r->expert_embed, mat({3, 0, 0, 0.5}, 2)));
  for (const auto& p : r->parameters()) EXPECT_FALSE(p.requires_grad());
  r->set_frozen(false);
  r->route(mat({3, 4}, 1));
  EXPECT_TRUE(at::allclose(r->expert_embed.norm(2, {1}), at::full({2}, 1.5, at::kDouble)));
  EXPECT_TRUE(r->temperature.requires_grad());
}

TEST(HypersphereRouter, NonFiniteScoresNameTheLayer) {
  auto r = identity_xmoe(RouterOptions(2, 2).name("encoder.6.moe"));
  set(r->proj, mat({NAN, 0, 0, 1}, 2));
  try {
    r->route(mat({3, 4, 1, 1}, 2));
    FAIL() << "expected a throw";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("encoder.6.moe"), std::string::npos) << what;
    EXPECT_NE(what.find("4 non-finite value(s) in the router scores"), std::string::npos) << what;
  }
}

// ---- registry ------------------------------------------------------------------------------

TEST(RouterRegistry, UnknownKindListsTheKnownOnes) {
  try {
    RouterRegistry::create(RouterOptions(2, 2).kind("hash"));
    FAIL() << "expected a throw";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    for (const char* k : {"'hash'", "dot", "noisy_topk", "xmoe", "xmoe_torchscale"}) {
      EXPECT_NE(what.find(k), std::string::npos) << what;
    }
  }
}

TEST(RouterRegistry, CustomRoutersCanBeAdded) {
  RouterRegistry::add("dot_alias", [](const RouterOptions& o) {
    return std::make_shared<DotRouterImpl>(o);
  });
  auto r = RouterRegistry::create(RouterOptions(3, 2).kind("dot_alias"));
  EXPECT_NE(dynamic_cast<DotRouterImpl*>(r.get()), nullptr);
}

}  // namespace
}  // namespace xmoe
