// The routing analysis of a model on fixed "probe" tokens (SPEC §7; X-MoE paper §4.5): which
// expert every probe token goes to in every MoE layer, what the router saw, and the metrics
// built on that — expert loads, representation collapse of the router input and of the hidden
// states, and the routing-fluctuation ratio against an earlier routing of the same tokens.
//
// The probe tokens are drawn once per run from the validation split (the first sequences of
// every language, in file order, the same share of tokens per language) and stored with the
// run (probe_tokens.safetensors), so every checkpoint and every run is measured on them.
#pragma once

#include "xmoe/data/mlm_dataset.h"
#include "xmoe/model/encoder.h"

#include <c10/util/Optional.h>

#include <string>
#include <vector>

namespace xmoe {

struct ProbeTokens {
  at::Tensor input_ids;  // [B, L] int64, uncorrupted (no masking), pad id 0
  at::Tensor mask;       // [B, L] bool, true = real token
  at::Tensor language;   // [B] int64, index into the dataset's languages
  /// [N] int64 language of each real token, in the row-major order of mask.
  at::Tensor token_language() const;
};

/// About `n_tokens` real tokens (whole sequences) spread evenly over the languages.
ProbeTokens select_probe_tokens(const MlmDataset& valid, int64_t n_tokens);
void save_probe_tokens(const std::string& path, const ProbeTokens& probe);
/// Throws xmoe::FileFormatError naming the file and tensor when something is missing or off.
ProbeTokens load_probe_tokens(const std::string& path);

/// One MoE layer's routing of the probe tokens (N = real tokens).
struct ProbeRouting {
  int64_t layer = 0;         // encoder layer index
  at::Tensor expert;         // [N] int64 top-1 expert
  at::Tensor router_input;   // [N, r] what the router scored (h, or z for X-MoE)
  at::Tensor hidden;         // [N, d] hidden states h entering the layer
  at::Tensor counts;         // [E] int64 routed slots per expert (all k)
  double dropped_fraction = 0.0;
};

/// Routes the probe tokens through the model in evaluation mode, without gradients.
std::vector<ProbeRouting> route_probe(MoEEncoder& model, const ProbeTokens& probe);

struct ProbeLayerMetrics {
  int64_t layer = 0;
  std::vector<double> load;  // [E] share of routed slots
  double load_cv = 0, load_max_over_mean = 0, load_entropy = 0, dropped_fraction = 0;
  double rc_router = 0, rc_hidden = 0;  // NaN when undefined (fewer than 2 experts used)
  c10::optional<double> rf;             // against `previous`, when given
};

/// Metrics of one layer; `previous` is the same layer's routing at an earlier checkpoint.
ProbeLayerMetrics probe_layer_metrics(const ProbeRouting& now, const ProbeRouting* previous);

}  // namespace xmoe
