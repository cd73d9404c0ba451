// Router interface and the registry that creates routers by name (SPEC §2).
//
//   h [T, d_model] ──route──▶ RoutingResult { scores [T, E], expert_ids [T, k], gates [T, k],
//                                             aux losses, statistics }
//
// Routers never see expert weights; the MoE layer never sees router types.
#pragma once

#include "xmoe/routing/router_options.h"
#include "xmoe/routing/routing_result.h"

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace xmoe {

/// Thrown by a router whose input or scores hold NaN or ±inf (with check_finite on): the usual
/// first sign of a diverged model. A std::invalid_argument, so callers may treat it like any
/// other bad input; the trainer catches it to name the step and suggest a lower learning rate.
class NonFiniteRoutingError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Extra inputs of one routing call.
struct RouteInputs {
  /// [T, E] standard-normal samples a noisy router uses in training instead of drawing its own
  /// (makes training mode reproducible across implementations). Undefined = draw.
  at::Tensor noise;
};

class RouterImpl : public torch::nn::Module {
 public:
  explicit RouterImpl(RouterOptions options);
  ~RouterImpl() override = default;

  /// Routes h [T, d_model]. Training mode (is_training()) enables noise, jitter and the
  /// random/sampling second-expert policies; evaluation is deterministic.
  virtual RoutingResult route(const at::Tensor& h, const RouteInputs& inputs = {}) = 0;

  /// Frozen routing (SPEC §5): parameters stop requiring gradients and are never modified
  /// (no embedding rescaling); aux losses are still computed.
  virtual void set_frozen(bool frozen);
  bool frozen() const { return frozen_; }

  const RouterOptions& options() const { return options_; }

  /// Restarts the router's own random stream (noise, jitter, second-expert policies).
  void reseed(uint64_t seed);
  /// The router's own random stream, e.g. to save and restore its state in a checkpoint.
  at::Generator& generator() { return generator_; }

 protected:
  /// Applies Switch jitter to the router input in training mode.
  at::Tensor maybe_jitter(const at::Tensor& h);
  /// Throws NonFiniteRoutingError naming the layer when `t` has non-finite values (when checking
  /// is on); returns their count.
  int64_t check_finite(const at::Tensor& t, const char* what) const;
  /// Whether a parameter of this router is trainable by design (true unless overridden).
  virtual bool trainable_by_design(const std::string& name) const { return true; }
  /// Everything shared by the routers once they have scores: top-k choice, gates, balance and
  /// z losses, statistics. `scores` are reported as they are, `logits` [T, E] drive the gate,
  /// softmax(`balance_logits`) [T, E] is the P of the balance loss (undefined: softmax(logits)).
  /// `nonfinite` = non-finite scores (then the ATen composition runs, NaN propagating as ATen's
  /// top-k does); otherwise float/double CPU logits take kernels::routing_gate in one pass.
  RoutingResult finish_routing(const at::Tensor& scores, const at::Tensor& logits,
                               const at::Tensor& balance_logits, int64_t nonfinite);

  RouterOptions options_;
  at::Generator generator_;  // CPU generator: the router's own randomness
  bool frozen_ = false;
};

using RouterFactory = std::function<std::shared_ptr<RouterImpl>(const RouterOptions&)>;

/// Routers by name. Built-ins: "dot", "noisy_topk", "xmoe", "xmoe_torchscale".
class RouterRegistry {
 public:
  /// Creates the router named options.kind(); throws std::invalid_argument listing the known
  /// names for an unknown one.
  static std::shared_ptr<RouterImpl> create(const RouterOptions& options);
  /// Adds (or replaces) a router kind.
  static void add(const std::string& name, RouterFactory factory);
  static std::vector<std::string> names();
};

}  // namespace xmoe
