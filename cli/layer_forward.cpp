// xmoe layer-forward: runs one layer from files (SPEC §8) so any implementation can be compared
// with ours: forward, and backward of sum(output · grad_output) when a grad-output is given.
#include "commands.h"
#include "output_path.h"

#include "xmoe/io/layer_config.h"
#include "xmoe/io/safetensors.h"
#include "xmoe/kernels/nonfinite.h"
#include "xmoe/moe/moe_layer.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>

namespace xmoe::cli {

namespace {

struct LayerForwardArgs {
  std::string config, weights, input, out, grad_output;
  bool train = false;
};

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << sizes;
  return s.str();
}

void check_tensor(const at::Tensor& t, const std::string& name, const std::string& path,
                  at::IntArrayRef shape, bool floating) {
  if (floating && !(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble)) {
    throw FileFormatError(path + ": tensor '" + name + "' must be F32 or F64, got " +
                          std::string(c10::toString(t.scalar_type())));
  }
  if (t.sizes() != shape) {
    throw FileFormatError(path + ": tensor '" + name + "' must have shape " + shape_string(shape) +
                          ", got " + shape_string(t.sizes()));
  }
  if (floating) {
    const int64_t bad = t.numel() - at::isfinite(t).sum().item<int64_t>();
    if (bad > 0) {
      throw FileFormatError(path + ": tensor '" + name + "' has " + std::to_string(bad) +
                            " non-finite value(s)");
    }
  }
}

// `t` in the layer's dtype. Finite F64 values beyond the F32 range would become inf.
at::Tensor converted(const at::Tensor& t, at::ScalarType dtype, const std::string& name,
                     const std::string& path) {
  at::Tensor out = t.to(dtype);
  if (!at::isfinite(out).all().item<bool>())
    throw FileFormatError(path + ": tensor '" + name + "' has values beyond the range of " +
                          std::string(c10::toString(dtype)) + ", the input's dtype");
  return out;
}

void reject_unknown(const TensorMap& tensors, const std::set<std::string>& known,
                    const std::string& path) {
  for (const auto& item : tensors) {
    if (known.count(item.first) == 0) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw FileFormatError(path + ": unexpected tensor '" + item.first + "' (expected: " + list + ")");
    }
  }
}

void run_layer_forward(const LayerForwardArgs& args) {
  refuse_output_over_input(args.out, {{"--config", args.config},
                                      {"--weights", args.weights},
                                      {"--input", args.input},
                                      {"--grad-output", args.grad_output}});
  MoELayerOptions options = load_layer_config(args.config);
  const TensorMap inputs = load_safetensors(args.input);
  reject_unknown(inputs, {"input", "noise"}, args.input);
  at::Tensor input = require_tensor(inputs, "input", args.input);
  if (input.dim() != 2) {
    throw FileFormatError(args.input + ": tensor 'input' must be [T, d_model], got " +
                          shape_string(input.sizes()));
  }
  const int64_t n_tokens = input.size(0);
  check_tensor(input, "input", args.input, {n_tokens, options.d_model()}, true);
  const at::ScalarType dtype = input.scalar_type();
  at::Tensor noise;
  if (inputs.count("noise")) {
    noise = inputs.at("noise");
    check_tensor(noise, "noise", args.input, {n_tokens, options.n_expert()}, true);
    noise = converted(noise, dtype, "noise", args.input);
  }

  // The layer runs in the input's dtype; weights are converted to it.
  MoELayer layer(options);
  layer->to(dtype);
  const TensorMap weights = load_safetensors(args.weights);
  std::set<std::string> names;
  {
    at::NoGradGuard no_grad;
    for (auto& item : layer->named_parameters()) {
      names.insert(item.key());
      const at::Tensor& w = require_tensor(weights, item.key(), args.weights);
      check_tensor(w, item.key(), args.weights, item.value().sizes(), true);
      item.value().copy_(converted(w, dtype, item.key(), args.weights));
    }
  }
  reject_unknown(weights, names, args.weights);
  layer->train(args.train);

  at::Tensor grad_output;
  if (!args.grad_output.empty()) {
    const TensorMap g = load_safetensors(args.grad_output);
    reject_unknown(g, {"grad_output"}, args.grad_output);
    grad_output = require_tensor(g, "grad_output", args.grad_output);
    check_tensor(grad_output, "grad_output", args.grad_output, {n_tokens, options.d_model()}, true);
    grad_output = converted(grad_output, dtype, "grad_output", args.grad_output);
    input.set_requires_grad(true);
  }

  MoEOutput out = layer->forward(input, MoEInputs{at::Tensor(), noise, at::Tensor()});
  TensorMap result;
  result["output"] = out.output.detach();
  result["expert_ids"] = out.routing.expert_ids.detach().to(at::kLong);
  result["gates"] = out.routing.gates.detach();
  result["scores"] = out.routing.scores.detach();
  for (const auto& item : out.routing.aux) result["aux." + item.first] = item.second.detach().to(dtype);

  if (grad_output.defined()) {
    (out.output * grad_output).sum().backward();
    result["grad.input"] = input.grad();
    for (auto& item : layer->named_parameters()) {
      const at::Tensor& g = item.value().grad();
      // A weight the objective does not reach (a fixed temperature) has a zero gradient.
      result["grad." + item.key()] = g.defined() ? g.detach() : at::zeros_like(item.value());
    }
  }
  // Finite inputs can still overflow inside the layer (weights near the float32 limit): a
  // parity file of inf/NaN would compare as a mismatch, or not at all; refuse it instead.
  for (const auto& [name, t] : result) {
    if (!t.is_floating_point()) continue;
    const int64_t bad = kernels::count_nonfinite(t);
    if (bad > 0)
      throw std::runtime_error("the layer's result '" + name + "' has " + std::to_string(bad) +
                               " non-finite value(s): the weights or input overflow " +
                               std::string(c10::toString(dtype)) + " inside the layer; nothing "
                               "written to " + args.out);
  }
  save_safetensors(args.out, result);
  std::cout << "wrote " << result.size() << " tensors to " << args.out << " (" << n_tokens
            << " tokens, " << (args.train ? "training" : "evaluation") << " mode, "
            << c10::toString(dtype) << ")\n";
}

}  // namespace

void register_layer_forward(CLI::App& app) {
  auto args = std::make_shared<LayerForwardArgs>();
  CLI::App* cmd = app.add_subcommand(
      "layer-forward", "Run one MoE layer from files (SPEC §8), optionally with backward");
  cmd->add_option("--config", args->config, "layer.json")->required();
  cmd->add_option("--weights", args->weights, "Weights (safetensors, SPEC §8 names)")->required();
  cmd->add_option("--input", args->input, "Input safetensors: 'input' [T, d_model], optional "
                                          "'noise' [T, E]")->required();
  cmd->add_option("--out", args->out, "Output safetensors file")->required();
  cmd->add_option("--grad-output", args->grad_output,
                  "safetensors with 'grad_output' [T, d_model]: also run backward");
  cmd->add_flag("--train", args->train, "Training mode (noise, jitter, train capacity)");
  cmd->callback([args] { run_layer_forward(*args); });
}

}  // namespace xmoe::cli
