// Transformer encoder with Mixture-of-Experts sub-layers and a tied masked-LM head
// (the pre-training model of the X-MoE paper, §4.1; SPEC §6).
//
//   ids [B, L] ─ token embedding + learned position embedding ─ dropout ─▶ x [B, L, d]
//   N layers, pre-LN (default):  x ← x + drop(Attn(LN(x), pad mask))
//                                x ← x + drop(FFN(LN(x)))    FFN = dense, or MoE where placed
//            post-LN option:     x ← LN(x + drop(Attn(x)));  x ← LN(x + drop(FFN(x)))
//   final LN (pre-LN) ─ MLM head: LN(gelu(x W + b)) · Eᵀ + b_vocab  (E = token embedding, tied)
//
// MoE sub-layers see the real (non-padding) tokens only; their aux losses are summed.
#pragma once

#include "xmoe/moe/moe_layer.h"

#include <ATen/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

namespace xmoe {

struct EncoderOptions {
  EncoderOptions(int64_t vocab_size, int64_t d_model, int64_t n_layers, int64_t n_heads,
                 int64_t d_ff)
      : vocab_size_(vocab_size), d_model_(d_model), n_layers_(n_layers), n_heads_(n_heads),
        d_ff_(d_ff) {}

  TORCH_ARG(int64_t, vocab_size);
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, n_layers);
  TORCH_ARG(int64_t, n_heads);
  /// Hidden width of the dense FFN sub-layers.
  TORCH_ARG(int64_t, d_ff);
  TORCH_ARG(int64_t, max_len) = 128;
  TORCH_ARG(double, dropout) = 0.1;
  TORCH_ARG(double, attention_dropout) = 0.1;
  /// Pre-LN (true, default) or post-LN (the original Transformer / BERT) blocks.
  TORCH_ARG(bool, pre_norm) = true;
  /// Indices of the layers whose FFN is an MoE layer (empty = the dense baseline).
  TORCH_ARG(std::vector<int64_t>, moe_layers) = {};
  /// Options of every MoE sub-layer; d_model is taken from here, seed offset per layer.
  TORCH_ARG(c10::optional<MoELayerOptions>, moe) = c10::nullopt;
  TORCH_ARG(int64_t, pad_id) = 0;
  TORCH_ARG(uint64_t, seed) = 0;
  /// mlm() runs the last layer after its attention only at the predicted positions (and the
  /// final LayerNorm and head there): exact, since everything after attention is per position
  /// and the other positions' outputs are unused. An MoE last layer still routes every token
  /// (aux loss, capacity and statistics unchanged) and runs its experts for these positions.
  TORCH_ARG(bool, prune_last_layer) = true;

 public:
  /// Throws std::invalid_argument naming the first invalid field.
  void validate() const;
};

/// Multi-head self-attention with a key padding mask.
class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(int64_t d_model, int64_t n_heads, double dropout);
  /// x [B, L, d], key_padding [B, L] bool (true = padding) → [B, L, d].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& key_padding);
  /// The two halves of forward: the attention context [B, L, d] before the output projection,
  /// and that projection (any leading shape).
  at::Tensor context(const at::Tensor& x, const at::Tensor& key_padding);
  at::Tensor project(const at::Tensor& context);

 private:
  int64_t n_heads_;
  double dropout_;  // on the attention weights
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};
TORCH_MODULE(SelfAttention);

/// One encoder block; its FFN is dense or an MoE layer.
class EncoderLayerImpl : public torch::nn::Module {
 public:
  EncoderLayerImpl(const EncoderOptions& options, int64_t index);
  /// x [B, L, d], padding [B, L] bool. Returns the new x; an MoE layer's output in `moe_out`.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& padding, MoEOutput* moe_out);
  /// The same block computed only at `rows` ([M] int64 indices into the B·L positions) after the
  /// attention: returns [M, d], equal to forward(...).reshape({B·L, d}).index_select(0, rows).
  at::Tensor forward_rows(const at::Tensor& x, const at::Tensor& padding, const at::Tensor& rows,
                          MoEOutput* moe_out);

  bool is_moe() const { return !moe_.is_empty(); }
  MoELayer& moe() { return moe_; }

 private:
  at::Tensor dense_ffn(const at::Tensor& x);  // x [..., d]
  /// x [B, L, d] → [B, L, d]; `computed` [B·L] bool as MoEInputs::computed.
  at::Tensor moe_ffn(const at::Tensor& x, const at::Tensor& padding, const at::Tensor& computed,
                     MoEOutput* moe_out);
  at::Tensor drop(const at::Tensor& x);  // residual-branch dropout (kernels::dropout)
  // The norm/residual wiring around the two sub-layers, pre- or post-LN (header comment).
  at::Tensor attention_input(const at::Tensor& x);
  at::Tensor after_attention(const at::Tensor& x, const at::Tensor& attended);
  at::Tensor ffn_input(const at::Tensor& h);
  at::Tensor after_ffn(const at::Tensor& h, const at::Tensor& y);

  bool pre_norm_;
  double dropout_;
  SelfAttention attention_{nullptr};
  torch::nn::LayerNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
  MoELayer moe_{nullptr};
};
TORCH_MODULE(EncoderLayer);

struct EncoderOutput {
  at::Tensor hidden;               // [B, L, d] final hidden states ([M, d] inside mlm(), below)
  at::Tensor aux_loss;             // scalar: Σ over MoE layers of their weighted aux losses
  std::vector<MoEOutput> moe;      // one per MoE layer, in layer order
  std::vector<int64_t> moe_layer_index;
  std::vector<at::Tensor> moe_input;  // [T_real, d] hidden states h entering each MoE layer
};

struct MlmOutput {
  at::Tensor loss;      // scalar: mean cross-entropy over the predicted positions
  at::Tensor logits;    // [M, V] at the positions with a label (labels != −100)
  int64_t n_predicted = 0;
  EncoderOutput encoder;
};

class MoEEncoderImpl : public torch::nn::Module {
 public:
  explicit MoEEncoderImpl(EncoderOptions options);

  /// ids [B, L] int64 (pad_id = padding).
  EncoderOutput encode(const at::Tensor& ids);
  /// Masked-LM loss: labels [B, L] int64, −100 = not predicted. Logits are computed only at the
  /// predicted positions (the vocabulary projection dominates otherwise).
  MlmOutput mlm(const at::Tensor& ids, const at::Tensor& labels);

  /// Frozen routing for fine-tuning (SPEC §5) on every MoE layer.
  void freeze_routing(bool frozen = true);

  const EncoderOptions& options() const { return options_; }
  std::vector<EncoderLayer>& layers() { return layers_; }

 private:
  /// rows undefined: all positions, hidden [B, L, d]; else the last layer only at rows, hidden
  /// [M, d] in the order of rows.
  EncoderOutput run(const at::Tensor& ids, const at::Tensor& rows);

  EncoderOptions options_;
  torch::nn::Embedding tokens_{nullptr}, positions_{nullptr};
  std::vector<EncoderLayer> layers_;
  torch::nn::LayerNorm final_norm_{nullptr};
  torch::nn::Linear head_transform_{nullptr};
  torch::nn::LayerNorm head_norm_{nullptr};
  at::Tensor head_bias_;
};
TORCH_MODULE(MoEEncoder);

}  // namespace xmoe
