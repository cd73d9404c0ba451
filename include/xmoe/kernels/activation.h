// Expert activation functions.
#pragma once

#include <ATen/Tensor.h>

#include <string>

namespace xmoe {

enum class Activation { kGelu, kRelu };  // GELU is the exact erf form

Activation parse_activation(const std::string& name);  // "gelu" | "relu"; throws listing them
std::string to_string(Activation activation);
at::Tensor apply_activation(const at::Tensor& x, Activation activation);

}  // namespace xmoe
