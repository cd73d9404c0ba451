#include "xmoe/kernels/permute.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cstring>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kPermuteRowsPerTask = 64;  // rows per task: a row is d floats of copy or FMA

// out[t] = Σ_j w[t, j] · rows_src[row(t, j)] (w = 1 when `weights` is null): the combine, and
// with unit weights the adjoint of the gather. Parallel over tokens; each output row is written
// by one task only.
at::Tensor sum_rows_per_token(const at::Tensor& src_rows, const float* weights,
                              const at::Tensor& row_of_slot, int64_t n_tokens) {
  const int64_t d = src_rows.size(1);
  const int64_t k = n_tokens == 0 ? 0 : row_of_slot.numel() / n_tokens;
  at::Tensor out = at::empty({n_tokens, d}, src_rows.options());
  const float* src = src_rows.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t* rows = row_of_slot.data_ptr<int64_t>();
  at::parallel_for(0, n_tokens, kPermuteRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* o = dst + t * d;
      std::memset(o, 0, sizeof(float) * d);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = rows[t * k + j];
        if (r < 0) continue;
        const float w = weights ? weights[t * k + j] : 1.f;
        const float* s = src + r * d;
        for (int64_t c = 0; c < d; ++c) o[c] += w * s[c];
      }
    }
  });
  return out;
}

struct GatherRows : torch::autograd::Function<GatherRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& token_index,
                            const at::Tensor& row_of_slot) {
    const int64_t n = token_index.numel(), d = x.size(1);
    at::Tensor xs = at::empty({n, d}, x.options());
    const float* src = x.data_ptr<float>();
    float* dst = xs.data_ptr<float>();
    const int64_t* tok = token_index.data_ptr<int64_t>();
    at::parallel_for(0, n, kPermuteRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) std::memcpy(dst + r * d, src + tok[r] * d, sizeof(float) * d);
    });
    ctx->saved_data["n_tokens"] = x.size(0);
    ctx->saved_data["row_of_slot"] = row_of_slot;
    return xs;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor gxs = grads[0].contiguous();
    at::Tensor gx = sum_rows_per_token(gxs, /*weights=*/nullptr,
                                       ctx->saved_data["row_of_slot"].toTensor(),
                                       ctx->saved_data["n_tokens"].toInt());
    return {gx, at::Tensor(), at::Tensor()};
  }
};

struct CombineRows : torch::autograd::Function<CombineRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& ys, const at::Tensor& gates,
                            const at::Tensor& row_of_slot) {
    at::Tensor y = sum_rows_per_token(ys, gates.data_ptr<float>(), row_of_slot, gates.size(0));
    ctx->save_for_backward({ys, gates, row_of_slot});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& ys = saved[0];
    const at::Tensor& gates = saved[1];
    const at::Tensor& row_of_slot = saved[2];
    at::Tensor gy = grads[0].contiguous();
    const int64_t n_tokens = gates.size(0), k = gates.size(1), d = ys.size(1);
    at::Tensor gys = at::empty_like(ys);
    at::Tensor ggates = at::zeros_like(gates);
    const float* y_rows = ys.data_ptr<float>();
    const float* g = gates.data_ptr<float>();
    const float* gyp = gy.data_ptr<float>();
    const int64_t* rows = row_of_slot.data_ptr<int64_t>();
    float* gys_p = gys.data_ptr<float>();
    float* gg = ggates.data_ptr<float>();
    // Each kept row belongs to exactly one (t, j): writes never collide.
    at::parallel_for(0, n_tokens, kPermuteRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const float* go = gyp + t * d;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = rows[t * k + j];
          if (r < 0) continue;
          const float w = g[t * k + j];
          const float* s = y_rows + r * d;
          float* out = gys_p + r * d;
          float dot = 0.f;
          for (int64_t c = 0; c < d; ++c) {
            dot += go[c] * s[c];
            out[c] = w * go[c];
          }
          gg[t * k + j] = dot;
        }
      }
    });
    return {gys, ggates, at::Tensor()};
  }
};

void check_float_cpu(const at::Tensor& t, const char* fn, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "xmoe::kernels::", fn, ": ", name, " must be a contiguous float32 CPU tensor, got ",
              t.scalar_type(), " on ", t.device());
}

}  // namespace

at::Tensor gather_rows(const at::Tensor& x, const at::Tensor& token_index,
                       const at::Tensor& row_of_slot) {
  check_float_cpu(x, "gather_rows", "x");
  TORCH_CHECK(token_index.scalar_type() == at::kLong && row_of_slot.scalar_type() == at::kLong,
              "xmoe::kernels::gather_rows: indices must be int64");
  return GatherRows::apply(x, token_index.contiguous(), row_of_slot.contiguous());
}

at::Tensor combine_rows(const at::Tensor& ys, const at::Tensor& gates, const at::Tensor& row_of_slot) {
  check_float_cpu(ys, "combine_rows", "ys");
  check_float_cpu(gates, "combine_rows", "gates");
  TORCH_CHECK(row_of_slot.numel() == gates.numel(), "xmoe::kernels::combine_rows: row_of_slot has ",
              row_of_slot.numel(), " entries, gates ", gates.numel());
  return CombineRows::apply(ys, gates, row_of_slot.contiguous());
}

}  // namespace xmoe::kernels
