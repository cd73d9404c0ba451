#include "xmoe/kernels/activation.h"

#include <ATen/ATen.h>

#include <stdexcept>

namespace xmoe {

Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::kGelu;
  if (name == "relu") return Activation::kRelu;
  throw std::invalid_argument("activation: unknown value '" + name + "' (allowed: gelu, relu)");
}

std::string to_string(Activation activation) {
  return activation == Activation::kGelu ? "gelu" : "relu";
}

at::Tensor apply_activation(const at::Tensor& x, Activation activation) {
  return activation == Activation::kGelu ? at::gelu(x) : at::relu(x);
}

}  // namespace xmoe
