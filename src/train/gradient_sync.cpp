#include "xmoe/train/gradient_sync.h"

#include "xmoe/moe/moe_layer.h"

#include <ATen/ATen.h>

#include <unordered_set>
#include <vector>

namespace xmoe {

void synchronize_gradients(torch::nn::Module& model, dist::Communicator& group) {
  if (group.size() == 1) return;
  std::unordered_set<const void*> sharded;  // expert parameters, by storage identity
  for (const auto& module : model.modules(/*include_self=*/true)) {
    auto* layer = dynamic_cast<MoELayerImpl*>(module.get());
    if (layer == nullptr || layer->expert_parallel_size() == 1) continue;
    for (const auto& p : layer->experts()->parameters()) sharded.insert(p.unsafeGetTensorImpl());
  }
  const double inverse_ranks = 1.0 / group.size();
  std::vector<at::Tensor> replicated;
  for (auto& p : model.parameters()) {
    if (!p.requires_grad()) continue;
    if (sharded.count(p.unsafeGetTensorImpl())) {
      if (p.grad().defined()) p.mutable_grad().mul_(inverse_ranks);
      continue;
    }
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
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
