// The MoE layer end to end (SPEC §1-§5, §8) against a naive per-token reference written here:
//   y[t] = Σ_j g[t, j] · FFN_{e[t, j]}(h[t])
// plus an independent recomputation of each router's choice and gates from its parameters.
#include "xmoe/moe/moe_layer.h"
#include "xmoe/routing/router_options.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/optim/adamw.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <ostream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace xmoe {
namespace {

constexpr int64_t kD = 6;   // d_model
constexpr int64_t kFF = 5;  // d_ff
constexpr int64_t kE = 4;   // experts
constexpr int64_t kT = 7;   // tokens

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = make_generator(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kDouble));
}

MoELayer make_layer(const MoELayerOptions& options) {
  MoELayer layer(options);
  layer->to(at::kDouble);
  return layer;
}

at::Tensor param(MoELayer& layer, const std::string& name) {
  auto params = layer->named_parameters(/*recurse=*/true);
  const at::Tensor* p = params.find(name);
  if (p == nullptr) throw std::runtime_error("test: no parameter named " + name);
  return *p;
}

// The noisy router's weights start at zero (SPEC §2.2); give them values so routing is not a tie.
void randomize_noisy_router(MoELayer& layer, uint64_t seed) {
  at::NoGradGuard no_grad;
  param(layer, "router.w_gate").copy_(randn({kD, kE}, seed));
  param(layer, "router.w_noise").copy_(0.5 * randn({kD, kE}, seed + 1));
}

MoEInputs with_noise(const at::Tensor& noise) {
  MoEInputs in;
  in.noise = noise;
  return in;
}

MoEInputs with_mask(const at::Tensor& mask, const at::Tensor& noise = {}) {
  MoEInputs in;
  in.mask = mask;
  in.noise = noise;
  return in;
}

// y[t] += g[t, j] · FFN_{e[t, j]}(h[t : t+1]) for every token and slot.
at::Tensor naive_reference(MoELayer& layer, const at::Tensor& h, const at::Tensor& expert_ids,
                           const at::Tensor& gates) {
  at::NoGradGuard no_grad;
  at::Tensor y = at::zeros_like(h);
  for (int64_t t = 0; t < h.size(0); ++t) {
    for (int64_t j = 0; j < expert_ids.size(1); ++j) {
      const int64_t e = expert_ids[t][j].item<int64_t>();
      const double g = gates[t][j].item<double>();
      y[t].add_(g * layer->experts()->forward_expert(e, h.narrow(0, t, 1))[0]);
    }
  }
  return y;
}

struct ExpectedRouting {
  at::Tensor scores;      // [T, E]
  at::Tensor expert_ids;  // [T, k]
  at::Tensor gates;       // [T, k] (before any capacity dropping)
};

// Recomputes the routing from the router's parameters (SPEC §2.1-§2.3), policy "all".
ExpectedRouting expected_routing(MoELayer& layer, const at::Tensor& h,
                                 const at::Tensor& noise = {}) {
  at::NoGradGuard no_grad;
  const MoELayerOptions& o = layer->options();
  const int64_t k = o.top_k();
  ExpectedRouting r;
  at::Tensor logits;
  if (o.router() == "dot") {
    r.scores = h.mm(param(layer, "router.weight").t());
    logits = r.scores;
  } else if (o.router() == "noisy_topk") {
    at::Tensor clean = h.mm(param(layer, "router.w_gate"));
    logits = clean;
    if (layer->is_training()) {
      at::Tensor sigma = at::softplus(h.mm(param(layer, "router.w_noise"))) + o.noise_epsilon();
      logits = clean + noise * sigma;
    }
    r.scores = logits;
    auto sorted = logits.sort(/*dim=*/1, /*descending=*/true);
    r.expert_ids = std::get<1>(sorted).narrow(1, 0, k).contiguous();
    r.gates = at::softmax(std::get<0>(sorted).narrow(1, 0, k), 1);
    return r;
  } else {  // xmoe, xmoe_torchscale
    const bool torchscale = o.router() == "xmoe_torchscale";
    at::Tensor z = h.mm(param(layer, "router.proj").t());
    at::Tensor e = param(layer, "router.expert_embed");
    at::Tensor en = e / e.norm(2, {1}, true).clamp_min(1e-4);
    at::Tensor zn = torchscale ? z : z / z.norm(2, {1}, true).clamp_min(1e-4);
    r.scores = zn.mm(en.t());
    const double tau =
        torchscale ? 1.0 : std::max(param(layer, "router.temperature").item<double>(), 1e-4);
    logits = r.scores / tau;
  }
  r.expert_ids = std::get<1>(logits.sort(/*dim=*/1, /*descending=*/true)).narrow(1, 0, k).contiguous();
  if (o.gate() == GateKind::kSoftmax) {
    r.gates = at::softmax(logits, 1).gather(1, r.expert_ids);
    if (k > 1 && o.normalize_topk()) r.gates = r.gates / r.gates.sum(1, true);
  } else {
    r.gates = at::sigmoid(logits.gather(1, r.expert_ids));
  }
  return r;
}

// Which slots survive capacity C, counted here in the fill order of SPEC §8.
at::Tensor expected_kept(const at::Tensor& expert_ids, int64_t n_expert, int64_t capacity) {
  const int64_t T = expert_ids.size(0), k = expert_ids.size(1);
  at::Tensor kept = at::zeros({T, k}, at::kBool);
  std::vector<int64_t> used(n_expert, 0);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t e = expert_ids[t][j].item<int64_t>();
      if (capacity < 0 || used[e] < capacity) {
        ++used[e];
        kept[t][j] = true;
      }
    }
  }
  return kept;
}

::testing::AssertionResult close(const at::Tensor& a, const at::Tensor& b, double rtol = 1e-10,
                                 double atol = 1e-12) {
  if (a.sizes() != b.sizes()) {
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  }
  if (at::allclose(a, b, rtol, atol)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max |diff| = " << (a - b).abs().max().item<double>() << "\n" << a << "\n" << b;
}

void expect_invalid(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) {
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected std::invalid_argument, got: " << e.what();
  }
}

// ---- expert FFN against hand-written formulas (SPEC §1, §8) ---------------------------------

at::Tensor hand_ffn(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                    const at::Tensor& w2, const at::Tensor& b2, Activation act) {
  at::Tensor pre = x.mm(w1.t()) + b1;
  at::Tensor hid = act == Activation::kRelu ? pre.clamp_min(0.0)
                                            : 0.5 * pre * (1.0 + at::erf(pre / std::sqrt(2.0)));
  return hid.mm(w2.t()) + b2;
}

TEST(MoELayerExperts, ForwardExpertMatchesHandWrittenFFN) {
  for (Activation act : {Activation::kGelu, Activation::kRelu}) {
    for (int64_t depth : {1, 3}) {
      SCOPED_TRACE(to_string(act) + " depth " + std::to_string(depth));
      MoELayer layer = make_layer(
          MoELayerOptions(kD, kFF, kE).expert_depth(depth).activation(act).seed(3));
      EXPECT_EQ(layer->experts()->depth(), depth);
      // Parameter shapes of SPEC §8.
      EXPECT_EQ(param(layer, "experts.0.w1").sizes(), (std::vector<int64_t>{kE, kFF, kD}));
      EXPECT_EQ(param(layer, "experts.0.b1").sizes(), (std::vector<int64_t>{kE, kFF}));
      EXPECT_EQ(param(layer, "experts.0.w2").sizes(), (std::vector<int64_t>{kE, kD, kFF}));
      EXPECT_EQ(param(layer, "experts.0.b2").sizes(), (std::vector<int64_t>{kE, kD}));
      if (depth > 1) {
        // Non-trivial LayerNorm affine parameters, so they matter below.
        at::NoGradGuard no_grad;
        for (int64_t j = 0; j < depth; ++j) {
          const std::string p = "experts." + std::to_string(j) + ".";
          EXPECT_EQ(param(layer, p + "ln_weight").sizes(), (std::vector<int64_t>{kE, kD}));
          param(layer, p + "ln_weight").copy_(1.0 + 0.3 * randn({kE, kD}, 40 + j));
          param(layer, p + "ln_bias").copy_(0.2 * randn({kE, kD}, 50 + j));
        }
      } else {
        EXPECT_EQ(layer->named_parameters().find("experts.0.ln_weight"), nullptr);
      }
      at::Tensor x = randn({3, kD}, 11);
      at::NoGradGuard no_grad;
      for (int64_t e = 0; e < kE; ++e) {
        at::Tensor y = x;
        for (int64_t j = 0; j < depth; ++j) {
          const std::string p = "experts." + std::to_string(j) + ".";
          at::Tensor in = y;
          if (depth > 1) {
            at::Tensor mean = y.mean(1, true);
            at::Tensor var = (y - mean).pow(2).mean(1, true);
            in = (y - mean) / at::sqrt(var + 1e-5) * param(layer, p + "ln_weight")[e] +
                 param(layer, p + "ln_bias")[e];
          }
          at::Tensor f = hand_ffn(in, param(layer, p + "w1")[e], param(layer, p + "b1")[e],
                                  param(layer, p + "w2")[e], param(layer, p + "b2")[e], act);
          y = depth > 1 ? y + f : f;
        }
        EXPECT_TRUE(close(layer->experts()->forward_expert(e, x), y)) << "expert " << e;
      }
    }
  }
}

// ---- layer output = naive reference, per router × k × depth × activation --------------------

struct RouterCfg {
  const char* label;
  const char* router;
  GateKind gate;
};

void PrintTo(const RouterCfg& c, std::ostream* os) { *os << c.label; }

const RouterCfg kRouterCfgs[] = {
    {"dot_softmax", "dot", GateKind::kSoftmax},
    {"dot_sigmoid", "dot", GateKind::kSigmoid},
    {"noisy_topk", "noisy_topk", GateKind::kSoftmax},
    {"xmoe_softmax", "xmoe", GateKind::kSoftmax},
    {"xmoe_sigmoid", "xmoe", GateKind::kSigmoid},
    {"xmoe_torchscale", "xmoe_torchscale", GateKind::kSoftmax},
};

using LayerParam = std::tuple<RouterCfg, int64_t /*k*/, int64_t /*depth*/, Activation>;

class MoELayerReference : public ::testing::TestWithParam<LayerParam> {};

TEST_P(MoELayerReference, OutputEqualsNaivePerTokenSum) {
  const RouterCfg cfg = std::get<0>(GetParam());
  const int64_t k = std::get<1>(GetParam());
  const int64_t depth = std::get<2>(GetParam());
  const Activation act = std::get<3>(GetParam());
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE)
                                  .router(cfg.router)
                                  .gate(cfg.gate)
                                  .top_k(k)
                                  .expert_depth(depth)
                                  .activation(act)
                                  .seed(7));
  if (std::string(cfg.router) == "noisy_topk") randomize_noisy_router(layer, 100);
  const at::Tensor h = randn({kT, kD}, 21);
  const at::Tensor noise = randn({kT, kE}, 22);

  for (bool training : {false, true}) {
    SCOPED_TRACE(training ? "training" : "eval");
    layer->train(training);
    MoEOutput out = layer->forward(h, with_noise(noise));
    ASSERT_EQ(out.output.sizes(), h.sizes());
    EXPECT_EQ(out.output.scalar_type(), at::kDouble);
    ASSERT_EQ(out.routing.expert_ids.sizes(), (std::vector<int64_t>{kT, k}));
    ASSERT_EQ(out.routing.gates.sizes(), (std::vector<int64_t>{kT, k}));

    // The router's choice, recomputed independently from its parameters.
    ExpectedRouting want = expected_routing(layer, h, noise);
    EXPECT_TRUE(at::equal(out.routing.expert_ids, want.expert_ids))
        << out.routing.expert_ids << "\n" << want.expert_ids;
    EXPECT_TRUE(close(out.routing.gates, want.gates));
    EXPECT_TRUE(close(out.routing.scores, want.scores));
    if (k > 1 && cfg.gate == GateKind::kSoftmax) {
      EXPECT_TRUE(close(out.routing.gates.sum(1), at::ones({kT}, at::kDouble)));  // GShard renorm
    }

    // The layer's output, against the per-token sum.
    EXPECT_TRUE(close(out.output, naive_reference(layer, h, want.expert_ids, want.gates)));
    EXPECT_EQ(out.plan.capacity, -1);
    EXPECT_EQ(out.plan.n_kept(), kT * k);
  }
}

std::string layer_param_name(const ::testing::TestParamInfo<LayerParam>& info) {
  return std::string(std::get<0>(info.param).label) + "_k" +
         std::to_string(std::get<1>(info.param)) + "_depth" +
         std::to_string(std::get<2>(info.param)) + "_" + to_string(std::get<3>(info.param));
}

INSTANTIATE_TEST_SUITE_P(MoELayer, MoELayerReference,
                         ::testing::Combine(::testing::ValuesIn(kRouterCfgs),
                                            ::testing::Values<int64_t>(1, 2),
                                            ::testing::Values<int64_t>(1, 3),
                                            ::testing::Values(Activation::kGelu,
                                                              Activation::kRelu)),
                         layer_param_name);

TEST(MoELayerReferenceExtra, TopThreeOfFiveAndUnnormalisedTopK) {
  for (bool normalize : {true, false}) {
    SCOPED_TRACE(normalize ? "normalize_topk" : "no normalize_topk");
    MoELayer layer = make_layer(MoELayerOptions(kD, kFF, 5).top_k(3).normalize_topk(normalize).seed(5));
    layer->eval();
    const at::Tensor h = randn({kT, kD}, 31);
    MoEOutput out = layer->forward(h);
    ExpectedRouting want = expected_routing(layer, h);
    EXPECT_TRUE(at::equal(out.routing.expert_ids, want.expert_ids));
    EXPECT_TRUE(close(out.routing.gates, want.gates));
    if (!normalize) {
      EXPECT_TRUE((out.routing.gates.sum(1) < 1.0).all().item<bool>());
    }
    EXPECT_TRUE(close(out.output, naive_reference(layer, h, want.expert_ids, want.gates)));
  }
}

TEST(MoELayerReferenceExtra, GradientsMatchNaiveReference) {
  // Backward through the grouped path equals backward through the per-token reference.
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE).top_k(2).expert_depth(2).seed(8));
  layer->eval();
  at::Tensor h = randn({kT, kD}, 32).requires_grad_();
  at::Tensor go = randn({kT, kD}, 33);
  MoEOutput out = layer->forward(h);
  auto params = layer->parameters();
  std::vector<at::Tensor> inputs = params;
  inputs.push_back(h);
  auto g_layer = torch::autograd::grad({(out.output * go).sum()}, inputs, {},
                                       /*retain_graph=*/true);

  at::Tensor y = at::zeros_like(h);
  for (int64_t t = 0; t < kT; ++t) {
    for (int64_t j = 0; j < 2; ++j) {
      y = y.index_add(0, at::tensor({t}, at::kLong),
                      out.routing.gates.narrow(0, t, 1).narrow(1, j, 1) *
                          layer->experts()->forward_expert(
                              out.routing.expert_ids[t][j].item<int64_t>(), h.narrow(0, t, 1)));
    }
  }
  auto g_ref = torch::autograd::grad({(y * go).sum()}, inputs, {}, c10::nullopt, false,
                                     /*allow_unused=*/true);
  ASSERT_EQ(g_layer.size(), g_ref.size());
  for (size_t i = 0; i < g_layer.size(); ++i) {
    ASSERT_TRUE(g_ref[i].defined());
    EXPECT_TRUE(close(g_layer[i], g_ref[i])) << "input " << i;
  }
}

// ---- capacity mode (SPEC §4, §8) --------------------------------------------------------------

TEST(MoELayerCapacity, DropsInFillOrderAndMatchesReference) {
  struct Cfg {
    const char* router;
    int64_t k;
    GateKind gate;
  };
  const int64_t T = 8;
  for (const Cfg& c : {Cfg{"dot", 2, GateKind::kSoftmax}, Cfg{"xmoe", 1, GateKind::kSigmoid},
                       Cfg{"noisy_topk", 2, GateKind::kSoftmax}, Cfg{"xmoe", 2, GateKind::kSoftmax}}) {
    SCOPED_TRACE(std::string(c.router) + " k=" + std::to_string(c.k));
    const double cf = 0.5;
    MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE)
                                    .router(c.router)
                                    .gate(c.gate)
                                    .top_k(c.k)
                                    .capacity_factor(cf)
                                    .seed(9));
    if (std::string(c.router) == "noisy_topk") randomize_noisy_router(layer, 200);
    layer->train();
    const at::Tensor h = randn({T, kD}, 41);
    const at::Tensor noise = randn({T, kE}, 42);
    MoEOutput out = layer->forward(h, with_noise(noise));

    const int64_t capacity = static_cast<int64_t>(std::ceil(cf * c.k * T / kE));
    EXPECT_EQ(out.plan.capacity, capacity);
    ExpectedRouting want = expected_routing(layer, h, noise);
    ASSERT_TRUE(at::equal(out.routing.expert_ids, want.expert_ids));
    at::Tensor kept = expected_kept(out.routing.expert_ids, kE, capacity);
    EXPECT_TRUE(at::equal(out.plan.kept, kept)) << out.plan.kept << "\n" << kept;

    const int64_t n_dropped = (T * c.k) - kept.sum().item<int64_t>();
    EXPECT_GT(n_dropped, 0);  // 8·k slots, 4 experts of capacity k: at least 4·k dropped
    EXPECT_EQ(out.plan.n_dropped, n_dropped);
    EXPECT_DOUBLE_EQ(out.routing.stats.dropped_fraction,
                     static_cast<double>(n_dropped) / static_cast<double>(T * c.k));
    // Gates: renormalised before dropping (SPEC §8), then zero for the dropped slots.
    EXPECT_TRUE(close(out.routing.gates, want.gates * kept.to(at::kDouble)));
    EXPECT_TRUE(out.routing.gates.masked_select(kept.logical_not()).eq(0).all().item<bool>());
    EXPECT_TRUE(out.routing.gates.masked_select(kept).gt(0).all().item<bool>());
    // tokens_per_expert counts before dropping.
    EXPECT_EQ(out.routing.stats.tokens_per_expert.sum().item<int64_t>(), T * c.k);

    EXPECT_TRUE(close(out.output, naive_reference(layer, h, out.routing.expert_ids, out.routing.gates)));
    // A token with every slot dropped gets exactly zero output (the residual carries it).
    for (int64_t t = 0; t < T; ++t) {
      if (!kept[t].any().item<bool>()) {
        EXPECT_TRUE(out.output[t].eq(0).all().item<bool>()) << "token " << t;
      }
    }
  }
}

TEST(MoELayerCapacity, EvalCapacityFactorUsedInEvalMode) {
  const int64_t T = 8;
  const at::Tensor h = randn({T, kD}, 43);
  auto opts = [] { return MoELayerOptions(kD, kFF, kE).top_k(2).capacity_factor(0.5).seed(10); };

  {  // eval factor 1.0: C = ceil(1·2·8/4) = 4 in eval, ceil(0.5·2·8/4) = 2 in training
    MoELayer layer = make_layer(opts().eval_capacity_factor(1.0));
    layer->train();
    MoEOutput tr = layer->forward(h);
    EXPECT_EQ(tr.plan.capacity, 2);
    layer->eval();
    MoEOutput ev = layer->forward(h);
    EXPECT_EQ(ev.plan.capacity, 4);
    at::Tensor kept = expected_kept(ev.routing.expert_ids, kE, 4);
    EXPECT_TRUE(at::equal(ev.plan.kept, kept));
    EXPECT_DOUBLE_EQ(ev.routing.stats.dropped_fraction,
                     1.0 - kept.sum().item<double>() / static_cast<double>(T * 2));
    EXPECT_LT(ev.routing.stats.dropped_fraction, tr.routing.stats.dropped_fraction);
    EXPECT_TRUE(close(ev.output, naive_reference(layer, h, ev.routing.expert_ids, ev.routing.gates)));
  }
  {  // eval factor 0: dropless in eval
    MoELayer layer = make_layer(opts().eval_capacity_factor(0.0));
    layer->eval();
    MoEOutput ev = layer->forward(h);
    EXPECT_EQ(ev.plan.capacity, -1);
    EXPECT_DOUBLE_EQ(ev.routing.stats.dropped_fraction, 0.0);
    EXPECT_TRUE(ev.plan.kept.all().item<bool>());
  }
  {  // unset: eval uses capacity_factor
    MoELayer layer = make_layer(opts());
    layer->eval();
    EXPECT_EQ(layer->forward(h).plan.capacity, 2);
  }
  {  // dropless training, capacity in eval
    MoELayer layer = make_layer(opts().capacity_factor(0.0).eval_capacity_factor(0.5));
    layer->train();
    EXPECT_EQ(layer->forward(h).plan.capacity, -1);
    layer->eval();
    EXPECT_EQ(layer->forward(h).plan.capacity, 2);
  }
}

TEST(MoELayerCapacity, CapacityOutputDiffersFromDroplessOnlyWhereSlotsDropped) {
  const int64_t T = 8;
  const at::Tensor h = randn({T, kD}, 44);
  MoELayer capped = make_layer(MoELayerOptions(kD, kFF, kE).top_k(2).capacity_factor(0.5).seed(12));
  MoELayer dropless = make_layer(MoELayerOptions(kD, kFF, kE).top_k(2).seed(12));
  MoEOutput a = capped->forward(h);
  MoEOutput b = dropless->forward(h);
  ASSERT_TRUE(at::equal(a.routing.expert_ids, b.routing.expert_ids));
  for (int64_t t = 0; t < T; ++t) {
    if (a.plan.kept[t].all().item<bool>()) {
      EXPECT_TRUE(close(a.output[t], b.output[t])) << "token " << t;
    } else {
      EXPECT_FALSE(at::allclose(a.output[t], b.output[t])) << "token " << t;
    }
  }
}

// ---- an expert with no token -----------------------------------------------------------------

TEST(MoELayerEmptyExpert, MatchesReferenceAndGetsNoGradient) {
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE).top_k(2).expert_depth(3).seed(13));
  {
    at::NoGradGuard no_grad;
    // Positive tokens and a very negative weight row: s_3 = −5·Σh is always the lowest score.
    param(layer, "router.weight")[3].fill_(-5.0);
  }
  layer->train();
  at::Tensor h = (randn({kT, kD}, 51).abs() + 0.1).requires_grad_();
  MoEOutput out = layer->forward(h);
  EXPECT_EQ(out.routing.stats.tokens_per_expert[3].item<int64_t>(), 0);
  EXPECT_EQ(out.plan.tokens_per_expert[3].item<int64_t>(), 0);
  EXPECT_EQ(out.plan.offsets[3], out.plan.offsets[4]);
  EXPECT_FALSE(out.routing.expert_ids.eq(3).any().item<bool>());
  EXPECT_TRUE(close(out.output, naive_reference(layer, h.detach(), out.routing.expert_ids,
                                                out.routing.gates)));

  (out.output.pow(2).sum() + out.aux_loss).backward();
  int64_t checked = 0;
  for (const auto& item : layer->experts()->named_parameters()) {
    const at::Tensor& g = item.value().grad();
    if (!g.defined()) continue;  // undefined is as good as zero
    ++checked;
    EXPECT_TRUE(g[3].eq(0).all().item<bool>()) << item.key() << " grad of expert 3: " << g[3];
    EXPECT_GT(g.abs().sum().item<double>(), 0.0) << item.key() << ": the used experts learn";
  }
  EXPECT_GT(checked, 0);
  EXPECT_TRUE(h.grad().defined());
}

// ---- padding mask ------------------------------------------------------------------------------

TEST(MoELayerMask, PaddingRowsZeroRealRowsEqualUnpaddedRun) {
  struct Cfg {
    const char* router;
    int64_t k;
    double cf;
    bool training;
  };
  const at::Tensor mask = at::tensor(std::vector<int64_t>{1, 0, 1, 1, 0, 1, 1}, at::kLong).to(at::kBool);
  const at::Tensor real_idx = mask.nonzero().reshape({-1});
  const at::Tensor pad_idx = mask.logical_not().nonzero().reshape({-1});
  const int64_t n_real = real_idx.size(0);
  ASSERT_EQ(n_real, 5);
  for (const Cfg& c : {Cfg{"dot", 2, 0.5, true}, Cfg{"noisy_topk", 2, 0.0, true},
                       Cfg{"xmoe", 1, 0.0, false}, Cfg{"xmoe", 2, 1.0, true}}) {
    SCOPED_TRACE(std::string(c.router) + " k=" + std::to_string(c.k) + " cf=" + std::to_string(c.cf));
    MoELayer layer = make_layer(
        MoELayerOptions(kD, kFF, kE).router(c.router).top_k(c.k).capacity_factor(c.cf).seed(14));
    if (std::string(c.router) == "noisy_topk") randomize_noisy_router(layer, 300);
    layer->train(c.training);
    at::Tensor h = randn({kT, kD}, 61);
    {
      // Padding rows with large values must not affect anything.
      at::NoGradGuard no_grad;
      h.index_fill_(0, pad_idx, 1e3);
    }
    const at::Tensor noise = randn({n_real, kE}, 62);  // [T_real, E]
    const at::Tensor h_real = h.index_select(0, real_idx);

    MoEOutput padded = layer->forward(h, with_mask(mask, noise));
    MoEOutput plain = layer->forward(h_real, with_noise(noise));

    ASSERT_EQ(padded.output.sizes(), h.sizes());
    EXPECT_TRUE(padded.output.index_select(0, pad_idx).eq(0).all().item<bool>());
    EXPECT_TRUE(close(padded.output.index_select(0, real_idx), plain.output));
    EXPECT_TRUE(at::equal(padded.routing.expert_ids, plain.routing.expert_ids));
    EXPECT_EQ(padded.routing.expert_ids.size(0), n_real);
    // Statistics and capacity count real tokens only.
    EXPECT_EQ(padded.plan.n_tokens, n_real);
    EXPECT_EQ(padded.plan.capacity, expert_capacity(c.cf, n_real, c.k, kE));
    EXPECT_EQ(padded.routing.stats.tokens_per_expert.sum().item<int64_t>(), n_real * c.k);
    EXPECT_TRUE(at::equal(padded.routing.stats.tokens_per_expert, plain.routing.stats.tokens_per_expert));
    EXPECT_DOUBLE_EQ(padded.routing.stats.dropped_fraction, plain.routing.stats.dropped_fraction);
    EXPECT_NEAR(padded.routing.stats.router_entropy, plain.routing.stats.router_entropy, 1e-12);
    EXPECT_TRUE(close(padded.aux_loss, plain.aux_loss));
    EXPECT_TRUE(close(padded.routing.aux.at("balance"), plain.routing.aux.at("balance")));
  }
}

TEST(MoELayerMask, AllRealMaskEqualsNoMask) {
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE).top_k(2).seed(15));
  const at::Tensor h = randn({kT, kD}, 63);
  MoEOutput a = layer->forward(h, with_mask(at::ones({kT}, at::kBool)));
  MoEOutput b = layer->forward(h);
  EXPECT_TRUE(close(a.output, b.output));
}

TEST(MoELayerMask, AllPaddingBatchGivesZeroOutput) {
  // A batch that is entirely padding routes nothing: zero output, empty statistics, finite aux.
  for (const char* router : {"dot", "noisy_topk", "xmoe"}) {
    for (bool dbl : {true, false}) {
      SCOPED_TRACE(std::string(router) + (dbl ? " float64" : " float32 (fast path)"));
      MoELayer layer(MoELayerOptions(kD, kFF, kE).router(router).top_k(2).capacity_factor(1.0));
      if (dbl) layer->to(at::kDouble);
      layer->train();
      const at::Tensor h = randn({3, kD}, 65).to(dbl ? at::kDouble : at::kFloat);
      MoEOutput out;
      ASSERT_NO_THROW(out = layer->forward(h, with_mask(at::zeros({3}, at::kBool),
                                                         at::zeros({0, kE}, h.options()))));
      EXPECT_EQ(out.output.sizes(), h.sizes());
      EXPECT_TRUE(out.output.eq(0).all().item<bool>());
      EXPECT_EQ(out.routing.stats.tokens_per_expert.sum().item<int64_t>(), 0);
      EXPECT_DOUBLE_EQ(out.routing.stats.dropped_fraction, 0.0);
      EXPECT_TRUE(std::isfinite(out.aux_loss.item<double>()));
    }
  }
}

// `computed` (the encoder's pruned last layer): the experts run only for those tokens; their
// output rows, every statistic and the aux loss equal the full run's, the other rows are 0.
TEST(MoELayerMask, ComputedTokensEqualFullRunOthersZero) {
  const at::Tensor mask = at::tensor(std::vector<int64_t>{1, 0, 1, 1, 0, 1, 1}, at::kLong).to(at::kBool);
  const at::Tensor computed =
      at::tensor(std::vector<int64_t>{1, 1, 0, 1, 0, 0, 1}, at::kLong).to(at::kBool);
  const at::Tensor used = (computed & mask).nonzero().reshape({-1});   // t0, t3, t6
  const at::Tensor unused = (~(computed & mask)).nonzero().reshape({-1});
  for (bool dbl : {true, false}) {
    for (double cf : {0.0, 0.75}) {
      SCOPED_TRACE(std::string(dbl ? "float64 (reference path)" : "float32 (fast path)") +
                   " cf=" + std::to_string(cf));
      MoELayer layer(MoELayerOptions(kD, kFF, kE).top_k(2).capacity_factor(cf).seed(16));
      layer->to(dbl ? at::kDouble : at::kFloat);
      const at::Tensor h = randn({kT, kD}, 66).to(dbl ? at::kDouble : at::kFloat).requires_grad_();
      MoEInputs some = with_mask(mask);
      some.computed = computed;
      MoEOutput full = layer->forward(h, with_mask(mask));
      MoEOutput part = layer->forward(h, some);
      EXPECT_EQ(part.routing.stats.path, dbl ? "reference" : "fast");
      const double tol = dbl ? 1e-12 : 1e-6;
      EXPECT_TRUE(close(part.output.index_select(0, used), full.output.index_select(0, used), tol, tol));
      EXPECT_TRUE(part.output.index_select(0, unused).eq(0).all().item<bool>());
      EXPECT_TRUE(at::equal(part.routing.gates, full.routing.gates));
      EXPECT_TRUE(at::equal(part.routing.stats.tokens_per_expert, full.routing.stats.tokens_per_expert));
      EXPECT_DOUBLE_EQ(part.routing.stats.dropped_fraction, full.routing.stats.dropped_fraction);
      EXPECT_TRUE(close(part.aux_loss, full.aux_loss, tol, tol));
      EXPECT_GT(part.plan.n_skipped(), 0);
      EXPECT_LT(part.plan.n_rows(), full.plan.n_rows());

      // Gradients of a loss on the used rows plus the aux loss: identical to the full run.
      auto grads = [&](const MoEOutput& out) {
        at::Tensor loss = out.output.index_select(0, used).pow(2).sum() + out.aux_loss;
        std::vector<at::Tensor> inputs = {h};
        for (const auto& p : layer->parameters()) inputs.push_back(p);
        return torch::autograd::grad({loss}, inputs, {}, /*retain_graph=*/true, false,
                                     /*allow_unused=*/true);
      };
      const auto g_full = grads(full), g_part = grads(part);
      for (size_t i = 0; i < g_full.size(); ++i) {
        SCOPED_TRACE("gradient " + std::to_string(i));
        if (!g_full[i].defined()) continue;
        const at::Tensor gp = g_part[i].defined() ? g_part[i] : at::zeros_like(g_full[i]);
        EXPECT_TRUE(close(gp, g_full[i], tol, tol));
      }
    }
  }
}

TEST(MoELayerMask, WrongMaskShapeThrows) {
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE));
  EXPECT_ANY_THROW(layer->forward(randn({kT, kD}, 64), with_mask(at::ones({kT + 1}, at::kBool))));
}

// ---- frozen routing (SPEC §5) ---------------------------------------------------------------

void check_frozen_fine_tuning(const MoELayerOptions& options) {
  MoELayer layer = make_layer(options);
  layer->train();
  at::Tensor w_in = (0.5 * randn({kD, kD}, 71)).requires_grad_();
  const at::Tensor x = randn({kT, kD}, 72);

  layer->freeze_routing();
  EXPECT_TRUE(layer->routing_frozen());
  std::map<std::string, at::Tensor> before;
  for (const auto& item : layer->named_parameters()) {
    EXPECT_FALSE(item.value().requires_grad()) << item.key();
    before[item.key()] = item.value().detach().clone();
  }
  ASSERT_FALSE(before.empty());
  const at::Tensor w_in_before = w_in.detach().clone();

  // The optimizer holds every parameter (as a fine-tuning script would) with weight decay on.
  std::vector<at::Tensor> params = layer->parameters();
  params.push_back(w_in);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    MoEOutput out = layer->forward(x.mm(w_in));
    ASSERT_EQ(out.routing.aux.count("balance"), 1u);
    const double balance = out.routing.aux.at("balance").item<double>();
    EXPECT_TRUE(std::isfinite(balance));
    EXPECT_GT(balance, 0.0);
    EXPECT_TRUE(std::isfinite(out.aux_loss.item<double>()));
    (out.output.pow(2).mean() + out.aux_loss).backward();
    opt.step();
  }
  for (const auto& item : layer->named_parameters()) {
    EXPECT_TRUE(at::equal(item.value(), before.at(item.key()))) << item.key() << " changed";
    EXPECT_FALSE(item.value().grad().defined()) << item.key();
  }
  EXPECT_FALSE(at::equal(w_in.detach(), w_in_before)) << "W_in must still train";

  // The balance loss alone still sends a gradient to the layer input.
  opt.zero_grad();
  MoEOutput out = layer->forward(x.mm(w_in));
  out.aux_loss.backward();
  ASSERT_TRUE(w_in.grad().defined());
  EXPECT_GT(w_in.grad().abs().sum().item<double>(), 0.0);
  opt.zero_grad();
  layer->forward(x.mm(w_in)).routing.aux.at("balance").backward();
  ASSERT_TRUE(w_in.grad().defined());
  EXPECT_GT(w_in.grad().abs().sum().item<double>(), 0.0);

  layer->freeze_routing(false);
  EXPECT_FALSE(layer->routing_frozen());
  for (const auto& item : layer->named_parameters()) {
    EXPECT_TRUE(item.value().requires_grad()) << item.key();
  }
}

TEST(MoELayerFrozen, DotRouterParametersBitIdenticalAndBalanceStillFlows) {
  check_frozen_fine_tuning(MoELayerOptions(kD, kFF, kE).top_k(2).seed(16));
}

TEST(MoELayerFrozen, XMoERouterParametersBitIdenticalAndBalanceStillFlows) {
  check_frozen_fine_tuning(MoELayerOptions(kD, kFF, kE).router("xmoe").expert_depth(2).seed(17));
}

TEST(MoELayerFrozen, XMoESigmoidRouterParametersBitIdentical) {
  check_frozen_fine_tuning(
      MoELayerOptions(kD, kFF, kE).router("xmoe").gate(GateKind::kSigmoid).top_k(2).seed(18));
}

TEST(MoELayerFrozen, UnfreezeKeepsFixedTemperatureFixed) {
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE).router("xmoe_torchscale").seed(19));
  EXPECT_FALSE(param(layer, "router.temperature").requires_grad());
  EXPECT_DOUBLE_EQ(param(layer, "router.temperature").item<double>(), 1.0);
  layer->freeze_routing(true);
  for (const auto& item : layer->named_parameters()) EXPECT_FALSE(item.value().requires_grad());
  layer->freeze_routing(false);
  for (const auto& item : layer->named_parameters()) {
    EXPECT_EQ(item.value().requires_grad(), item.key() != "router.temperature") << item.key();
  }
  // The paper's router learns τ, and gets it back after unfreezing.
  MoELayer xmoe = make_layer(MoELayerOptions(kD, kFF, kE).router("xmoe").seed(19));
  xmoe->freeze_routing(true);
  xmoe->freeze_routing(false);
  EXPECT_TRUE(param(xmoe, "router.temperature").requires_grad());
}

// ---- determinism -------------------------------------------------------------------------------

TEST(MoELayerDeterminism, SameSeedGivesIdenticalParametersAndOutputs) {
  for (const char* router : {"dot", "noisy_topk", "xmoe", "xmoe_torchscale"}) {
    SCOPED_TRACE(router);
    auto opts = MoELayerOptions(kD, kFF, kE).router(router).top_k(2).expert_depth(2).jitter(0.1).seed(42);
    MoELayer a = make_layer(opts);
    MoELayer b = make_layer(opts);
    auto pa = a->named_parameters();
    auto pb = b->named_parameters();
    ASSERT_EQ(pa.keys(), pb.keys());
    for (const auto& item : pa) {
      EXPECT_TRUE(at::equal(item.value(), pb[item.key()])) << item.key();
    }
    const at::Tensor h = randn({kT, kD}, 81);
    for (bool training : {true, false}) {
      a->train(training);
      b->train(training);
      MoEOutput oa = a->forward(h);  // training: noise and jitter from the seeded stream
      MoEOutput ob = b->forward(h);
      EXPECT_TRUE(at::equal(oa.output, ob.output)) << (training ? "training" : "eval");
      EXPECT_TRUE(at::equal(oa.routing.expert_ids, ob.routing.expert_ids));
    }
  }
}

TEST(MoELayerDeterminism, DifferentSeedGivesDifferentParameters) {
  for (const char* router : {"dot", "xmoe"}) {
    SCOPED_TRACE(router);
    MoELayer a = make_layer(MoELayerOptions(kD, kFF, kE).router(router).expert_depth(2).seed(1));
    MoELayer b = make_layer(MoELayerOptions(kD, kFF, kE).router(router).expert_depth(2).seed(2));
    auto pb = b->named_parameters();
    for (const auto& item : a->named_parameters()) {
      const std::string& key = item.key();
      const bool constant_init = key.find("ln_") != std::string::npos || key == "router.temperature";
      if (constant_init) {
        EXPECT_TRUE(at::equal(item.value(), pb[key])) << key;  // ones / zeros / τ₀ by design
      } else {
        EXPECT_FALSE(at::equal(item.value(), pb[key])) << key;
      }
    }
    const at::Tensor h = randn({kT, kD}, 82);
    EXPECT_FALSE(at::allclose(a->forward(h).output, b->forward(h).output));
  }
  // Experts also differ between seeds of a noisy_topk layer (its router is zero-initialised).
  MoELayer a = make_layer(MoELayerOptions(kD, kFF, kE).router("noisy_topk").top_k(2).seed(1));
  MoELayer b = make_layer(MoELayerOptions(kD, kFF, kE).router("noisy_topk").top_k(2).seed(2));
  EXPECT_FALSE(at::equal(param(a, "experts.0.w1"), param(b, "experts.0.w1")));
  EXPECT_TRUE(param(a, "router.w_gate").eq(0).all().item<bool>());
}

TEST(MoELayerDeterminism, RandomnessOnlyInTrainingAndFollowsReseed) {
  struct Cfg {
    const char* label;
    const char* router;
    SecondExpertPolicy policy;
  };
  const int64_t T = 16;
  const at::Tensor h = randn({T, kD}, 83);
  for (const Cfg& c : {Cfg{"noisy_topk", "noisy_topk", SecondExpertPolicy::kAll},
                       Cfg{"dot random", "dot", SecondExpertPolicy::kRandom},
                       Cfg{"dot sampling", "dot", SecondExpertPolicy::kSampling},
                       Cfg{"xmoe sampling", "xmoe", SecondExpertPolicy::kSampling}}) {
    SCOPED_TRACE(c.label);
    MoELayer layer = make_layer(
        MoELayerOptions(kD, kFF, kE).router(c.router).top_k(2).second_expert_policy(c.policy).seed(20));
    if (std::string(c.router) == "noisy_topk") randomize_noisy_router(layer, 400);

    layer->eval();
    MoEOutput e1 = layer->forward(h);
    layer->router().reseed(12345);
    MoEOutput e2 = layer->forward(h);
    EXPECT_TRUE(at::equal(e1.output, e2.output));
    EXPECT_TRUE(at::equal(e1.routing.expert_ids, e2.routing.expert_ids));
    EXPECT_TRUE(e1.routing.active.all().item<bool>());
    // Evaluation is the plain top-k of the clean logits.
    ExpectedRouting want = expected_routing(layer, h);
    EXPECT_TRUE(at::equal(e1.routing.expert_ids, want.expert_ids));
    EXPECT_TRUE(close(e1.routing.gates, want.gates));

    layer->train();
    layer->router().reseed(1);
    MoEOutput t1 = layer->forward(h);
    layer->router().reseed(2);
    MoEOutput t2 = layer->forward(h);
    layer->router().reseed(1);
    MoEOutput t3 = layer->forward(h);
    // Same reseed, same training forward (X-MoE re-normalises its expert embeddings in place
    // before each training forward, which may move them by an ulp: compare to 1e-12).
    EXPECT_TRUE(at::equal(t1.routing.expert_ids, t3.routing.expert_ids));
    EXPECT_TRUE(close(t1.output, t3.output)) << "same reseed, same training forward";
    EXPECT_FALSE(at::allclose(t1.output, t2.output)) << "different reseed, different forward";
    EXPECT_TRUE(close(t1.output, naive_reference(layer, h, t1.routing.expert_ids, t1.routing.gates)));
    if (c.policy == SecondExpertPolicy::kRandom) {
      // Dropped second experts: inactive, zero gate, first gate renormalised to 1.
      at::Tensor inactive = t1.routing.active.logical_not();
      EXPECT_TRUE(inactive.any().item<bool>());
      EXPECT_TRUE(t1.routing.gates.masked_select(inactive).eq(0).all().item<bool>());
      EXPECT_EQ(t1.routing.stats.tokens_per_expert.sum().item<int64_t>(),
                t1.routing.active.sum().item<int64_t>());
      EXPECT_EQ(t1.plan.n_active, t1.routing.active.sum().item<int64_t>());
    }
  }
}

TEST(MoELayerDeterminism, SuppliedNoiseMakesTrainingReproducible) {
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE).router("noisy_topk").top_k(2).seed(21));
  randomize_noisy_router(layer, 500);
  layer->train();
  const at::Tensor h = randn({kT, kD}, 84);
  const at::Tensor noise = randn({kT, kE}, 85);
  layer->router().reseed(1);
  MoEOutput a = layer->forward(h, with_noise(noise));
  layer->router().reseed(2);
  MoEOutput b = layer->forward(h, with_noise(noise));
  EXPECT_TRUE(at::equal(a.output, b.output));
  EXPECT_TRUE(close(a.routing.scores, expected_routing(layer, h, noise).scores));
  // The noise changes the routing compared with evaluation (scores = clean logits).
  layer->eval();
  EXPECT_FALSE(at::allclose(layer->forward(h).routing.scores, a.routing.scores));
  // Wrong noise shape is rejected.
  layer->train();
  EXPECT_ANY_THROW(layer->forward(h, with_noise(randn({kT, kE + 1}, 86))));
}

// ---- bad options and inputs ------------------------------------------------------------------

TEST(MoELayerOptionsValidation, BadOptionsThrowNamingTheOption) {
  auto build = [](MoELayerOptions o) { return [o] { MoELayer layer(o); }; };
  const auto base = [] { return MoELayerOptions(kD, kFF, kE); };
  expect_invalid(build(base().top_k(5)), {"top_k", "5", "n_expert"});
  expect_invalid(build(base().top_k(0)), {"top_k", "0", "n_expert"});
  expect_invalid(build(base().router("xmoe").d_e(0)), {"d_e", ">= 1"});
  expect_invalid(build(base().capacity_factor(-1.0)), {"capacity_factor", ">= 0"});
  expect_invalid(build(base().eval_capacity_factor(-0.5)), {"eval_capacity_factor", ">= 0"});
  expect_invalid(build(base().capacity_factor(std::numeric_limits<double>::quiet_NaN())),
                 {"capacity_factor"});
  expect_invalid(build(base().router("foo")),
                 {"router", "foo", "dot", "noisy_topk", "xmoe", "xmoe_torchscale"});
  expect_invalid(build(base().expert_depth(0)), {"expert_depth", ">= 1"});
  expect_invalid(build(MoELayerOptions(kD, 0, kE)), {"d_ff", ">= 1"});
  expect_invalid(build(MoELayerOptions(0, kFF, kE)), {"d_model", ">= 1"});
  expect_invalid(build(MoELayerOptions(kD, kFF, 0)), {"n_expert", ">= 1"});
  expect_invalid(build(base().router("noisy_topk").top_k(2).second_expert_policy(
                     SecondExpertPolicy::kRandom)),
                 {"second_expert_policy", "noisy_topk", "all"});
  expect_invalid(build(base().balance_coef(-0.1)), {"balance_coef"});
  // The layer name appears, so a deep model's bad layer can be found.
  expect_invalid(build(base().top_k(9).name("encoder.layer3.moe")), {"encoder.layer3.moe"});

  expect_invalid([] { parse_gate_kind("tanh"); }, {"gate", "tanh", "softmax", "sigmoid"});
  expect_invalid([] { parse_activation("swish"); }, {"activation", "swish", "gelu", "relu"});
  expect_invalid([] { parse_second_expert_policy("top2"); },
                 {"second_expert_policy", "top2", "all", "random", "sampling"});
  EXPECT_EQ(parse_gate_kind("sigmoid"), GateKind::kSigmoid);
  EXPECT_EQ(parse_activation("relu"), Activation::kRelu);
  EXPECT_EQ(parse_second_expert_policy("sampling"), SecondExpertPolicy::kSampling);

  // Valid edge cases construct fine.
  EXPECT_NO_THROW(MoELayer(base().top_k(kE)));
  EXPECT_NO_THROW(MoELayer(base().router("xmoe").d_e(1)));
}

TEST(MoELayerOptionsValidation, WrongInputShapeOrTypeThrows) {
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE));
  expect_invalid([&] { layer->forward(randn({kT, kD + 1}, 91)); }, {"d_model", "6"});
  expect_invalid([&] { layer->forward(randn({kD}, 92)); }, {"d_model"});
  expect_invalid([&] { layer->forward(randn({2, kT, kD}, 93)); }, {"d_model"});
  expect_invalid([&] { layer->forward(at::ones({kT, kD}, at::kLong)); }, {"floating point"});
}

TEST(MoELayerOptionsValidation, NonFiniteInputThrowsWithCount) {
  for (const char* router : {"dot", "noisy_topk", "xmoe"}) {
    SCOPED_TRACE(router);
    MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE).router(router).name("enc.moe3"));
    at::Tensor h = randn({kT, kD}, 94);
    h[1][2] = std::numeric_limits<double>::quiet_NaN();
    h[4][0] = std::numeric_limits<double>::infinity();
    h[5][5] = -std::numeric_limits<double>::infinity();
    expect_invalid([&] { layer->forward(h); }, {"non-finite", "3 non-finite", "enc.moe3"});
  }
}

TEST(MoELayerOptionsValidation, CheckFiniteOffLetsNaNThrough) {
  MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE).top_k(2).check_finite(false));
  at::Tensor h = randn({kT, kD}, 95);
  h[2][1] = std::numeric_limits<double>::quiet_NaN();
  MoEOutput out;
  ASSERT_NO_THROW(out = layer->forward(h));
  // One bad token makes its E router scores non-finite; they are counted, not hidden.
  EXPECT_EQ(out.routing.stats.nonfinite_count, kE);
  // Dropless experts work row by row: the other tokens' outputs stay finite.
  for (int64_t t = 0; t < kT; ++t) {
    if (t == 2) continue;
    EXPECT_TRUE(at::isfinite(out.output[t]).all().item<bool>()) << "token " << t;
  }
}

// ---- statistics ------------------------------------------------------------------------------

TEST(MoELayerStats, CountsEntropyPathAndWeightedAux) {
  struct Cfg {
    const char* router;
    int64_t k;
    GateKind gate;
  };
  const at::Tensor h = randn({kT, kD}, 101);
  const at::Tensor noise = randn({kT, kE}, 102);
  for (const Cfg& c : {Cfg{"dot", 1, GateKind::kSoftmax}, Cfg{"dot", 2, GateKind::kSigmoid},
                       Cfg{"noisy_topk", 2, GateKind::kSoftmax}, Cfg{"xmoe", 2, GateKind::kSoftmax},
                       Cfg{"xmoe", 1, GateKind::kSigmoid}, Cfg{"xmoe_torchscale", 1, GateKind::kSoftmax}}) {
    MoELayer layer = make_layer(MoELayerOptions(kD, kFF, kE)
                                    .router(c.router)
                                    .top_k(c.k)
                                    .gate(c.gate)
                                    .balance_coef(0.1)
                                    .importance_coef(0.2)
                                    .load_coef(0.3)
                                    .z_loss_coef(0.05)
                                    .seed(22));
    if (std::string(c.router) == "noisy_topk") randomize_noisy_router(layer, 600);
    for (bool training : {false, true}) {
      SCOPED_TRACE(std::string(c.router) + " k=" + std::to_string(c.k) +
                   (training ? " training" : " eval"));
      layer->train(training);
      MoEOutput out = layer->forward(h, with_noise(noise));
      const RoutingStats& s = out.routing.stats;
      EXPECT_EQ(s.path, "reference");
      EXPECT_EQ(s.nonfinite_count, 0);
      EXPECT_DOUBLE_EQ(s.dropped_fraction, 0.0);
      ASSERT_EQ(s.tokens_per_expert.sizes(), (std::vector<int64_t>{kE}));
      EXPECT_EQ(s.tokens_per_expert.sum().item<int64_t>(), kT * c.k);
      EXPECT_TRUE(at::equal(s.tokens_per_expert,
                            at::bincount(out.routing.expert_ids.reshape({-1}), {}, kE)));
      EXPECT_TRUE(at::equal(s.tokens_per_expert, out.plan.tokens_per_expert));

      // Entropy of the gate distribution, recomputed: softmax(gate logits), or for the noisy
      // router the sparse G(x).
      at::Tensor p;
      if (std::string(c.router) == "noisy_topk") {
        p = at::zeros({kT, kE}, at::kDouble).scatter(1, out.routing.expert_ids, out.routing.gates.detach());
      } else {
        p = at::softmax(out.routing.gate_logits.detach(), 1);
      }
      const double entropy =
          -at::where(p > 0, p * at::log(p), at::zeros_like(p)).sum(1).mean().item<double>();
      EXPECT_NEAR(s.router_entropy, entropy, 1e-9);
      EXPECT_GT(s.router_entropy, 0.0);
      EXPECT_LE(s.router_entropy, std::log(static_cast<double>(kE)) + 1e-12);

      // aux_loss = Σ coefficient · unweighted loss.
      const auto& aux = out.routing.aux;
      ASSERT_EQ(aux.count("balance"), 1u);
      double want = 0.1 * aux.at("balance").item<double>();
      if (aux.count("z")) want += 0.05 * aux.at("z").item<double>();
      if (aux.count("importance")) want += 0.2 * aux.at("importance").item<double>();
      if (aux.count("load")) want += 0.3 * aux.at("load").item<double>();
      if (std::string(c.router) == "noisy_topk") {
        EXPECT_EQ(aux.count("importance"), 1u);
        EXPECT_EQ(aux.count("load"), 1u);
      }
      EXPECT_NEAR(out.aux_loss.item<double>(), want, 1e-12);
      EXPECT_EQ(out.aux_loss.dim(), 0);
    }
  }
}

TEST(MoELayerStats, PathNamesTheExpertComputation) {
  // Float64 always runs the reference path (the tests above rely on it).
  MoELayer dbl = make_layer(MoELayerOptions(kD, kFF, kE).top_k(2));
  EXPECT_EQ(dbl->forward(randn({kT, kD}, 103)).routing.stats.path, "reference");

  // Float32: the default fast path and the reference path agree, forward and backward, also
  // with dropped slots, padding and stacked sub-layers.
  const at::Tensor mask =
      at::tensor(std::vector<int64_t>{1, 1, 0, 1, 1, 1, 0, 1}, at::kLong).to(at::kBool);
  for (int64_t depth : {1, 2}) {
    for (double cf : {0.0, 0.5}) {
      SCOPED_TRACE("depth " + std::to_string(depth) + " cf " + std::to_string(cf));
      auto opts = MoELayerOptions(kD, kFF, kE).top_k(2).expert_depth(depth).capacity_factor(cf).seed(23);
      MoELayer fast(opts);
      MoELayer ref(MoELayerOptions(opts).expert_path(ExpertPath::kReference));
      const at::Tensor x = randn({8, kD}, 104).to(at::kFloat);
      const at::Tensor go = randn({8, kD}, 105).to(at::kFloat);
      at::Tensor hf = x.clone().requires_grad_();
      at::Tensor hr = x.clone().requires_grad_();
      MoEOutput of = fast->forward(hf, with_mask(mask));
      MoEOutput orf = ref->forward(hr, with_mask(mask));
      EXPECT_EQ(of.routing.stats.path, "fast");
      EXPECT_EQ(orf.routing.stats.path, "reference");
      EXPECT_TRUE(close(of.output, orf.output, 1e-5, 1e-6));
      EXPECT_DOUBLE_EQ(of.routing.stats.dropped_fraction, orf.routing.stats.dropped_fraction);
      (of.output * go).sum().backward();
      (orf.output * go).sum().backward();
      EXPECT_TRUE(close(hf.grad(), hr.grad(), 1e-4, 1e-5)) << "input grad";
      auto pr = ref->named_parameters();
      for (const auto& item : fast->named_parameters()) {
        const at::Tensor& gf = item.value().grad();
        const at::Tensor& gr = pr[item.key()].grad();
        ASSERT_EQ(gf.defined(), gr.defined()) << item.key();
        if (gf.defined()) {
          EXPECT_TRUE(close(gf, gr, 1e-4, 1e-5)) << item.key();
        }
      }
    }
  }
  expect_invalid([] { parse_expert_path("turbo"); }, {"expert_path", "turbo", "fast", "reference"});
}

}  // namespace
}  // namespace xmoe
