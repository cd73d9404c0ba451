#include "xmoe/train/sharded_state.h"

#include "xmoe/moe/moe_layer.h"

#include <ATen/ATen.h>

#include <unordered_set>

namespace xmoe {
namespace {

bool is_shard(const std::string& key, const std::set<std::string>& sharded) {
  static const std::string kModel = "model.", kOptim = "optim.";
  if (key.rfind(kModel, 0) == 0) return sharded.count(key.substr(kModel.size())) > 0;
  if (key.rfind(kOptim, 0) != 0) return false;
  for (const std::string suffix : {".exp_avg", ".exp_avg_sq"}) {
    if (key.size() > kOptim.size() + suffix.size() &&
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        sharded.count(key.substr(kOptim.size(), key.size() - kOptim.size() - suffix.size())))
      return true;
  }
  return false;
}

bool is_per_rank(const std::string& key) {
  for (const std::string& prefix : kPerRankPrefixes)
    if (key.rfind(prefix, 0) == 0) return true;
  return false;
}

std::string rank_prefix(int rank) { return "rank" + std::to_string(rank) + "."; }

}  // namespace

std::set<std::string> sharded_parameter_names(const torch::nn::Module& model) {
  const std::unordered_set<const void*> shards = expert_shard_ids(model);
  std::set<std::string> names;
  for (const auto& item : model.named_parameters())
    if (shards.count(item.value().unsafeGetTensorImpl())) names.insert(item.key());
  return names;
}

int64_t whole_model_parameters(const torch::nn::Module& model, int ranks) {
  const std::set<std::string> shards = sharded_parameter_names(model);
  int64_t n = 0;
  for (const auto& p : model.named_parameters())
    n += p.value().numel() * (shards.count(p.key()) ? ranks : 1);
  return n;
}

TensorMap gather_training_state(const TensorMap& local, const std::set<std::string>& sharded,
                                dist::Communicator& group) {
  if (group.size() == 1) return local;
  // Every rank walks the same keys below; a rank with another set would pair tensors wrongly.
  std::vector<at::Tensor> counts{at::full({1}, static_cast<int64_t>(local.size()), at::kLong)};
  group.all_reduce_sum(counts);
  if (counts[0].item<int64_t>() != static_cast<int64_t>(local.size()) * group.size())
    throw std::runtime_error("xmoe: the ranks hold training states of different sizes (this rank " +
                             std::to_string(local.size()) + " tensors); no checkpoint written");
  TensorMap whole;
  const bool root = group.rank() == 0;
  // std::map order: every rank walks the same keys in the same order.
  for (const auto& item : local) {
    const std::string& key = item.first;
    if (is_shard(key, sharded)) {
      std::vector<at::Tensor> parts = group.gather(item.second.contiguous());
      if (root) whole[key] = at::cat(parts, 0);
    } else if (is_per_rank(key)) {
      std::vector<at::Tensor> parts = group.gather(item.second.contiguous());
      if (!root) continue;
      whole[key] = parts[0];
      for (int r = 1; r < group.size(); ++r) whole[rank_prefix(r) + key] = parts[r];
    } else if (root) {
      whole[key] = item.second;
    }
  }
  if (root) whole["dist.world_size"] = at::full({1}, group.size(), at::kLong);
  return whole;
}

TensorMap local_training_state(const TensorMap& whole, const std::set<std::string>& sharded,
                               const dist::Communicator& group, const std::string& path) {
  const int64_t size = group.size();
  auto written = whole.find("dist.world_size");
  const int64_t written_size =
      written == whole.end() ? 1 : written->second.reshape({-1})[0].item<int64_t>();
  if (written_size != size)
    throw FileFormatError(path + ": the checkpoint was written by a run on " +
                          std::to_string(written_size) + " rank(s); resume it on as many (" +
                          "xmoe pretrain --nproc " + std::to_string(written_size) +
                          "), this run has " + std::to_string(size));
  if (size == 1) return whole;
  TensorMap mine;
  const std::string own = rank_prefix(group.rank());
  for (const auto& item : whole) {
    const std::string& key = item.first;
    if (key.rfind("rank", 0) == 0) {  // another rank's or this rank's own tensor
      if (key.rfind(own, 0) == 0) mine[key.substr(own.size())] = item.second;
      continue;
    }
    if (key == "dist.world_size") continue;
    if (is_per_rank(key) && group.rank() != 0) continue;
    if (is_shard(key, sharded)) {
      const at::Tensor& t = item.second;
      if (t.dim() < 1 || t.size(0) % size != 0)
        throw FileFormatError(path + ": tensor '" + key + "' of shape " + c10::str(t.sizes()) +
                              " does not split over " + std::to_string(size) + " ranks");
      const int64_t rows = t.size(0) / size;
      mine[key] = t.narrow(0, rows * group.rank(), rows).contiguous();
    } else {
      mine[key] = item.second;
    }
  }
  return mine;
}

}  // namespace xmoe
