// xmoe layer-init: fresh weights for a layer.json, written as safetensors (SPEC §8 names).
#include "commands.h"
#include "output_path.h"

#include "xmoe/io/layer_config.h"
#include "xmoe/io/safetensors.h"
#include "xmoe/moe/moe_layer.h"

#include <iostream>
#include <memory>

namespace xmoe::cli {

namespace {
struct LayerInitArgs {
  std::string config, out;
  uint64_t seed = 0;
};
}  // namespace

void register_layer_init(CLI::App& app) {
  auto args = std::make_shared<LayerInitArgs>();
  CLI::App* cmd = app.add_subcommand("layer-init", "Write freshly initialised weights of a layer");
  cmd->add_option("--config", args->config, "layer.json (SPEC §8)")->required();
  cmd->add_option("--out", args->out, "Output safetensors file")->required();
  cmd->add_option("--seed", args->seed, "Initialisation seed")->capture_default_str();
  cmd->callback([args] {
    refuse_output_over_input(args->out, {{"--config", args->config}});
    MoELayerOptions options = load_layer_config(args->config);
    options.seed(args->seed);
    MoELayer layer(options);
    TensorMap tensors;
    for (const auto& item : layer->named_parameters()) tensors[item.key()] = item.value().detach();
    save_safetensors(args->out, tensors, {{"xmoe_layer_config", layer_config_to_json(options)}});
    std::cout << "wrote " << tensors.size() << " tensors to " << args->out << "\n";
  });
}

}  // namespace xmoe::cli
