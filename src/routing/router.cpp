#include "xmoe/routing/router.h"

#include "xmoe/kernels/nonfinite.h"
#include "xmoe/kernels/routing_gate.h"
#include "xmoe/routing/dot_router.h"
#include "xmoe/routing/hypersphere_router.h"
#include "xmoe/routing/losses.h"
#include "xmoe/routing/noisy_topk_router.h"
#include "xmoe/routing/topk.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>

namespace xmoe {

// ---- option parsing -----------------------------------------------------------------------

GateKind parse_gate_kind(const std::string& name) {
  if (name == "softmax") return GateKind::kSoftmax;
  if (name == "sigmoid") return GateKind::kSigmoid;
  throw std::invalid_argument("gate: unknown value '" + name + "' (allowed: softmax, sigmoid)");
}

std::string to_string(GateKind gate) { return gate == GateKind::kSoftmax ? "softmax" : "sigmoid"; }

SecondExpertPolicy parse_second_expert_policy(const std::string& name) {
  if (name == "all") return SecondExpertPolicy::kAll;
  if (name == "random") return SecondExpertPolicy::kRandom;
  if (name == "sampling") return SecondExpertPolicy::kSampling;
  throw std::invalid_argument("second_expert_policy: unknown value '" + name +
                              "' (allowed: all, random, sampling)");
}

std::string to_string(SecondExpertPolicy policy) {
  switch (policy) {
    case SecondExpertPolicy::kAll: return "all";
    case SecondExpertPolicy::kRandom: return "random";
    case SecondExpertPolicy::kSampling: return "sampling";
  }
  return "?";
}

int64_t RouterOptions::resolved_d_e() const {
  return d_e_.has_value() ? *d_e_ : std::max<int64_t>(2, n_expert_ / 2);
}

double RouterOptions::resolved_temperature_init() const {
  if (temperature_init_.has_value()) return *temperature_init_;
  return gate_ == GateKind::kSoftmax ? 0.3 : 0.07;
}

namespace {

[[noreturn]] void bad_option(const std::string& layer, const std::string& message) {
  throw OptionError("xmoe::RouterOptions (layer '" + layer + "')", message);
}

bool finite_positive(double v) { return std::isfinite(v) && v > 0; }
std::string number(double v) {  // %g: std::to_string prints 1e-300 as 0.000000
  std::ostringstream s;
  s << v;
  return s.str();
}
// Positive and a normal float32: the value becomes a float32 weight or buffer, where 1e300
// would be inf and 1e-300 zero.
bool float32_positive(double v) {
  return v >= std::numeric_limits<float>::min() && v <= std::numeric_limits<float>::max();
}

}  // namespace

void RouterOptions::validate() const {
  auto fail = [&](const std::string& m) { bad_option(name_, m); };
  if (d_model_ < 1) fail("d_model = " + std::to_string(d_model_) + " must be >= 1");
  if (n_expert_ < 1) fail("n_expert = " + std::to_string(n_expert_) + " must be >= 1");
  if (top_k_ < 1 || top_k_ > n_expert_)
    fail("top_k = " + std::to_string(top_k_) + " must be in [1, n_expert = " +
         std::to_string(n_expert_) + "]");
  if (!(jitter_ >= 0 && jitter_ < 1)) fail("jitter = " + std::to_string(jitter_) + " must be in [0, 1)");
  if (!finite_positive(noise_epsilon_))
    fail("noise_epsilon = " + std::to_string(noise_epsilon_) + " must be > 0");
  if (d_e_.has_value() && *d_e_ < 1) fail("d_e = " + std::to_string(*d_e_) + " must be >= 1");
  if (!float32_positive(expert_norm_))
    fail("expert_norm = " + number(expert_norm_) +
         " must be > 0 and fit in float32 (1.2e-38..3.4e38)");
  if (!float32_positive(resolved_temperature_init()))
    fail("temperature_init = " + number(resolved_temperature_init()) +
         " must be > 0 and fit in float32 (1.2e-38..3.4e38)");
  if (!finite_positive(balance_temperature_))
    fail("balance_temperature = " + std::to_string(balance_temperature_) + " must be > 0");
  if (kind_ == "noisy_topk" && second_expert_policy_ != SecondExpertPolicy::kAll)
    fail("second_expert_policy = " + to_string(second_expert_policy_) +
         " is not supported by the noisy_topk router (allowed: all)");
}

// ---- router base --------------------------------------------------------------------------

RouterImpl::RouterImpl(RouterOptions options)
    : options_(std::move(options)), generator_(make_generator(options_.seed())) {
  options_.validate();
}

void RouterImpl::reseed(uint64_t seed) { generator_ = make_generator(seed); }

void RouterImpl::set_frozen(bool frozen) {
  frozen_ = frozen;
  for (auto& item : named_parameters(/*recurse=*/true)) {
    item.value().set_requires_grad(!frozen && trainable_by_design(item.key()));
  }
}

at::Tensor RouterImpl::maybe_jitter(const at::Tensor& h) {
  const double eps = options_.jitter();
  if (!is_training() || eps == 0.0) return h;
  at::Tensor u = at::empty(h.sizes(), at::TensorOptions().dtype(at::kDouble));
  u.uniform_(1.0 - eps, 1.0 + eps, generator_);
  return h * u.to(h.options());
}

int64_t RouterImpl::check_finite(const at::Tensor& t, const char* what) const {
  const int64_t bad = kernels::count_nonfinite(t);
  if (bad > 0 && options_.check_finite()) {
    std::ostringstream msg;
    msg << "xmoe router (layer '" << options_.name() << "', kind '" << options_.kind()
        << "'): " << bad << " non-finite value(s) in the " << what
        << "; refusing to route a diverged model";
    throw NonFiniteRoutingError(msg.str());
  }
  return bad;
}

RoutingResult RouterImpl::finish_routing(const at::Tensor& scores, const at::Tensor& logits,
                                         const at::Tensor& balance_logits, int64_t nonfinite) {
  const RouterOptions& opt = options_;
  RoutingResult result;
  result.scores = scores;
  result.gate_logits = logits;
  result.stats.nonfinite_count = nonfinite;
  // The random second-expert policies draw from the generator between the ATen operators, so
  // only the deterministic choice runs fused.
  const bool random_policy = is_training() && opt.top_k() > 1 &&
                             opt.second_expert_policy() != SecondExpertPolicy::kAll;
  kernels::RoutingGate gate;
  const bool sigmoid = opt.gate() == GateKind::kSigmoid;
  if (nonfinite == 0 && !random_policy && kernels::routing_gate_supported(logits)) {
    gate = kernels::routing_gate(logits, balance_logits, opt.top_k(), sigmoid, opt.normalize_topk());
    result.active = at::ones(gate.gates.sizes(), logits.options().dtype(at::kBool));
  } else {
    gate = routing_gate_aten(logits, balance_logits, opt.top_k(), opt.gate(), opt.normalize_topk(),
                             opt.second_expert_policy(), is_training(), generator_, &result.active);
  }
  result.expert_ids = gate.expert_ids;
  result.gates = gate.gates;
  result.aux["balance"] = gate.balance_loss;
  result.aux["z"] = gate.z_loss;
  result.stats.tokens_per_expert = gate.tokens_per_expert;
  result.stats.router_entropy = gate.entropy;
  return result;
}

// ---- registry -----------------------------------------------------------------------------

namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, RouterFactory> factories;
  Registry() {
    factories["dot"] = [](const RouterOptions& o) { return std::make_shared<DotRouterImpl>(o); };
    factories["noisy_topk"] = [](const RouterOptions& o) {
      return std::make_shared<NoisyTopKRouterImpl>(o);
    };
    factories["xmoe"] = [](const RouterOptions& o) {
      return std::make_shared<HypersphereRouterImpl>(o);
    };
    // microsoft/torchscale's X-MoE gate: only expert embeddings normalised, τ = 1 fixed,
    // balance probabilities softmax(s).
    factories["xmoe_torchscale"] = [](const RouterOptions& o) {
      RouterOptions t = o;
      t.normalize_tokens(false).learn_temperature(false).temperature_init(1.0)
          .balance_temperature(1.0);
      return std::make_shared<HypersphereRouterImpl>(t);
    };
  }
};

Registry& registry() {
  static Registry instance;
  return instance;
}

}  // namespace

std::shared_ptr<RouterImpl> RouterRegistry::create(const RouterOptions& options) {
  RouterFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    auto it = registry().factories.find(options.kind());
    if (it != registry().factories.end()) factory = it->second;
  }
  if (!factory) {
    std::string known;
    for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("router: unknown kind '" + options.kind() + "' (known: " + known +
                                ")");
  }
  return factory(options);
}

void RouterRegistry::add(const std::string& name, RouterFactory factory) {
  std::lock_guard<std::mutex> lock(registry().mutex);
  registry().factories[name] = std::move(factory);
}

std::vector<std::string> RouterRegistry::names() {
  std::lock_guard<std::mutex> lock(registry().mutex);
  std::vector<std::string> out;
  for (const auto& item : registry().factories) out.push_back(item.first);
  return out;
}

}  // namespace xmoe
