#include "xmoe/train/gradient_sync.h"

#include "xmoe/moe/moe_layer.h"
#include "xmoe/train/fused_adamw.h"

#include <ATen/ATen.h>

#include <cmath>
#include <unordered_set>
#include <vector>

namespace xmoe {

double total_gradient_norm(const torch::nn::Module& model,
                           const std::vector<at::Tensor>& with_grad, dist::Communicator& group) {
  const std::unordered_set<const void*> sharded = expert_shard_ids(model);
  std::vector<at::Tensor> replicated, shards;
  for (const at::Tensor& p : with_grad)
    (sharded.count(p.unsafeGetTensorImpl()) ? shards : replicated).push_back(p);
  std::vector<at::Tensor> shard_sum{at::full({1}, squared_gradient_norm(shards), at::kDouble)};
  group.all_reduce_sum(shard_sum);
  return std::sqrt(squared_gradient_norm(replicated) + shard_sum[0].item<double>());
}

void synchronize_gradients(torch::nn::Module& model, dist::Communicator& group) {
  if (group.size() == 1) return;
  const std::unordered_set<const void*> sharded = expert_shard_ids(model);
  const double inverse_ranks = 1.0 / group.size();
  std::vector<at::Tensor> replicated;
  for (auto& p : model.parameters()) {
    if (!p.requires_grad()) continue;
    // A parameter this rank's batch did not reach (an idle shard of experts) gets zeros, as
    // its rows of the whole model's gradient have: every rank then steps (and checkpoints) the
    // same set of optimizer states.
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    if (sharded.count(p.unsafeGetTensorImpl())) {
      p.mutable_grad().mul_(inverse_ranks);
      continue;
    }
    replicated.push_back(p.grad());
  }
  if (replicated.empty()) return;
  // One flat buffer: one collective instead of one per tensor.
  std::vector<at::Tensor> flat{at::cat(
      [&] {
        std::vector<at::Tensor> rows;
        rows.reserve(replicated.size());
        for (const auto& g : replicated) rows.push_back(g.reshape({-1}));
        return rows;
      }(),
      0)};
  group.all_reduce_sum(flat);
  flat[0].mul_(inverse_ranks);
  int64_t offset = 0;
  for (auto& g : replicated) {
    const int64_t n = g.numel();
    g.copy_(flat[0].narrow(0, offset, n).view(g.sizes()));
    offset += n;
  }
}

}  // namespace xmoe
