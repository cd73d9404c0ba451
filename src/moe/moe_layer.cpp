#include "xmoe/moe/moe_layer.h"

#include "xmoe/dist/all_to_all.h"
#include "xmoe/kernels/permute.h"
#include "xmoe/util/size_limits.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace xmoe {

ExpertPath parse_expert_path(const std::string& name) {
  if (name == "fast") return ExpertPath::kFast;
  if (name == "reference") return ExpertPath::kReference;
  throw std::invalid_argument("expert_path: unknown value '" + name + "' (allowed: fast, reference)");
}

std::string to_string(ExpertPath path) { return path == ExpertPath::kFast ? "fast" : "reference"; }

RouterOptions MoELayerOptions::router_options() const {
  return RouterOptions(d_model_, n_expert_)
      .top_k(top_k_)
      .kind(router_)
      .gate(gate_)
      .normalize_topk(normalize_topk_)
      .second_expert_policy(second_expert_policy_)
      .jitter(jitter_)
      .noise_epsilon(noise_epsilon_)
      .d_e(d_e_)
      .expert_norm(expert_norm_)
      .temperature_init(temperature_init_)
      .balance_temperature(balance_temperature_)
      .normalize_tokens(normalize_tokens_)
      .dim_reduction(dim_reduction_)
      .l2_norm(l2_norm_)
      .check_finite(check_finite_)
      .seed(seed_)
      .name(name_);
}

void MoELayerOptions::validate() const {
  auto fail = [&](const std::string& m) {
    throw OptionError("xmoe::MoELayerOptions (layer '" + name_ + "')", m);
  };
  auto non_negative = [&](const char* key, double v) {
    if (!(std::isfinite(v) && v >= 0))
      fail(std::string(key) + " = " + std::to_string(v) + " must be a finite number >= 0");
  };
  if (d_ff_ < 1) fail("d_ff = " + std::to_string(d_ff_) + " must be >= 1");
  if (expert_depth_ < 1) fail("expert_depth = " + std::to_string(expert_depth_) + " must be >= 1");
  non_negative("capacity_factor (0 = dropless)", capacity_factor_);
  if (eval_capacity_factor_) non_negative("eval_capacity_factor (0 = dropless)", *eval_capacity_factor_);
  non_negative("balance_coef", balance_coef_);
  non_negative("importance_coef", importance_coef_);
  non_negative("load_coef", load_coef_);
  non_negative("z_loss_coef", z_loss_coef_);
  // Weights of the experts (the router's are far fewer). Counted in double: it cannot overflow.
  const double expert_weights = static_cast<double>(n_expert_) *
                                static_cast<double>(expert_depth_) * 2.0 *
                                static_cast<double>(d_model_) * static_cast<double>(d_ff_);
  if (expert_weights > kMaxParameters)
    fail(too_many_parameters("n_expert × expert_depth × 2 × d_model × d_ff", expert_weights));
  if (expert_group_ && n_expert_ % expert_group_->size() != 0)
    fail("n_expert = " + std::to_string(n_expert_) + " must be a multiple of the expert group's " +
         std::to_string(expert_group_->size()) + " ranks");
  router_options().validate();
  const auto kinds = RouterRegistry::names();
  if (std::find(kinds.begin(), kinds.end(), router_) == kinds.end()) {
    std::string known;
    for (const auto& k : kinds) known += (known.empty() ? "" : ", ") + k;
    fail("router = '" + router_ + "' is unknown (known: " + known + ")");
  }
}

MoELayerImpl::MoELayerImpl(MoELayerOptions options) : options_(std::move(options)) {
  options_.validate();
  router_ = register_module("router", RouterRegistry::create(options_.router_options()));
  ExpertShard shard;
  if (expert_parallel_size() > 1) {
    shard.count = options_.n_expert() / expert_parallel_size();
    shard.first = shard.count * options_.expert_group()->rank();
  }
  experts_ = register_module(
      "experts", ExpertStack(options_.n_expert(), options_.d_model(), options_.d_ff(),
                             options_.expert_depth(), options_.activation(),
                             options_.seed() ^ 0x9E3779B97F4A7C15ULL, shard));
}

int MoELayerImpl::expert_parallel_size() const {
  return options_.expert_group() ? options_.expert_group()->size() : 1;
}

std::unordered_set<const void*> expert_shard_ids(const torch::nn::Module& model) {
  std::unordered_set<const void*> sharded;
  for (const auto& module : model.modules(/*include_self=*/true)) {
    auto* layer = dynamic_cast<MoELayerImpl*>(module.get());
    if (layer == nullptr || layer->expert_parallel_size() == 1) continue;
    for (const auto& p : layer->experts()->parameters()) sharded.insert(p.unsafeGetTensorImpl());
  }
  return sharded;
}

at::Tensor MoELayerImpl::run_experts_parallel(const at::Tensor& x_sorted,
                                              const std::vector<int64_t>& offsets, bool fast) {
  dist::Communicator& group = *options_.expert_group();
  const int n_rank = group.size();
  const int64_t n_local = experts_->n_expert();  // experts per rank
  // Rows for rank r are those of its experts, contiguous in the plan's expert order.
  std::vector<int64_t> send_rows(n_rank);
  at::Tensor counts = at::empty({options_.n_expert()}, at::kLong);
  int64_t* count = counts.data_ptr<int64_t>();
  for (int r = 0; r < n_rank; ++r) {
    send_rows[r] = offsets[(r + 1) * n_local] - offsets[r * n_local];
    for (int64_t e = r * n_local; e < (r + 1) * n_local; ++e)
      count[e] = offsets[e + 1] - offsets[e];
  }
  // received[s · n_local + e]: rows rank s sends to this rank's expert e.
  const at::Tensor received =
      group.all_to_all(counts, std::vector<int64_t>(n_rank, n_local),
                       std::vector<int64_t>(n_rank, n_local));
  const int64_t* from = received.data_ptr<int64_t>();
  std::vector<int64_t> recv_rows(n_rank, 0);
  for (int s = 0; s < n_rank; ++s)
    for (int64_t e = 0; e < n_local; ++e) recv_rows[s] += from[s * n_local + e];

  // Received rows come grouped by sender, then expert; the experts need them by expert.
  std::vector<int64_t> sender_start(n_rank + 1, 0);
  for (int s = 0; s < n_rank; ++s) sender_start[s + 1] = sender_start[s] + recv_rows[s];
  const int64_t n_received = sender_start[n_rank];
  at::Tensor by_expert = at::empty({n_received}, at::kLong);  // row of the received buffer
  at::Tensor back = at::empty({n_received}, at::kLong);       // its inverse
  int64_t* order = by_expert.data_ptr<int64_t>();
  int64_t* inverse = back.data_ptr<int64_t>();
  std::vector<int64_t> local_offsets(n_local + 1, 0);
  std::vector<int64_t> next(sender_start.begin(), sender_start.end() - 1);
  int64_t row = 0;
  for (int64_t e = 0; e < n_local; ++e) {
    for (int s = 0; s < n_rank; ++s) {
      const int64_t n = from[s * n_local + e];
      for (int64_t i = 0; i < n; ++i, ++row) {
        order[row] = next[s] + i;
        inverse[next[s] + i] = row;
      }
      next[s] += n;
    }
    local_offsets[e + 1] = row;
  }

  const at::Tensor x_received = dist::exchange_rows(group, x_sorted, send_rows, recv_rows);
  const at::Tensor x_local = x_received.index_select(0, by_expert.to(x_sorted.device()));
  at::Tensor y_local = fast ? experts_->forward_sorted_fast(x_local, local_offsets)
                            : experts_->forward_sorted(x_local, local_offsets);
  if (n_received == 0) {
    // No row for this rank's experts: the result is empty, but it must stay in the autograd
    // graph as on the other ranks (through the input and the experts' weights), or this rank
    // would skip the backward exchanges the others wait in. The weights get zero gradients.
    y_local = x_local + experts_->sublayer(0)->w1.sum() * 0;
  }
  const at::Tensor y_received = y_local.index_select(0, back.to(x_sorted.device()));
  return dist::exchange_rows(group, y_received, recv_rows, send_rows);
}

void MoELayerImpl::freeze_routing(bool frozen) {
  router_->set_frozen(frozen);
  for (auto& p : experts_->parameters()) p.set_requires_grad(!frozen);
}

at::Tensor MoELayerImpl::weighted_aux_loss(const std::map<std::string, at::Tensor>& aux) const {
  const std::map<std::string, double> coef = {{"balance", options_.balance_coef()},
                                              {"importance", options_.importance_coef()},
                                              {"load", options_.load_coef()},
                                              {"z", options_.z_loss_coef()}};
  at::Tensor total;
  for (const auto& item : aux) {
    auto it = coef.find(item.first);
    TORCH_CHECK(it != coef.end(), "xmoe::MoELayer: no coefficient for aux loss '", item.first, "'");
    at::Tensor term = item.second * it->second;
    total = total.defined() ? total + term : term;
  }
  return total;
}

MoEOutput MoELayerImpl::forward(const at::Tensor& h, const MoEInputs& inputs) {
  const std::string& name = options_.name();
  if (h.dim() != 2 || h.size(1) != options_.d_model()) {
    std::ostringstream msg;
    msg << "xmoe::MoELayer (layer '" << name << "'): input must be [T, d_model = "
        << options_.d_model() << "], got " << h.sizes();
    throw std::invalid_argument(msg.str());
  }
  if (!h.is_floating_point()) {
    throw std::invalid_argument("xmoe::MoELayer (layer '" + name +
                                "'): input must be floating point, got " +
                                std::string(c10::toString(h.scalar_type())));
  }
  // Padding tokens are removed before routing: they take no capacity and skew no statistic.
  at::Tensor real_index;
  at::Tensor x = h;
  if (inputs.mask.defined()) {
    TORCH_CHECK(inputs.mask.dim() == 1 && inputs.mask.size(0) == h.size(0),
                "xmoe::MoELayer (layer '", name, "'): mask must be [T = ", h.size(0), "], got ",
                inputs.mask.sizes());
    real_index = inputs.mask.to(at::kBool).nonzero().reshape(-1).to(h.device());
    x = h.index_select(0, real_index);
  }
  const int64_t n_tokens = x.size(0);
  // Non-finite input is refused by the router (it names this layer), after padding rows are
  // removed: padding may hold anything.

  MoEOutput out;
  out.input = x.detach();
  out.routing = router_->route(x, RouteInputs{inputs.noise});
  RoutingResult& routing = out.routing;

  const double cf = is_training() ? options_.capacity_factor()
                                  : options_.eval_capacity_factor().value_or(options_.capacity_factor());
  const int64_t capacity = expert_capacity(cf, n_tokens, options_.top_k(), options_.n_expert());
  at::Tensor computed = inputs.computed;
  if (computed.defined()) {
    TORCH_CHECK(computed.dim() == 1 && computed.size(0) == h.size(0), "xmoe::MoELayer (layer '",
                name, "'): computed must be [T = ", h.size(0), "], got ", computed.sizes());
    if (real_index.defined()) computed = computed.index_select(0, real_index.to(computed.device()));
  }
  out.plan = make_dispatch_plan(routing.expert_ids, routing.active, options_.n_expert(), capacity,
                                computed);
  const DispatchPlan& plan = out.plan;

  at::Tensor y;
  const bool fast = options_.expert_path() == ExpertPath::kFast &&
                    ExpertStackImpl::fast_path_supports(x) &&
                    routing.gates.scalar_type() == x.scalar_type();
  if (fast) {
    // Gather rows by expert, grouped GEMMs, gate-weighted combine: custom kernels throughout.
    at::Tensor x_sorted = kernels::gather_rows(x.contiguous(), plan.token_index, plan.row_of_slot);
    at::Tensor y_sorted = expert_parallel_size() > 1
                              ? run_experts_parallel(x_sorted, plan.offsets, true)
                              : experts_->forward_sorted_fast(x_sorted, plan.offsets);
    y = kernels::combine_rows(y_sorted.contiguous(), routing.gates.contiguous(), plan.row_of_slot);
  } else {
    // Reference path: plain autograd ops, one block per expert, weighted scatter-add back.
    at::Tensor token_index = plan.token_index.to(x.device());
    at::Tensor slot_index = plan.slot_index.to(x.device());
    at::Tensor x_sorted = x.index_select(0, token_index);                    // [N, d]
    at::Tensor y_sorted = expert_parallel_size() > 1  // [N, d]
                              ? run_experts_parallel(x_sorted, plan.offsets, false)
                              : experts_->forward_sorted(x_sorted, plan.offsets);
    at::Tensor gate_sorted = routing.gates.reshape({-1}).index_select(0, slot_index);  // [N]
    y = at::zeros_like(x).index_add(0, token_index, y_sorted * gate_sorted.unsqueeze(1));
  }

  routing.gates = routing.gates * plan.kept.to(routing.gates.device()).to(routing.gates.scalar_type());
  routing.stats.dropped_fraction = plan.dropped_fraction();
  routing.stats.path = fast ? "fast" : "reference";
  out.aux_loss = weighted_aux_loss(routing.aux);

  if (real_index.defined()) {
    out.output = at::zeros_like(h).index_copy(0, real_index, y);
  } else {
    out.output = y;
  }
  return out;
}

}  // namespace xmoe
