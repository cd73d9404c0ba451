// Sentence classification head for fine-tuning the encoder: a linear map of a sentence vector h
// (the mean of the token states, or the [CLS] state; train/finetune.h),
//
//   logits = W · drop(h) + b          h [B, d] → logits [B, C],   W ~ N(0, 0.02), b = 0
//
// Why not the RoBERTa / XLM-R head, W₂ · tanh(W₁ · h + b₁) + b₂: the encoder's final states
// share a large common component (±1 per dimension after the final LayerNorm) beside small
// differences between sentences; while fitting the class prior, AdamW grew W₁ until tanh
// saturated on that component, and the head's output no longer depended on the input: on the
// generated two-class task of tests/test_finetune.cpp it stayed at chance for 150-300 steps at
// lr 1e-2 ([CLS] and mean pooling alike), where the linear head is right on every training
// paragraph within 40.
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

  /// h [B, d_model] → logits [B, n_classes]; dropout only in training mode.
  at::Tensor forward(const at::Tensor& h);

  int64_t n_classes() const { return out_->options.out_features(); }

 private:
  double dropout_;
  torch::nn::Linear out_{nullptr};
};
TORCH_MODULE(ClassificationHead);

}  // namespace xmoe
