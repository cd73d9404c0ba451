#include "xmoe/train/training_state.h"

#include "optimizer_state_key.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <mutex>
#include <sstream>
#include <type_traits>

namespace xmoe {

namespace {

const std::string kModel = "model.";
const std::string kOptim = "optim.";

[[noreturn]] void fail_training_state(const std::string& path, const std::string& message) {
  throw FileFormatError(path + ": " + message);
}

void copy_checked(at::Tensor& target, const TensorMap& tensors, const std::string& name,
                  const std::string& path) {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail_training_state(path, "missing tensor '" + name + "'");
  if (it->second.sizes() != target.sizes())
    fail_training_state(path, "tensor '" + name + "' has shape " + c10::str(it->second.sizes()) +
                                  ", the model expects " + c10::str(target.sizes()));
  if (!it->second.is_floating_point() && target.is_floating_point())
    fail_training_state(path, "tensor '" + name + "' has dtype " + c10::str(it->second.scalar_type()) +
                                  ", expected a floating-point tensor");
  // A weight or moment that is NaN or inf would only show later as a "diverged" step that
  // blames the learning rate; the file is what is wrong.
  if (it->second.is_floating_point() && !at::isfinite(it->second).all().item<bool>())
    fail_training_state(path, "tensor '" + name + "' holds non-finite values (NaN or inf)");
  target.copy_(it->second);
  if (target.is_floating_point() && target.scalar_type() != it->second.scalar_type() &&
      !at::isfinite(target).all().item<bool>())
    fail_training_state(path, "tensor '" + name + "' does not fit in " +
                                  c10::str(target.scalar_type()) + " (values overflow to inf)");
}

}  // namespace

TensorMap module_state(const torch::nn::Module& module) {
  TensorMap out;
  for (const auto& item : module.named_parameters()) out[kModel + item.key()] = item.value().detach().clone();
  for (const auto& item : module.named_buffers()) out[kModel + item.key()] = item.value().detach().clone();
  return out;
}

void load_module_state(torch::nn::Module& module, const TensorMap& tensors, const std::string& path) {
  torch::NoGradGuard no_grad;
  size_t expected = 0;
  for (auto& item : module.named_parameters()) {
    copy_checked(item.value(), tensors, kModel + item.key(), path);
    ++expected;
  }
  for (auto& item : module.named_buffers()) {
    copy_checked(item.value(), tensors, kModel + item.key(), path);
    ++expected;
  }
  // Every expected tensor was found; any further "model." tensor belongs to another model.
  size_t present = 0;
  std::string extra;
  const auto parameters = module.named_parameters();
  const auto buffers = module.named_buffers();
  for (const auto& [name, t] : tensors) {
    if (name.rfind(kModel, 0) != 0) continue;
    ++present;
    const std::string key = name.substr(kModel.size());
    if (extra.empty() && !parameters.contains(key) && !buffers.contains(key)) extra = name;
  }
  if (present != expected)
    fail_training_state(path, "tensor '" + extra +
                                  "' does not belong to this model (the checkpoint is of another "
                                  "architecture)");
}

TensorMap adamw_state(const torch::optim::AdamW& optimizer, const torch::nn::Module& module) {
  using Map = std::decay_t<decltype(optimizer.state())>;
  TensorMap out;
  for (const auto& item : module.named_parameters()) {
    auto it = optimizer.state().find(optimizer_state_key<Map>(item.value()));
    if (it == optimizer.state().end()) continue;
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    out[kOptim + item.key() + ".exp_avg"] = s.exp_avg().clone();
    out[kOptim + item.key() + ".exp_avg_sq"] = s.exp_avg_sq().clone();
    out[kOptim + item.key() + ".step"] = at::full({1}, s.step(), at::kLong);
  }
  return out;
}

void load_adamw_state(torch::optim::AdamW& optimizer, const torch::nn::Module& module,
                      const TensorMap& tensors, const std::string& path) {
  using Map = std::decay_t<decltype(optimizer.state())>;
  optimizer.state().clear();
  for (const auto& item : module.named_parameters()) {
    const std::string base = kOptim + item.key();
    if (tensors.count(base + ".step") == 0) continue;  // no step taken for this parameter yet
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    at::Tensor exp_avg = at::zeros_like(item.value()), exp_avg_sq = at::zeros_like(item.value());
    copy_checked(exp_avg, tensors, base + ".exp_avg", path);
    copy_checked(exp_avg_sq, tensors, base + ".exp_avg_sq", path);
    state->step(require_int64_scalar(tensors, base + ".step", path));
    state->exp_avg(exp_avg);
    state->exp_avg_sq(exp_avg_sq);
    optimizer.state()[optimizer_state_key<Map>(item.value())] = std::move(state);
  }
}

int64_t require_int64_scalar(const TensorMap& tensors, const std::string& name,
                             const std::string& path) {
  const at::Tensor& value = require_tensor(tensors, name, path);
  if (value.numel() != 1 || value.scalar_type() != at::kLong)
    fail_training_state(path, "tensor '" + name + "' must be one int64");
  return value.item<int64_t>();
}

at::Tensor generator_state(const at::Generator& generator) {
  at::Generator g = generator;  // shares the implementation
  std::lock_guard<std::mutex> lock(g.mutex());
  return g.get_state().to(at::kLong);
}

void load_generator_state(at::Generator& generator, const TensorMap& tensors,
                          const std::string& name, const std::string& path) {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail_training_state(path, "missing tensor '" + name + "'");
  const at::Tensor& bytes = it->second;
  if (bytes.dim() != 1 || bytes.scalar_type() != at::kLong || bytes.numel() == 0 ||
      bytes.min().item<int64_t>() < 0 || bytes.max().item<int64_t>() > 255)
    fail_training_state(path, "tensor '" + name + "' is not a generator state (int64 bytes 0..255)");
  std::lock_guard<std::mutex> lock(generator.mutex());
  try {
    generator.set_state(bytes.to(at::kByte));
  } catch (const c10::Error& e) {
    fail_training_state(
        path, "tensor '" + name + "' is not a valid generator state: " + e.what_without_backtrace());
  }
}

}  // namespace xmoe
