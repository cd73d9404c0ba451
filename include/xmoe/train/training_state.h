// The training state as named tensors, for checkpoints (docs/run-directory.md):
//   model.<name>                 every parameter and buffer of the model
//   optim.<name>.exp_avg|exp_avg_sq, optim.<name>.step [1] int64   AdamW moments per parameter
//   rng.torch                    the default CPU generator (dropout)
//   rng.<name>                   further generators (router noise), named by the caller
// Loading checks that every expected tensor is there with the right shape and finite values
// (also after conversion to the model's dtype) and names the file and tensor when one is not.
#pragma once

#include "xmoe/io/safetensors.h"

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <string>

namespace xmoe {

/// Parameters and buffers of `module` under "model.".
TensorMap module_state(const torch::nn::Module& module);
/// Copies them back into `module` (no autograd). Unknown "model." tensors are an error too:
/// the checkpoint belongs to another architecture.
void load_module_state(torch::nn::Module& module, const TensorMap& tensors, const std::string& path);

/// AdamW moments and step counts of `module`'s parameters (those with a state) under "optim.".
TensorMap adamw_state(const torch::optim::AdamW& optimizer, const torch::nn::Module& module);
void load_adamw_state(torch::optim::AdamW& optimizer, const torch::nn::Module& module,
                      const TensorMap& tensors, const std::string& path);

/// The one int64 value of tensor `name` (a counter or step); throws FileFormatError naming
/// `path` and the tensor when it is missing or not a single int64.
int64_t require_int64_scalar(const TensorMap& tensors, const std::string& name,
                             const std::string& path);

/// A CPU generator's state bytes [n] (as int64 values 0..255, safetensors has no U8 here).
at::Tensor generator_state(const at::Generator& generator);
void load_generator_state(at::Generator& generator, const TensorMap& tensors,
                          const std::string& name, const std::string& path);

}  // namespace xmoe
