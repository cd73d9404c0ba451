#include "xmoe/train/routing_probe.h"

#include "xmoe/analysis/expert_load.h"
#include "xmoe/analysis/representation_collapse.h"
#include "xmoe/analysis/routing_consistency.h"
#include "xmoe/io/safetensors.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>

namespace xmoe {

at::Tensor ProbeTokens::token_language() const {
  return language.unsqueeze(1).expand_as(mask).masked_select(mask);
}

ProbeTokens select_probe_tokens(const MlmDataset& valid, int64_t n_tokens) {
  const int64_t n_lang = valid.n_languages();
  const int64_t quota = std::max<int64_t>(1, n_tokens / std::max<int64_t>(1, n_lang));
  std::vector<std::pair<int64_t, int64_t>> chosen;  // (language, sequence)
  int64_t max_len = 1;
  for (int64_t l = 0; l < n_lang; ++l) {
    const PackedSequences& seqs = valid.sequences(l);
    int64_t taken = 0;
    for (int64_t i = 0; i < seqs.size() && taken < quota; ++i) {
      chosen.emplace_back(l, i);
      taken += seqs.length(i);
      max_len = std::max(max_len, seqs.length(i));
    }
  }
  const auto b = static_cast<int64_t>(chosen.size());
  ProbeTokens probe;
  probe.input_ids = at::zeros({b, max_len}, at::kLong);
  probe.language = at::empty({b}, at::kLong);
  auto ids = probe.input_ids.accessor<int64_t, 2>();
  auto lang = probe.language.accessor<int64_t, 1>();
  for (int64_t row = 0; row < b; ++row) {
    const auto [l, i] = chosen[static_cast<size_t>(row)];
    const PackedSequences& seqs = valid.sequences(l);
    const int32_t* data = seqs.data(i);
    for (int64_t j = 0; j < seqs.length(i); ++j) ids[row][j] = data[j];
    lang[row] = l;
  }
  probe.mask = probe.input_ids.ne(Tokenizer::kPadId);
  return probe;
}

void save_probe_tokens(const std::string& path, const ProbeTokens& probe) {
  save_safetensors(path, {{"input_ids", probe.input_ids},
                          {"mask", probe.mask.to(at::kLong)},
                          {"language", probe.language}});
}

ProbeTokens load_probe_tokens(const std::string& path) {
  const TensorMap t = load_safetensors(path);
  ProbeTokens probe;
  probe.input_ids = require_tensor(t, "input_ids", path);
  probe.mask = require_tensor(t, "mask", path);
  probe.language = require_tensor(t, "language", path);
  if (probe.input_ids.dim() != 2 || probe.input_ids.scalar_type() != at::kLong ||
      probe.mask.sizes() != probe.input_ids.sizes() || probe.mask.scalar_type() != at::kLong ||
      probe.language.dim() != 1 || probe.language.size(0) != probe.input_ids.size(0) ||
      probe.language.scalar_type() != at::kLong)
    throw FileFormatError(path + ": probe tokens must be input_ids [B, L], mask [B, L] and "
                                 "language [B], all int64");
  probe.mask = probe.mask.ne(0);
  if (!probe.input_ids.ne(Tokenizer::kPadId).eq(probe.mask).all().item<bool>())
    throw FileFormatError(path + ": 'mask' does not match the padding of 'input_ids'");
  return probe;
}

std::vector<ProbeRouting> route_probe(MoEEncoder& model, const ProbeTokens& probe) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  EncoderOutput out = model->encode(probe.input_ids);
  model->train(was_training);
  std::vector<ProbeRouting> layers;
  for (size_t i = 0; i < out.moe.size(); ++i) {
    const RoutingResult& r = out.moe[i].routing;
    ProbeRouting p;
    p.layer = out.moe_layer_index[i];
    p.expert = r.expert_ids.select(1, 0).contiguous();
    p.router_input = r.router_input;
    p.hidden = out.moe_input[i];
    p.counts = r.stats.tokens_per_expert;
    p.dropped_fraction = r.stats.dropped_fraction;
    layers.push_back(std::move(p));
  }
  return layers;
}

ProbeLayerMetrics probe_layer_metrics(const ProbeRouting& now, const ProbeRouting* previous) {
  ProbeLayerMetrics m;
  m.layer = now.layer;
  const analysis::ExpertLoadStats load = analysis::expert_load_stats(now.counts, now.dropped_fraction);
  m.load = load.load;
  m.load_cv = load.cv;
  m.load_max_over_mean = load.max_over_mean;
  m.load_entropy = load.entropy;
  m.dropped_fraction = load.dropped_fraction;
  m.rc_router = analysis::representation_collapse(now.router_input, now.expert).rc;
  m.rc_hidden = analysis::representation_collapse(now.hidden, now.expert).rc;
  if (previous != nullptr) m.rf = analysis::routing_fluctuation(previous->expert, now.expert);
  return m;
}

}  // namespace xmoe
