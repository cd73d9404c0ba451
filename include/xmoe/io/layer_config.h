// layer.json (SPEC §8): the complete description of one MoE layer for the parity tool.
// Keys: d_model, d_ff, n_expert, top_k (required); router, gate, normalize_topk,
// second_expert_policy, capacity_factor, activation, expert_depth, d_e, expert_norm,
// temperature_init, balance_temperature, normalize_tokens, dim_reduction, l2_norm,
// balance_coef, importance_coef, load_coef, z_loss_coef, noise_epsilon (optional).
#pragma once

#include "xmoe/moe/moe_layer.h"

#include <string>

namespace xmoe {

/// Parses JSON text; `source` names it in errors. Throws xmoe::FileFormatError for malformed
/// JSON, an unknown key, a wrong type or an invalid value, naming the source and the key.
MoELayerOptions parse_layer_config(const std::string& json_text, const std::string& source);

/// Reads and parses a layer.json file.
MoELayerOptions load_layer_config(const std::string& path);

/// The full resolved configuration as JSON text (every key, defaults filled in).
std::string layer_config_to_json(const MoELayerOptions& options);

}  // namespace xmoe
