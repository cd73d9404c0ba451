// Finite-difference gradient checks of the whole MoE layer in double precision.
//
// Objective L = Σ output · G + aux_loss (G a fixed random tensor). For every element of the input
// h and of every parameter, the central difference (L(θ+ε) − L(θ−ε)) / 2ε is compared with the
// autograd gradient. Top-k choices are piecewise constant: the checker asserts that the chosen
// experts (and the order of the top k+1 scores, which the noisy router's load estimator uses)
// are the same in every perturbed forward, so a test input never straddles a routing change.
//
// The X-MoE router rescales its expert embeddings in place before each training forward.
// With l2_norm the scores depend on e_i / ‖e_i‖ only, and the embeddings already have the
// target norm, so the rescaling does not change the function being differentiated; the checker
// restores every parameter from a snapshot around each perturbed forward. With l2_norm off the
// scores depend on ‖e_i‖, so that case runs in evaluation mode (no rescaling).
#include "xmoe/moe/moe_layer.h"
#include "xmoe/routing/noisy_topk_router.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using xmoe::GateKind;
using xmoe::MoEInputs;
using xmoe::MoELayer;
using xmoe::MoELayerOptions;
using xmoe::MoEOutput;

constexpr int64_t kTokens = 6;
constexpr int64_t kModel = 4;
constexpr int64_t kFF = 5;
constexpr int64_t kExperts = 4;

constexpr double kEps = 1e-6;
constexpr double kAbsTol = 1e-7;
constexpr double kRelTol = 1e-6;

at::Tensor normal(at::IntArrayRef shape, uint64_t seed, double std = 1.0) {
  return at::empty(shape, at::kDouble).normal_(0.0, std, xmoe::make_generator(seed));
}

MoELayerOptions tiny() {
  // Larger-than-default aux coefficients so the aux gradients weigh in the comparison.
  return MoELayerOptions(kModel, kFF, kExperts)
      .balance_coef(0.5)
      .z_loss_coef(0.1)
      .importance_coef(0.5)
      .load_coef(0.5)
      .seed(3);
}

struct GradCheckSetup {
  MoELayerOptions options;
  bool training = true;
  uint64_t input_seed = 11;
  bool with_noise = false;     // pass a fixed MoEInputs.noise (noisy router in training)
  // Self-tests of the checker: a deliberately wrong autograd gradient, a token on a tie.
  double autograd_scale = 1.0;
  bool zero_first_token = false;
};

// What one forward decided and the objective's value.
struct Evaluation {
  double loss = 0.0;
  at::Tensor expert_ids;   // [T, k]
  at::Tensor score_order;  // [T, min(k+1, E)] indices of the largest scores, decreasing
  at::Tensor kept;         // [T, k]
};

struct TensorReport {
  std::string name;
  int64_t numel = 0;
  double max_abs_err = 0.0;
  double max_grad = 0.0;  // max |autograd gradient|
  double max_fd = 0.0;    // max |finite difference|
  bool requires_grad = true;
  at::Tensor grad;        // the autograd gradient
};

class LayerGradChecker {
 public:
  explicit LayerGradChecker(const GradCheckSetup& setup)
      : setup_(setup), layer_(setup.options) {
    layer_->to(at::kDouble);
    layer_->train(setup.training);
    const auto& o = setup.options;
    if (o.router() == "noisy_topk") {
      // Zero-initialised by design; give the router a signal and token-dependent noise scales.
      auto& router = dynamic_cast<xmoe::NoisyTopKRouterImpl&>(layer_->router());
      at::NoGradGuard no_grad;
      router.w_gate.copy_(normal({kModel, kExperts}, 101, 0.6));
      router.w_noise.copy_(normal({kModel, kExperts}, 102, 0.4));
    }
    h_ = normal({kTokens, kModel}, setup.input_seed);
    if (setup.zero_first_token) h_[0].zero_();  // all dot-product scores 0: an exact tie
    g_ = normal({kTokens, kModel}, setup.input_seed + 1000);
    if (setup.with_noise) noise_ = normal({kTokens, kExperts}, setup.input_seed + 2000);
    // One forward first: a training X-MoE forward rescales the (now double) embeddings to
    // exactly expert_norm, so the snapshot below is a fixed point of the rescaling.
    {
      at::NoGradGuard no_grad;
      layer_->forward(h_, MoEInputs{at::Tensor(), noise_, at::Tensor()});
    }
    for (auto& item : layer_->named_parameters()) {
      snapshot_[item.key()] = item.value().detach().clone();
    }
  }

  const MoELayer& layer() const { return layer_; }
  const MoEOutput& reference_output() const { return reference_; }

  // Autograd gradients at the snapshot, then the finite-difference comparison for h and every
  // parameter. Returns one report per tensor ("input" first).
  std::vector<TensorReport> run() {
    restore();
    for (auto& p : layer_->parameters()) {
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
    }
    at::Tensor h = h_.clone().requires_grad_(true);
    reference_ = layer_->forward(h, MoEInputs{at::Tensor(), noise_, at::Tensor()});
    at::Tensor loss = objective(reference_);
    loss.backward();
    base_ = summarize(reference_, loss.item<double>());
    std::map<std::string, at::Tensor> grads;
    grads["input"] = h.grad().detach() * setup_.autograd_scale;
    for (auto& item : layer_->named_parameters()) {
      const at::Tensor& g = item.value().grad();
      grads[item.key()] =
          g.defined() ? g.detach() * setup_.autograd_scale : at::zeros_like(item.value());
    }
    restore();

    std::vector<TensorReport> reports;
    reports.push_back(check_tensor("input", grads.at("input"), /*requires_grad=*/true,
                                   [&](int64_t i, double delta) {
                                     at::Tensor hp = h_.clone();
                                     hp.view(-1)[i] += delta;
                                     return evaluate(hp);
                                   }));
    for (auto& item : layer_->named_parameters()) {
      if (routing_changed_) break;
      const std::string name = item.key();
      at::Tensor param = item.value();
      reports.push_back(check_tensor(name, grads.at(name), param.requires_grad(),
                                     [&](int64_t i, double delta) {
                                       restore();
                                       {
                                         at::NoGradGuard no_grad;
                                         param.view(-1)[i] += delta;
                                       }
                                       Evaluation e = evaluate(h_);
                                       restore();
                                       return e;
                                     }));
      if (routing_changed_) break;
    }
    // One failure per run, listing the first mismatches.
    if (!problems_.empty()) {
      std::string text;
      for (std::size_t i = 0; i < problems_.size() && i < 12; ++i) text += problems_[i] + "\n";
      ADD_FAILURE() << problems_.size() << " gradient check problem(s):\n" << text;
    }
    return reports;
  }

 private:
  at::Tensor objective(const MoEOutput& out) const {
    return (out.output * g_).sum() + out.aux_loss;
  }

  Evaluation summarize(const MoEOutput& out, double loss) const {
    Evaluation e;
    e.loss = loss;
    e.expert_ids = out.routing.expert_ids.detach().clone();
    const int64_t n = std::min<int64_t>(setup_.options.top_k() + 1, kExperts);
    e.score_order = std::get<1>(out.routing.scores.detach().sort(/*stable=*/true, 1, true))
                        .narrow(1, 0, n)
                        .contiguous();
    e.kept = out.plan.kept.clone();
    return e;
  }

  Evaluation evaluate(const at::Tensor& h) {
    at::NoGradGuard no_grad;
    MoEOutput out = layer_->forward(h, MoEInputs{at::Tensor(), noise_, at::Tensor()});
    return summarize(out, objective(out).item<double>());
  }

  void restore() {
    at::NoGradGuard no_grad;
    for (auto& item : layer_->named_parameters()) item.value().copy_(snapshot_.at(item.key()));
  }

  template <typename Perturbed>
  TensorReport check_tensor(const std::string& name, const at::Tensor& grad, bool requires_grad,
                            Perturbed perturbed) {
    TensorReport report;
    report.name = name;
    report.numel = grad.numel();
    report.requires_grad = requires_grad;
    report.grad = grad;
    at::Tensor flat = grad.reshape(-1);
    for (int64_t i = 0; i < report.numel; ++i) {
      const Evaluation plus = perturbed(i, kEps);
      const Evaluation minus = perturbed(i, -kEps);
      for (const Evaluation* e : {&plus, &minus}) {
        const bool same = at::equal(e->expert_ids, base_.expert_ids) &&
                          at::equal(e->score_order, base_.score_order) &&
                          at::equal(e->kept, base_.kept);
        if (!same) {
          std::ostringstream msg;
          msg << "routing changed when perturbing " << name << "[" << i << "] by ±" << kEps
              << ": the test input has a near-tie, pick another seed";
          problems_.push_back(msg.str());
          routing_changed_ = true;
          return report;
        }
      }
      const double fd = (plus.loss - minus.loss) / (2 * kEps);
      report.max_fd = std::max(report.max_fd, std::abs(fd));
      // A constant (a parameter that does not require a gradient) has nothing to compare.
      if (!requires_grad) continue;
      const double ad = flat[i].item<double>();
      const double err = std::abs(fd - ad);
      report.max_abs_err = std::max(report.max_abs_err, err);
      report.max_grad = std::max(report.max_grad, std::abs(ad));
      if (err > kAbsTol + kRelTol * std::max(std::abs(fd), std::abs(ad))) {
        std::ostringstream msg;
        msg.precision(12);
        msg << "gradient of " << name << "[" << i << "]: finite difference " << fd
            << ", autograd " << ad << " (|diff| " << err << ")";
        problems_.push_back(msg.str());
      }
    }
    return report;
  }

  GradCheckSetup setup_;
  MoELayer layer_;
  at::Tensor h_, g_, noise_;
  std::map<std::string, at::Tensor> snapshot_;
  MoEOutput reference_;
  Evaluation base_;
  std::vector<std::string> problems_;
  bool routing_changed_ = false;
};

// `name` is a C string: with a std::string parameter g++ 14 warns that the returned reference
// may dangle (-Wdangling-reference; it cannot see that the result refers into `reports`).
const TensorReport& report_of(const std::vector<TensorReport>& reports, const char* name) {
  for (const auto& r : reports) {
    if (r.name == name) return r;
  }
  throw std::out_of_range(std::string("no gradient report for ") + name);
}

// Runs the check and the assertions every case shares; returns the reports for extra checks.
std::vector<TensorReport> check_layer(
    const GradCheckSetup& setup, const std::vector<std::string>& expected_params,
    const std::function<void(const LayerGradChecker&)>& extra = {}) {
  LayerGradChecker checker(setup);
  std::vector<TensorReport> reports = checker.run();
  if (extra) extra(checker);

  // Every parameter of the layer (and only those) was checked, every element of each.
  std::vector<std::string> names;
  for (const auto& r : reports) names.push_back(r.name);
  std::vector<std::string> expected = {"input"};
  expected.insert(expected.end(), expected_params.begin(), expected_params.end());
  std::sort(names.begin(), names.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(names, expected);
  int64_t elements = 0;
  for (const auto& r : reports) elements += r.numel;
  int64_t param_elements = kTokens * kModel;
  for (auto& p : checker.layer()->parameters()) param_elements += p.numel();
  EXPECT_EQ(elements, param_elements);

  // The input always receives a gradient: a vacuous comparison of zeros would prove nothing.
  EXPECT_GT(report_of(reports, "input").max_grad, 1e-3);
  for (const auto& r : reports) {
    std::ostringstream err;
    err << r.max_abs_err;
    ::testing::Test::RecordProperty(r.name + ".max_abs_err", err.str());
    std::ostringstream grad;
    grad << r.max_grad;
    ::testing::Test::RecordProperty(r.name + ".max_grad", grad.str());
  }
  return reports;
}

std::vector<std::string> expert_params(int64_t depth) {
  std::vector<std::string> out;
  for (int64_t j = 0; j < depth; ++j) {
    const std::string p = "experts." + std::to_string(j) + ".";
    for (const char* n : {"w1", "b1", "w2", "b2"}) out.push_back(p + n);
    if (depth > 1) {
      out.push_back(p + "ln_weight");
      out.push_back(p + "ln_bias");
    }
  }
  return out;
}

std::vector<std::string> with_router(std::vector<std::string> router, int64_t depth = 1) {
  for (const auto& e : expert_params(depth)) router.push_back(e);
  return router;
}

TEST(GradCheck, DotSoftmaxTop1) {
  auto reports = check_layer({tiny()}, with_router({"router.weight"}));
  EXPECT_GT(report_of(reports, "router.weight").max_grad, 1e-3);
  EXPECT_GT(report_of(reports, "experts.0.w1").max_grad, 1e-3);
}

TEST(GradCheck, DotSigmoidTop1) {
  auto reports = check_layer({tiny().gate(GateKind::kSigmoid)}, with_router({"router.weight"}));
  EXPECT_GT(report_of(reports, "router.weight").max_grad, 1e-3);
}

TEST(GradCheck, DotTop2GShardRenormalised) {
  auto reports = check_layer({tiny().top_k(2)}, with_router({"router.weight"}));
  EXPECT_GT(report_of(reports, "router.weight").max_grad, 1e-3);
}

TEST(GradCheck, NoisyTopKTop2TrainingWithFixedNoise) {
  GradCheckSetup setup{tiny().router("noisy_topk").top_k(2)};
  setup.with_noise = true;
  auto reports = check_layer(setup, with_router({"router.w_gate", "router.w_noise"}));
  EXPECT_GT(report_of(reports, "router.w_gate").max_grad, 1e-3);
  EXPECT_GT(report_of(reports, "router.w_noise").max_grad, 1e-3);
}

const std::vector<std::string> kXmoeParams = {"router.proj", "router.expert_embed",
                                              "router.temperature"};

TEST(GradCheck, XmoeSoftmaxTop1) {
  at::Tensor embed;
  auto reports = check_layer({tiny().router("xmoe")}, with_router(kXmoeParams),
                             [&](const LayerGradChecker& checker) {
                               for (const auto& item : checker.layer()->named_parameters()) {
                                 if (item.key() == "router.expert_embed") embed = item.value();
                               }
                             });
  EXPECT_GT(report_of(reports, "router.temperature").max_grad, 1e-4);
  EXPECT_GT(report_of(reports, "router.proj").max_grad, 1e-4);
  const TensorReport& e = report_of(reports, "router.expert_embed");
  EXPECT_GT(e.max_grad, 1e-4);
  // Cosine scores only see e_i / ‖e_i‖: each row's gradient is orthogonal to the row, which is
  // why the in-place rescaling to ‖e_i‖ = expert_norm does not disturb the finite differences.
  ASSERT_TRUE(embed.defined());
  at::Tensor norms = embed.detach().norm(2, {1});
  EXPECT_TRUE(at::allclose(norms, at::full_like(norms, 1.5), 0, 1e-12)) << norms;
  at::Tensor radial = (e.grad * embed.detach()).sum(1);
  EXPECT_LT(radial.abs().max().item<double>(), 1e-12) << radial;
}

TEST(GradCheck, XmoeSigmoidTop1TemperatureAndProjection) {
  auto reports =
      check_layer({tiny().router("xmoe").gate(GateKind::kSigmoid)}, with_router(kXmoeParams));
  // The learnable τ and the projection W_p get real (non-zero, FD-confirmed) gradients.
  const TensorReport& tau = report_of(reports, "router.temperature");
  EXPECT_TRUE(tau.requires_grad);
  EXPECT_EQ(tau.numel, 1);
  EXPECT_GT(tau.max_grad, 1e-3);
  const TensorReport& proj = report_of(reports, "router.proj");
  EXPECT_EQ(proj.numel, 2 * kModel);  // d_e = max(2, E / 2) = 2
  EXPECT_GT(proj.max_grad, 1e-3);
}

TEST(GradCheck, XmoeWithoutDimReduction) {
  auto reports = check_layer({tiny().router("xmoe").dim_reduction(false)},
                             with_router({"router.expert_embed", "router.temperature"}));
  EXPECT_EQ(report_of(reports, "router.expert_embed").numel, kExperts * kModel);
  EXPECT_GT(report_of(reports, "router.expert_embed").max_grad, 1e-4);
}

TEST(GradCheck, XmoeWithoutL2NormEvaluation) {
  // Plain dot-product scores depend on ‖e_i‖, which the training-mode rescaling resets, so this
  // case runs in evaluation mode. τ is not used and not trainable.
  auto reports = check_layer({tiny().router("xmoe").l2_norm(false), /*training=*/false},
                             with_router(kXmoeParams));
  EXPECT_FALSE(report_of(reports, "router.temperature").requires_grad);
  EXPECT_EQ(report_of(reports, "router.temperature").max_fd, 0.0);  // τ does not enter
  EXPECT_GT(report_of(reports, "router.expert_embed").max_grad, 1e-4);
  EXPECT_GT(report_of(reports, "router.proj").max_grad, 1e-4);
}

TEST(GradCheck, XmoeTorchscaleVariantTop2) {
  // Only the expert embeddings are normalised and τ = 1 is a constant (it does scale the
  // logits, so its finite difference is not zero, but it gets no gradient).
  auto reports =
      check_layer({tiny().router("xmoe_torchscale").top_k(2)}, with_router(kXmoeParams));
  EXPECT_FALSE(report_of(reports, "router.temperature").requires_grad);
  EXPECT_GT(report_of(reports, "router.temperature").max_fd, 1e-4);
  EXPECT_GT(report_of(reports, "router.proj").max_grad, 1e-4);
}

TEST(GradCheck, ExpertDepthThree) {
  auto reports = check_layer({tiny().top_k(2).expert_depth(3)},
                             with_router({"router.weight"}, /*depth=*/3));
  for (int j = 0; j < 3; ++j) {
    const std::string ln = "experts." + std::to_string(j) + ".ln_weight";
    const std::string w2 = "experts." + std::to_string(j) + ".w2";
    EXPECT_GT(report_of(reports, ln.c_str()).max_grad, 1e-4);
    EXPECT_GT(report_of(reports, w2.c_str()).max_grad, 1e-4);
  }
}

TEST(GradCheck, CapacityModeWithDrops) {
  // C = ceil(0.5 · 2 · 6 / 4) = 2 slots per expert for 12 slots: some are dropped.
  check_layer({tiny().top_k(2).capacity_factor(0.5)}, with_router({"router.weight"}),
              [](const LayerGradChecker& checker) {
                const xmoe::DispatchPlan& plan = checker.reference_output().plan;
                EXPECT_EQ(plan.capacity, 2);
                EXPECT_GT(plan.n_dropped, 0);
                EXPECT_GT(plan.n_kept(), 0);
                // A dropped slot's gate is reported as zero.
                at::Tensor gates = checker.reference_output().routing.gates.detach();
                EXPECT_TRUE(at::equal(gates.masked_select(plan.kept.logical_not()),
                                      at::zeros({plan.n_dropped}, gates.options())));
              });
}

// The checker itself can fail: a gradient off by 0.1 % and a routing tie are both reported.
void check_with_wrong_gradient() {
  GradCheckSetup setup{tiny()};
  setup.autograd_scale = 1.001;
  LayerGradChecker(setup).run();
}

void check_with_tie() {
  GradCheckSetup setup{tiny()};
  setup.zero_first_token = true;
  LayerGradChecker(setup).run();
}

TEST(GradCheck, CheckerDetectsWrongGradientsAndTies) {
  EXPECT_NONFATAL_FAILURE(check_with_wrong_gradient(), "gradient of input[");
  EXPECT_NONFATAL_FAILURE(check_with_tie(), "routing changed when perturbing input[");
}

}  // namespace
