#include "xmoe/kernels/embedding.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cstring>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename T>
void gather(const T* w, const int64_t* ids, T* out, int64_t n, int64_t d) {
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) std::memcpy(out + i * d, w + ids[i] * d, sizeof(T) * d);
  });
}

// gw = 0 except gw[ids[i]] += g[i]. Threads own disjoint vocabulary ranges; each scans all ids.
template <typename T>
void scatter_add(const T* g, const int64_t* ids, T* gw, int64_t n, int64_t vocab, int64_t d) {
  at::parallel_for(0, vocab, 1024, [&](int64_t begin, int64_t end) {
    std::memset(gw + begin * d, 0, sizeof(T) * (end - begin) * d);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = ids[i];
      if (v < begin || v >= end) continue;
      T* dst = gw + v * d;
      const T* src = g + i * d;
      for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
    }
  });
}

struct EmbeddingLookup : torch::autograd::Function<EmbeddingLookup> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& ids) {
    const int64_t d = weight.size(1);
    at::Tensor flat = ids.reshape({-1});
    std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
    shape.push_back(d);
    at::Tensor out = at::empty(shape, weight.options());
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "xmoe::kernels::embedding_lookup", [&] {
      gather(weight.data_ptr<scalar_t>(), flat.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
             flat.numel(), d);
    });
    ctx->save_for_backward({flat});
    ctx->saved_data["vocab"] = weight.size(0);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor flat = ctx->get_saved_variables()[0];
    const int64_t vocab = ctx->saved_data["vocab"].toInt();
    const int64_t d = grads[0].size(-1);
    at::Tensor g = grads[0].contiguous();
    at::Tensor gw = at::empty({vocab, d}, g.options());
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "xmoe::kernels::embedding_lookup backward", [&] {
      scatter_add(g.data_ptr<scalar_t>(), flat.data_ptr<int64_t>(), gw.data_ptr<scalar_t>(),
                  flat.numel(), vocab, d);
    });
    return {gw, at::Tensor()};
  }
};

}  // namespace

at::Tensor embedding_lookup(const at::Tensor& weight, const at::Tensor& ids) {
  TORCH_CHECK(weight.dim() == 2, "xmoe::kernels::embedding_lookup: weight must be [V, d], got ",
              weight.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong, "xmoe::kernels::embedding_lookup: ids must be int64, got ",
              ids.scalar_type());
  const bool fast = weight.device().is_cpu() && ids.device().is_cpu() &&
                    (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble);
  if (!fast) return at::embedding(weight, ids);
  at::Tensor flat = ids.contiguous();
  if (flat.numel() > 0) {
    const int64_t lo = flat.min().item<int64_t>(), hi = flat.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < weight.size(0), "xmoe::kernels::embedding_lookup: id ",
                lo < 0 ? lo : hi, " is outside the vocabulary [0, ", weight.size(0), ")");
  }
  return EmbeddingLookup::apply(weight.contiguous(), flat);
}

}  // namespace xmoe::kernels
