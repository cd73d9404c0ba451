#include "xmoe/kernels/dispatch_plan.h"

#include <ATen/ATen.h>

#include <cmath>

namespace xmoe {

int64_t expert_capacity(double capacity_factor, int64_t n_tokens, int64_t top_k, int64_t n_expert) {
  TORCH_CHECK(capacity_factor >= 0 && std::isfinite(capacity_factor),
              "xmoe::expert_capacity: capacity_factor = ", capacity_factor, " must be >= 0");
  if (capacity_factor == 0) return -1;
  return static_cast<int64_t>(
      std::ceil(capacity_factor * static_cast<double>(top_k * n_tokens) / static_cast<double>(n_expert)));
}

DispatchPlan make_dispatch_plan(const at::Tensor& expert_ids, const at::Tensor& active,
                                int64_t n_expert, int64_t capacity, const at::Tensor& computed) {
  TORCH_CHECK(expert_ids.dim() == 2 && expert_ids.scalar_type() == at::kLong,
              "xmoe::make_dispatch_plan: expert_ids must be [T, k] int64, got ", expert_ids.sizes(),
              " ", expert_ids.scalar_type());
  TORCH_CHECK(n_expert >= 1, "xmoe::make_dispatch_plan: n_expert = ", n_expert, " must be >= 1");
  const int64_t T = expert_ids.size(0), k = expert_ids.size(1);
  at::Tensor ids = expert_ids.detach().cpu().contiguous();
  at::Tensor act = active.defined() ? active.detach().cpu().to(at::kBool).contiguous()
                                    : at::ones({T, k}, at::kBool);
  TORCH_CHECK(act.sizes() == ids.sizes(), "xmoe::make_dispatch_plan: active must be [", T, ", ",
              k, "], got ", act.sizes());
  at::Tensor wanted = computed.defined() ? computed.detach().cpu().to(at::kBool).contiguous()
                                         : at::ones({T}, at::kBool);
  TORCH_CHECK(wanted.dim() == 1 && wanted.size(0) == T, "xmoe::make_dispatch_plan: computed must be [",
              T, "], got ", wanted.sizes());
  const int64_t* id = ids.data_ptr<int64_t>();
  const bool* on = act.data_ptr<bool>();
  const bool* compute = wanted.data_ptr<bool>();

  DispatchPlan plan;
  plan.n_tokens = T;
  plan.top_k = k;
  plan.n_expert = n_expert;
  plan.capacity = capacity;
  plan.kept = at::zeros({T, k}, at::kBool);
  plan.tokens_per_expert = at::zeros({n_expert}, at::kLong);
  bool* kept = plan.kept.data_ptr<bool>();
  int64_t* routed = plan.tokens_per_expert.data_ptr<int64_t>();

  // Pass 1, in fill order (slot-major, then token): count and apply capacity.
  std::vector<int64_t> kept_count(n_expert, 0);
  std::vector<int64_t> row_count(n_expert, 0);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t s = t * k + j;
      if (!on[s]) continue;
      const int64_t e = id[s];
      TORCH_CHECK(e >= 0 && e < n_expert, "xmoe::make_dispatch_plan: expert id ", e,
                  " of token ", t, " slot ", j, " is outside [0, ", n_expert, ")");
      ++routed[e];
      ++plan.n_active;
      if (capacity >= 0 && kept_count[e] >= capacity) {
        ++plan.n_dropped;
        continue;
      }
      ++kept_count[e];
      kept[s] = true;
      if (compute[t]) ++row_count[e];
    }
  }
  // Pass 2: exclusive prefix sum, then a stable scatter in the same fill order.
  plan.offsets.assign(n_expert + 1, 0);
  for (int64_t e = 0; e < n_expert; ++e) plan.offsets[e + 1] = plan.offsets[e] + row_count[e];
  const int64_t n_rows = plan.offsets[n_expert];
  plan.slot_index = at::empty({n_rows}, at::kLong);
  plan.token_index = at::empty({n_rows}, at::kLong);
  int64_t* slot_out = plan.slot_index.data_ptr<int64_t>();
  int64_t* token_out = plan.token_index.data_ptr<int64_t>();
  plan.row_of_slot = at::full({T * k}, -1, at::kLong);
  int64_t* row_of = plan.row_of_slot.data_ptr<int64_t>();
  std::vector<int64_t> cursor(plan.offsets.begin(), plan.offsets.end() - 1);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t s = t * k + j;
      if (!kept[s] || !compute[t]) continue;
      const int64_t row = cursor[id[s]]++;
      slot_out[row] = s;
      token_out[row] = t;
      row_of[s] = row;
    }
  }
  return plan;
}

}  // namespace xmoe
