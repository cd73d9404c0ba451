// Sentence classification head for fine-tuning the encoder (the RoBERTa / XLM-R head): from the
// final hidden state of the [CLS] position,
//
//   logits = W₂ · drop(tanh(W₁ · drop(h_cls) + b₁)) + b₂        h_cls [B, d] → logits [B, C]
//
// W₁ [d, d], W₂ [C, d] ~ N(0, 0.02) from the head's own seed, biases 0.
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace xmoe {

class ClassificationHeadImpl : public torch::nn::Module {
 public:
  ClassificationHeadImpl(int64_t d_model, int64_t n_classes, double dropout, uint64_t seed);

  /// h_cls [B, d_model] → logits [B, n_classes]; dropout only in training mode.
  at::Tensor forward(const at::Tensor& h_cls);

  int64_t n_classes() const { return out_->options.out_features(); }

 private:
  double dropout_;
  torch::nn::Linear dense_{nullptr}, out_{nullptr};
};
TORCH_MODULE(ClassificationHead);

}  // namespace xmoe
