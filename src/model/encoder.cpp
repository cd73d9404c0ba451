#include "xmoe/model/encoder.h"

#include "xmoe/kernels/attention.h"
#include "xmoe/kernels/cross_entropy.h"
#include "xmoe/kernels/dropout.h"
#include "xmoe/kernels/embedding.h"
#include "xmoe/kernels/gelu.h"
#include "xmoe/kernels/linear.h"
#include "xmoe/util/init.h"
#include "xmoe/util/size_limits.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

namespace xmoe {

void EncoderOptions::validate() const {
  auto fail = [](const std::string& m) { throw std::invalid_argument("xmoe::EncoderOptions: " + m); };
  auto positive = [&](const char* key, int64_t v) {
    if (v < 1) fail(std::string(key) + " = " + std::to_string(v) + " must be >= 1");
  };
  positive("vocab_size", vocab_size_);
  positive("d_model", d_model_);
  positive("n_layers", n_layers_);
  positive("n_heads", n_heads_);
  positive("d_ff", d_ff_);
  positive("max_len", max_len_);
  const double d = static_cast<double>(d_model_);
  const double dense_weights =
      (static_cast<double>(vocab_size_) + static_cast<double>(max_len_)) * d +
      static_cast<double>(n_layers_) * (4.0 * d * d + 2.0 * d * static_cast<double>(d_ff_));
  if (dense_weights > kMaxParameters)
    fail(too_many_parameters("(vocab_size + max_len) × d_model + n_layers × (4 × d_model² + "
                             "2 × d_model × d_ff)", dense_weights));
  if (d_model_ % n_heads_ != 0)
    fail("d_model = " + std::to_string(d_model_) + " must be divisible by n_heads = " +
         std::to_string(n_heads_));
  for (double p : {dropout_, attention_dropout_}) {
    if (!(p >= 0 && p < 1)) fail("dropout = " + std::to_string(p) + " must be in [0, 1)");
  }
  if (pad_id_ < 0 || pad_id_ >= vocab_size_)
    fail("pad_id = " + std::to_string(pad_id_) + " must be in [0, vocab_size)");
  std::set<int64_t> seen;
  for (int64_t i : moe_layers_) {
    if (i < 0 || i >= n_layers_)
      fail("moe_layers entry " + std::to_string(i) + " must be in [0, n_layers = " +
           std::to_string(n_layers_) + ")");
    if (!seen.insert(i).second) fail("moe_layers lists layer " + std::to_string(i) + " twice");
  }
  if (!moe_layers_.empty()) {
    if (!moe_) fail("moe_layers is set but the MoE options are missing");
    if (moe_->d_model() != d_model_)
      fail("moe.d_model = " + std::to_string(moe_->d_model()) + " must equal d_model = " +
           std::to_string(d_model_));
    moe_->validate();
  }
}

// ---- attention -----------------------------------------------------------------------------

SelfAttentionImpl::SelfAttentionImpl(int64_t d_model, int64_t n_heads, double dropout)
    : n_heads_(n_heads), dropout_(dropout) {
  qkv_ = register_module("qkv", torch::nn::Linear(d_model, 3 * d_model));
  out_ = register_module("out", torch::nn::Linear(d_model, d_model));
}

at::Tensor SelfAttentionImpl::context(const at::Tensor& x, const at::Tensor& key_padding) {
  at::Tensor qkv = kernels::linear(x, qkv_->weight, qkv_->bias);
  return kernels::attention(qkv, key_padding, n_heads_, dropout_, is_training());
}

at::Tensor SelfAttentionImpl::project(const at::Tensor& context) {
  return kernels::linear(context, out_->weight, out_->bias);
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& x, const at::Tensor& key_padding) {
  return project(context(x, key_padding));
}

// ---- block ---------------------------------------------------------------------------------

EncoderLayerImpl::EncoderLayerImpl(const EncoderOptions& options, int64_t index)
    : pre_norm_(options.pre_norm()), dropout_(options.dropout()) {
  const int64_t d = options.d_model();
  attention_ = register_module("attention",
                               SelfAttention(d, options.n_heads(), options.attention_dropout()));
  norm1_ = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  norm2_ = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  const auto& placed = options.moe_layers();
  if (std::find(placed.begin(), placed.end(), index) != placed.end()) {
    MoELayerOptions moe = *options.moe();
    moe.seed(moe.seed() + 7919 * static_cast<uint64_t>(index + 1))
        .name("encoder.layers." + std::to_string(index) + ".moe");
    moe_ = register_module("moe", MoELayer(moe));
  } else {
    fc1_ = register_module("fc1", torch::nn::Linear(d, options.d_ff()));
    fc2_ = register_module("fc2", torch::nn::Linear(options.d_ff(), d));
  }
}

at::Tensor EncoderLayerImpl::drop(const at::Tensor& x) {
  return kernels::dropout(x, dropout_, is_training());
}

at::Tensor EncoderLayerImpl::dense_ffn(const at::Tensor& x) {
  at::Tensor hidden = kernels::gelu(kernels::linear(x, fc1_->weight, fc1_->bias));
  return kernels::linear(hidden, fc2_->weight, fc2_->bias);
}

at::Tensor EncoderLayerImpl::moe_ffn(const at::Tensor& x, const at::Tensor& padding,
                                     const at::Tensor& computed, MoEOutput* moe_out) {
  const int64_t b = x.size(0), l = x.size(1), d = x.size(2);
  MoEInputs inputs;
  inputs.mask = (~padding).reshape({-1});
  inputs.computed = computed;
  MoEOutput out = moe_->forward(x.reshape({b * l, d}), inputs);
  at::Tensor y = out.output.view({b, l, d});
  if (moe_out) *moe_out = std::move(out);
  return y;
}

// Pre-LN: LN before each sub-layer, plain residual after; post-LN: LN after the residual.
at::Tensor EncoderLayerImpl::attention_input(const at::Tensor& x) {
  return pre_norm_ ? norm1_->forward(x) : x;
}
at::Tensor EncoderLayerImpl::after_attention(const at::Tensor& x, const at::Tensor& attended) {
  return pre_norm_ ? x + drop(attended) : norm1_->forward(x + drop(attended));
}
at::Tensor EncoderLayerImpl::ffn_input(const at::Tensor& h) {
  return pre_norm_ ? norm2_->forward(h) : h;
}
at::Tensor EncoderLayerImpl::after_ffn(const at::Tensor& h, const at::Tensor& y) {
  return pre_norm_ ? h + drop(y) : norm2_->forward(h + drop(y));
}

at::Tensor EncoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& padding,
                                     MoEOutput* moe_out) {
  at::Tensor h = after_attention(x, attention_->forward(attention_input(x), padding));
  at::Tensor z = ffn_input(h);
  return after_ffn(h, is_moe() ? moe_ffn(z, padding, at::Tensor(), moe_out) : dense_ffn(z));
}

at::Tensor EncoderLayerImpl::forward_rows(const at::Tensor& x, const at::Tensor& padding,
                                          const at::Tensor& rows, MoEOutput* moe_out) {
  const int64_t d = x.size(2);
  auto at_rows = [&](const at::Tensor& t) { return t.reshape({-1, d}).index_select(0, rows); };
  if (is_moe()) {
    // The router needs every token's hidden state (aux loss, capacity, statistics), so the
    // attention half runs in full; the experts and what follows run at `rows` only.
    at::Tensor computed = at::zeros({x.size(0) * x.size(1)}, padding.options()).index_fill_(0, rows, true);
    at::Tensor h = after_attention(x, attention_->forward(attention_input(x), padding));
    return after_ffn(at_rows(h), at_rows(moe_ffn(ffn_input(h), padding, computed, moe_out)));
  }
  // Dense: only the attention context needs every position (keys and values).
  at::Tensor context = at_rows(attention_->context(attention_input(x), padding));
  at::Tensor h = after_attention(at_rows(x), attention_->project(context));
  return after_ffn(h, dense_ffn(ffn_input(h)));
}

// ---- encoder -------------------------------------------------------------------------------

MoEEncoderImpl::MoEEncoderImpl(EncoderOptions options) : options_(std::move(options)) {
  options_.validate();
  const int64_t d = options_.d_model(), v = options_.vocab_size();
  tokens_ = register_module("tokens", torch::nn::Embedding(v, d));
  positions_ = register_module("positions", torch::nn::Embedding(options_.max_len(), d));
  torch::nn::ModuleList layer_list;
  for (int64_t i = 0; i < options_.n_layers(); ++i) {
    layers_.push_back(EncoderLayer(options_, i));
    layer_list->push_back(layers_.back());
  }
  register_module("layers", layer_list);  // parameter names "layers.<i>.…"
  if (options_.pre_norm()) {
    final_norm_ = register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  }
  head_transform_ = register_module("head_transform", torch::nn::Linear(d, d));
  head_norm_ = register_module("head_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  head_bias_ = register_parameter("head_bias", at::zeros({v}));

  // BERT initialisation from the encoder's own seed (MoE layers initialise from theirs):
  // weights and embeddings N(0, 0.02), biases 0, LayerNorm 1 / 0.
  at::Generator gen = make_generator(options_.seed());
  at::NoGradGuard no_grad;
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    if (name.find(".moe.") != std::string::npos) continue;
    at::Tensor& p = item.value();
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    if (is_norm) {
      p.fill_(is_bias ? 0.0 : 1.0);
    } else if (is_bias) {
      p.zero_();
    } else {
      p.normal_(0.0, 0.02, gen);
    }
  }
}

EncoderOutput MoEEncoderImpl::encode(const at::Tensor& ids) { return run(ids, at::Tensor()); }

EncoderOutput MoEEncoderImpl::run(const at::Tensor& ids, const at::Tensor& rows) {
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong,
              "xmoe::MoEEncoder: ids must be [B, L] int64, got ", ids.sizes(), " ", ids.scalar_type());
  const int64_t l = ids.size(1);
  TORCH_CHECK(l <= options_.max_len(), "xmoe::MoEEncoder: sequence length ", l,
              " exceeds max_len = ", options_.max_len());
  at::Tensor padding = ids.eq(options_.pad_id());  // [B, L]
  at::Tensor pos = at::arange(l, ids.options()).unsqueeze(0);
  at::Tensor embedded = kernels::embedding_lookup(tokens_->weight, ids) +
                        kernels::embedding_lookup(positions_->weight, pos);
  at::Tensor x = kernels::dropout(embedded, options_.dropout(), is_training());

  EncoderOutput out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    EncoderLayer& layer = layers_[i];
    MoEOutput moe;
    MoEOutput* moe_out = layer->is_moe() ? &moe : nullptr;
    x = rows.defined() && i + 1 == layers_.size() ? layer->forward_rows(x, padding, rows, moe_out)
                                                   : layer->forward(x, padding, moe_out);
    if (!moe_out) continue;
    out.aux_loss = out.aux_loss.defined() ? out.aux_loss + moe.aux_loss : moe.aux_loss;
    out.moe_input.push_back(moe.input);
    out.moe.push_back(std::move(moe));
    out.moe_layer_index.push_back(static_cast<int64_t>(i));
  }
  out.hidden = options_.pre_norm() ? final_norm_->forward(x) : x;
  if (!out.aux_loss.defined()) out.aux_loss = at::zeros({}, x.options());
  return out;
}

MlmOutput MoEEncoderImpl::mlm(const at::Tensor& ids, const at::Tensor& labels) {
  TORCH_CHECK(labels.sizes() == ids.sizes(), "xmoe::MoEEncoder::mlm: labels must match ids ",
              ids.sizes(), ", got ", labels.sizes());
  MlmOutput out;
  at::Tensor flat_labels = labels.reshape({-1});
  at::Tensor where = flat_labels.ne(-100).nonzero().reshape({-1});
  out.n_predicted = where.numel();
  at::Tensor h;
  if (options_.prune_last_layer() && out.n_predicted > 0) {
    out.encoder = run(ids, where.to(ids.device()));
    h = out.encoder.hidden;
  } else {
    out.encoder = encode(ids);
    h = out.encoder.hidden.reshape({-1, options_.d_model()}).index_select(0, where);
  }
  h = kernels::gelu(kernels::linear(h, head_transform_->weight, head_transform_->bias));
  h = head_norm_->forward(h);
  out.logits = kernels::linear(h, tokens_->weight, head_bias_);  // tied to the input embedding
  out.loss = out.n_predicted == 0
                 ? at::zeros({}, h.options())
                 : kernels::cross_entropy(out.logits, flat_labels.index_select(0, where));
  return out;
}

void MoEEncoderImpl::freeze_routing(bool frozen) {
  for (auto& layer : layers_) {
    if (layer->is_moe()) layer->moe()->freeze_routing(frozen);
  }
}

}  // namespace xmoe
