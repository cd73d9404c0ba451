// Sparse Mixture-of-Experts layer: Router + dispatch plan + ExpertStack (SPEC §1-§5).
//
//   h [T, d_model] ──router──▶ expert_ids [T, k], gates [T, k]
//                  ──plan (sort by expert, capacity)──▶ x_sorted [N, d_model]
//                  ──experts (one block per expert)──▶ y_sorted [N, d_model]
//                  ──combine: y[t] = Σ_j gate[t, j] · y_sorted[row(t, j)]──▶ y [T, d_model]
//
// Dropped slots (capacity mode), padding tokens and tokens left out of MoEInputs::computed
// contribute nothing: their output is zero and the residual connection around the layer carries
// them.
#pragma once

#include "xmoe/dist/communicator.h"
#include "xmoe/kernels/dispatch_plan.h"
#include "xmoe/moe/expert_stack.h"
#include "xmoe/routing/router.h"

#include <ATen/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_set>

namespace xmoe {

/// Which implementation computes the experts. kFast (default) uses the grouped-GEMM kernels
/// where they apply (float32 on the CPU) and falls back to kReference elsewhere (float64 for
/// gradient checks, CUDA); RoutingStats::path says which one ran.
enum class ExpertPath { kFast, kReference };
ExpertPath parse_expert_path(const std::string& name);  // "fast" | "reference"
std::string to_string(ExpertPath path);

struct MoELayerOptions {
  MoELayerOptions(int64_t d_model, int64_t d_ff, int64_t n_expert)
      : d_model_(d_model), d_ff_(d_ff), n_expert_(n_expert) {}

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, d_ff);
  TORCH_ARG(int64_t, n_expert);
  TORCH_ARG(int64_t, top_k) = 1;
  /// Router kind, by registry name: "dot" | "noisy_topk" | "xmoe" | "xmoe_torchscale".
  TORCH_ARG(std::string, router) = "dot";
  TORCH_ARG(GateKind, gate) = GateKind::kSoftmax;
  TORCH_ARG(bool, normalize_topk) = true;
  TORCH_ARG(SecondExpertPolicy, second_expert_policy) = SecondExpertPolicy::kAll;
  /// Training capacity factor; 0 = dropless (default). C = ceil(cf · k · T / E).
  TORCH_ARG(double, capacity_factor) = 0.0;
  /// Evaluation capacity factor; unset = capacity_factor.
  TORCH_ARG(c10::optional<double>, eval_capacity_factor) = c10::nullopt;
  TORCH_ARG(Activation, activation) = Activation::kGelu;
  /// Stacked FFN sub-layers per expert (the paper uses 3).
  TORCH_ARG(int64_t, expert_depth) = 1;
  /// Coefficients of the unweighted aux losses in aux_loss (SPEC §2.2, §2.5, §3).
  TORCH_ARG(double, balance_coef) = 0.01;
  TORCH_ARG(double, importance_coef) = 0.01;
  TORCH_ARG(double, load_coef) = 0.01;
  TORCH_ARG(double, z_loss_coef) = 0.0;
  TORCH_ARG(double, jitter) = 0.0;
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  // X-MoE (SPEC §2.3)
  TORCH_ARG(c10::optional<int64_t>, d_e) = c10::nullopt;
  TORCH_ARG(double, expert_norm) = 1.5;
  TORCH_ARG(c10::optional<double>, temperature_init) = c10::nullopt;
  TORCH_ARG(double, balance_temperature) = 0.07;
  TORCH_ARG(bool, normalize_tokens) = true;
  TORCH_ARG(bool, dim_reduction) = true;
  TORCH_ARG(bool, l2_norm) = true;
  /// Throw on non-finite input or router scores (default); off = count them in the stats.
  TORCH_ARG(bool, check_finite) = true;
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(ExpertPath, expert_path) = ExpertPath::kFast;
  /// Name used in error messages ("encoder.layer3.moe").
  TORCH_ARG(std::string, name) = "moe";
  /// Expert parallelism (docs/expert-parallel.md): the experts are split evenly over the
  /// group's W ranks, rank r holding experts [r·E/W, (r+1)·E/W) with the values the unsplit
  /// layer of the same seed has there. Each rank routes its own tokens over all E experts; the
  /// rows travel to their expert's rank and back (two all-to-all exchanges forward, two
  /// backward). Every rank must run this layer's forward and backward in step with the others,
  /// with inputs that require grad alike (a rank whose experts get no row still takes part).
  /// Null or a group of one rank: all experts are local. n_expert must be a multiple of W.
  TORCH_ARG(std::shared_ptr<dist::Communicator>, expert_group) = nullptr;

 public:
  /// The router's share of these options.
  RouterOptions router_options() const;
  /// Throws std::invalid_argument naming the first invalid option and its allowed values.
  void validate() const;
};

/// Optional inputs of one forward call.
struct MoEInputs {
  at::Tensor mask;   // [T] bool, true = real token; padding tokens are not routed, output 0
  at::Tensor noise;  // [T_real, E] standard-normal samples for a noisy router in training
  /// [T] bool, true = the caller uses this token's output (undefined = all). Routing, capacity,
  /// aux losses and statistics still cover every real token; the experts run only for these,
  /// the others' output is 0. Exact for the used rows: an unused output has no gradient.
  at::Tensor computed;
};

struct MoEOutput {
  at::Tensor output;      // [T, d_model]
  RoutingResult routing;  // over the real (unmasked) tokens; gates zeroed for dropped slots
  DispatchPlan plan;      // which slots ran where
  at::Tensor input;       // [T_real, d_model] the routed hidden states h (detached), for analysis
  at::Tensor aux_loss;    // scalar: Σ coefficient · unweighted aux loss
};

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(MoELayerOptions options);

  /// h [T, d_model] (float or double, any device the parameters are on).
  MoEOutput forward(const at::Tensor& h, const MoEInputs& inputs = {});

  /// Frozen routing (SPEC §5): router and expert parameters stop requiring gradients and stay
  /// bit-identical; the balance loss is still computed (its gradient reaches h).
  void freeze_routing(bool frozen = true);
  bool routing_frozen() const { return router_->frozen(); }

  const MoELayerOptions& options() const { return options_; }
  RouterImpl& router() { return *router_; }
  /// The experts held by this rank (all of them without expert parallelism).
  ExpertStack& experts() { return experts_; }
  /// Ranks the experts are split over (1 without expert parallelism).
  int expert_parallel_size() const;

  /// Weighted sum of the aux losses present in `aux` with this layer's coefficients.
  at::Tensor weighted_aux_loss(const std::map<std::string, at::Tensor>& aux) const;

 private:
  /// y_sorted [N, d_model] from x_sorted [N, d_model] in the plan's expert order, computed by
  /// the experts of every rank of expert_group.
  at::Tensor run_experts_parallel(const at::Tensor& x_sorted, const std::vector<int64_t>& offsets,
                                  bool fast);

  MoELayerOptions options_;
  std::shared_ptr<RouterImpl> router_;
  ExpertStack experts_{nullptr};
};
TORCH_MODULE(MoELayer);

/// The expert parameters of `model`'s expert-parallel MoE layers (the shards), by tensor
/// identity (TensorImpl address). Non-empty exactly when some MoE layer splits its experts over
/// several ranks, i.e. when the model's forward is a collective every rank must run alike.
std::unordered_set<const void*> expert_shard_ids(const torch::nn::Module& model);

}  // namespace xmoe
