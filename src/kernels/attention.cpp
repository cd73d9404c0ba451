#include "xmoe/kernels/attention.h"

#include "xmoe/kernels/dropout.h"
#include "xmoe/kernels/gemm.h"

#include "softmax_rows.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Shape {
  int64_t batch, len, heads, head_dim;
  int64_t d() const { return heads * head_dim; }
  int64_t probs_offset(int64_t bh) const { return bh * len * len; }  // of P[b, h] in [B, H, L, L]
};

struct DropoutSpec {
  bool on = false;
  double p = 0;
  uint64_t key = 0;
};

// bias[b, j] = 0 for a real key, −∞ for padding: the mask of the row softmax.
template <typename T>
std::vector<T> key_bias(const at::Tensor& padding) {
  const bool* pad = padding.data_ptr<bool>();
  std::vector<T> bias(padding.numel());
  for (size_t i = 0; i < bias.size(); ++i)
    bias[i] = pad[i] ? -std::numeric_limits<T>::infinity() : T(0);
  return bias;
}

template <typename T>
at::Tensor forward_kernel(const at::Tensor& qkv, const at::Tensor& padding, const Shape& s,
                          const DropoutSpec& drop, at::Tensor& probs_out) {
  const int64_t L = s.len, dh = s.head_dim, d = s.d(), H = s.heads;
  const T scale = T(1) / std::sqrt(static_cast<T>(dh));
  const T* x = qkv.data_ptr<T>();
  const std::vector<T> bias = key_bias<T>(padding);
  probs_out = at::empty({s.batch, H, L, L}, qkv.options());
  T* probs = probs_out.data_ptr<T>();
  at::Tensor context = at::empty({s.batch, L, d}, qkv.options());
  T* out = context.data_ptr<T>();
  // One task per (b, h): S = scale · Q Kᵀ, the masked row softmax while S is in cache, then
  // O = dropout(P) V.
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> dropped(drop.on ? L * L : 0);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const T* q = x + b * L * 3 * d + h * dh;
      T* P = probs + s.probs_offset(bh);
      gemm(false, true, L, L, dh, scale, q, 3 * d, q + d, 3 * d, T(0), P, L);
      detail::masked_softmax_rows(P, L, L, bias.data() + b * L);
      const T* W = P;
      if (drop.on) {
        apply_dropout_mask(P, dropped.data(), L * L, s.probs_offset(bh), drop.p, drop.key);
        W = dropped.data();
      }
      gemm(false, false, L, dh, L, T(1), W, L, q + 2 * d, 3 * d, T(0), out + b * L * d + h * dh, d);
    }
  });
  return context;
}

template <typename T>
at::Tensor backward_kernel(const at::Tensor& qkv, const at::Tensor& probs, const at::Tensor& grad,
                           const Shape& s, const DropoutSpec& drop) {
  const int64_t L = s.len, dh = s.head_dim, d = s.d(), H = s.heads;
  const T scale = T(1) / std::sqrt(static_cast<T>(dh));
  const T* x = qkv.data_ptr<T>();
  const T* P_all = probs.data_ptr<T>();
  const T* g = grad.data_ptr<T>();
  at::Tensor dqkv = at::empty_like(qkv);  // every element written: each task owns its slices
  T* dx = dqkv.data_ptr<T>();
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    // With dropout, the mask's factors (0 or the keep scale) are hashed once per (b, h) and
    // applied twice: to P for dV and to dS.
    const int64_t masked = drop.on ? L * L : 0;
    std::vector<T> ones(masked, T(1)), keep(masked), dropped(masked), dS(L * L);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int64_t row0 = b * L * 3 * d + h * dh;  // Q of (b, h); K at +d, V at +2d
      const T* P = P_all + s.probs_offset(bh);
      const T* W = P;
      if (drop.on) {
        apply_dropout_mask(ones.data(), keep.data(), L * L, s.probs_offset(bh), drop.p, drop.key);
        for (int64_t j = 0; j < L * L; ++j) dropped[j] = P[j] * keep[j];
        W = dropped.data();
      }
      const T* dO = g + b * L * d + h * dh;
      gemm(false, true, L, L, dh, T(1), dO, d, x + row0 + 2 * d, 3 * d, T(0), dS.data(), L);  // dW
      gemm(true, false, L, dh, L, T(1), W, L, dO, d, T(0), dx + row0 + 2 * d, 3 * d);        // dV
      if (drop.on) {
        for (int64_t j = 0; j < L * L; ++j) dS[j] *= keep[j];
      }
      detail::softmax_backward_rows(dS.data(), P, L, L, scale);
      gemm(false, false, L, dh, L, T(1), dS.data(), L, x + row0 + d, 3 * d, T(0), dx + row0, 3 * d);  // dQ
      gemm(true, false, L, dh, L, T(1), dS.data(), L, x + row0, 3 * d, T(0), dx + row0 + d, 3 * d);   // dK
    }
  });
  return dqkv;
}

struct FusedAttention : torch::autograd::Function<FusedAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& qkv, const at::Tensor& padding,
                            int64_t heads, double p, bool dropout_on, int64_t key) {
    const Shape s{qkv.size(0), qkv.size(1), heads, qkv.size(2) / 3 / heads};
    const DropoutSpec drop{dropout_on, p, static_cast<uint64_t>(key)};
    at::Tensor probs, context;
    AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "xmoe::kernels::attention", [&] {
      context = forward_kernel<scalar_t>(qkv, padding, s, drop, probs);
    });
    ctx->save_for_backward({qkv, probs});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["p"] = p;
    ctx->saved_data["dropout_on"] = dropout_on;
    ctx->saved_data["key"] = key;
    return context;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& qkv = saved[0];
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const Shape s{qkv.size(0), qkv.size(1), heads, qkv.size(2) / 3 / heads};
    const DropoutSpec drop{ctx->saved_data["dropout_on"].toBool(), ctx->saved_data["p"].toDouble(),
                           static_cast<uint64_t>(ctx->saved_data["key"].toInt())};
    at::Tensor grad = grads[0].contiguous();
    at::Tensor dqkv;
    AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "xmoe::kernels::attention backward", [&] {
      dqkv = backward_kernel<scalar_t>(qkv, saved[1], grad, s, drop);
    });
    return {dqkv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

void check_shapes(const at::Tensor& qkv, const at::Tensor& key_padding, int64_t n_heads) {
  TORCH_CHECK(qkv.dim() == 3 && n_heads >= 1 && qkv.size(2) % (3 * n_heads) == 0,
              "xmoe::kernels::attention: qkv must be [B, L, 3·d] with d divisible by n_heads = ",
              n_heads, ", got ", qkv.sizes());
  TORCH_CHECK(key_padding.scalar_type() == at::kBool && key_padding.dim() == 2 &&
                  key_padding.size(0) == qkv.size(0) && key_padding.size(1) == qkv.size(1),
              "xmoe::kernels::attention: key_padding must be [B, L] = [", qkv.size(0), ", ",
              qkv.size(1), "] bool, got ", key_padding.sizes(), " ", key_padding.scalar_type());
}

}  // namespace

at::Tensor attention_reference(const at::Tensor& qkv, const at::Tensor& key_padding, int64_t n_heads,
                               double dropout, bool train, c10::optional<at::Generator> generator) {
  check_shapes(qkv, key_padding, n_heads);
  const int64_t b = qkv.size(0), l = qkv.size(1), d = qkv.size(2) / 3, dh = d / n_heads;
  // [B, L, 3, H, dh] → three [B, H, L, dh]
  at::Tensor heads = qkv.view({b, l, 3, n_heads, dh}).permute({2, 0, 3, 1, 4});
  at::Tensor q = heads[0], k = heads[1], v = heads[2];
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh));
  scores = scores.masked_fill(key_padding.view({b, 1, 1, l}), -std::numeric_limits<float>::infinity());
  at::Tensor weights = kernels::dropout(at::softmax(scores, -1).nan_to_num(0.0), dropout, train, generator);
  return at::matmul(weights, v).transpose(1, 2).reshape({b, l, d});
}

at::Tensor attention(const at::Tensor& qkv, const at::Tensor& key_padding, int64_t n_heads,
                     double dropout, bool train, c10::optional<at::Generator> generator) {
  check_shapes(qkv, key_padding, n_heads);
  const bool fused = qkv.device().is_cpu() && key_padding.device().is_cpu() &&
                     (qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kDouble);
  if (!fused) return attention_reference(qkv, key_padding, n_heads, dropout, train, generator);
  if (!(dropout >= 0.0 && dropout < 1.0))
    throw std::invalid_argument("xmoe::kernels::attention: dropout = " + std::to_string(dropout) +
                                " must be in [0, 1)");
  const bool dropout_on = train && dropout > 0.0;
  const uint64_t key = dropout_on ? draw_dropout_key(generator) : 0;
  return FusedAttention::apply(qkv.contiguous(), key_padding.contiguous(), n_heads, dropout, dropout_on,
                               static_cast<int64_t>(key));
}

}  // namespace xmoe::kernels
