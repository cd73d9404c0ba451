// Options shared by every router (SPEC §2). Plain struct with chainable setters
// (TORCH_ARG); validate() checks every field once and names the bad one.
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace xmoe {

/// Thrown by the options' validate(). what() names the options class and the layer
/// ("xmoe::RouterOptions (layer 'moe'): top_k = 9 must be in [1, n_expert = 8]");
/// option_message() is the part after it, for readers of config files, which know keys.
class OptionError : public std::invalid_argument {
 public:
  OptionError(const std::string& owner, const std::string& option_message)
      : std::invalid_argument(owner + ": " + option_message), option_message_(option_message) {}
  const std::string& option_message() const { return option_message_; }

 private:
  std::string option_message_;
};

/// How router logits become gate weights.
enum class GateKind { kSoftmax, kSigmoid };

/// GShard/fairseq policy for the experts after the first (k >= 2, training only).
///  kAll:      always use them;
///  kRandom:   keep slot j >= 2 only if 2·g_j > U(0,1) (g_j before renormalisation);
///  kSampling: choose slots 2..k by top-(k-1) of logits + Gumbel noise, first expert excluded.
enum class SecondExpertPolicy { kAll, kRandom, kSampling };

GateKind parse_gate_kind(const std::string& name);             // "softmax" | "sigmoid"
std::string to_string(GateKind gate);
SecondExpertPolicy parse_second_expert_policy(const std::string& name);  // "all"|"random"|"sampling"
std::string to_string(SecondExpertPolicy policy);

struct RouterOptions {
  RouterOptions(int64_t d_model, int64_t n_expert) : d_model_(d_model), n_expert_(n_expert) {}

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, n_expert);
  /// Experts per token.
  TORCH_ARG(int64_t, top_k) = 1;
  /// Registry name: "dot", "noisy_topk", "xmoe", "xmoe_torchscale".
  TORCH_ARG(std::string, kind) = "dot";
  TORCH_ARG(GateKind, gate) = GateKind::kSoftmax;
  /// Renormalise the k chosen softmax gates to sum to 1 (GShard); softmax gates, k > 1 only.
  TORCH_ARG(bool, normalize_topk) = true;
  TORCH_ARG(SecondExpertPolicy, second_expert_policy) = SecondExpertPolicy::kAll;
  /// Switch jitter: router input multiplied by U(1-ε, 1+ε) in training; 0 = off.
  TORCH_ARG(double, jitter) = 0.0;
  /// Noisy top-k: σ_i(x) = softplus((x W_noise)_i) + noise_epsilon.
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  /// X-MoE routing dimension; unset = max(2, n_expert / 2).
  TORCH_ARG(c10::optional<int64_t>, d_e) = c10::nullopt;
  /// X-MoE: norm every expert embedding is rescaled to before each training forward.
  TORCH_ARG(double, expert_norm) = 1.5;
  /// X-MoE initial τ; unset = 0.3 (softmax gate) or 0.07 (sigmoid gate).
  TORCH_ARG(c10::optional<double>, temperature_init) = c10::nullopt;
  /// X-MoE: τ is a parameter (true) or a constant (torchscale compatibility).
  TORCH_ARG(bool, learn_temperature) = true;
  /// X-MoE: τ₀ of the balance-loss probabilities softmax(s/τ₀).
  TORCH_ARG(double, balance_temperature) = 0.07;
  /// X-MoE: L2-normalise the tokens too (paper) or only the expert embeddings (torchscale).
  TORCH_ARG(bool, normalize_tokens) = true;
  /// X-MoE ablations (paper Table 3): project to d_e; cosine scores with temperature.
  TORCH_ARG(bool, dim_reduction) = true;
  TORCH_ARG(bool, l2_norm) = true;
  /// Throw on non-finite router input or scores (otherwise count them in the statistics).
  TORCH_ARG(bool, check_finite) = true;
  /// Seed for parameter initialisation and the router's own noise.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Layer name used in error messages.
  TORCH_ARG(std::string, name) = "moe";

 public:
  /// Resolved values of the optional fields.
  int64_t resolved_d_e() const;
  double resolved_temperature_init() const;

  /// Throws std::invalid_argument naming the first invalid field and its allowed values.
  void validate() const;
};

}  // namespace xmoe
