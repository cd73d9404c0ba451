#include "xmoe/moe/expert_stack.h"

#include "xmoe/kernels/gemm_weight.h"
#include "xmoe/kernels/grouped_ffn.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>

namespace xmoe {

ExpertSublayerImpl::ExpertSublayerImpl(int64_t n_expert, int64_t d_model, int64_t d_ff,
                                       bool layer_norm, uint64_t seed, ExpertShard shard) {
  at::Generator gen = make_generator(seed);
  const int64_t count = shard.count < 0 ? n_expert : shard.count;
  TORCH_CHECK(shard.first >= 0 && count >= 1 && shard.first + count <= n_expert,
              "xmoe::ExpertStack: shard [", shard.first, ", ", shard.first + count,
              ") is not within the ", n_expert, " experts");
  // A shard draws the whole stack's values and keeps its rows, so the union of the shards
  // equals the unsharded stack of the same seed.
  auto mine = [&](const at::Tensor& all) {
    return count == n_expert ? all : all.narrow(0, shard.first, count).clone();
  };
  // nn.Linear's default range, U(±1/√fan_in), for weights and biases.
  const double bound1 = 1.0 / std::sqrt(static_cast<double>(d_model));
  const double bound2 = 1.0 / std::sqrt(static_cast<double>(d_ff));
  // The weights start where oneDNN's few-row products with them run fastest
  // (xmoe/kernels/gemm_weight.h); the values are those of a plain uniform_init.
  auto placed = [](const at::Tensor& values) {
    return kernels::empty_gemm_weight(values.sizes()).copy_(values);
  };
  w1 = register_parameter("w1", placed(mine(uniform_init({n_expert, d_ff, d_model}, bound1, gen))));
  b1 = register_parameter("b1", mine(uniform_init({n_expert, d_ff}, bound1, gen)));
  w2 = register_parameter("w2", placed(mine(uniform_init({n_expert, d_model, d_ff}, bound2, gen))));
  b2 = register_parameter("b2", mine(uniform_init({n_expert, d_model}, bound2, gen)));
  if (layer_norm) {
    ln_weight = register_parameter("ln_weight", at::ones({count, d_model}));
    ln_bias = register_parameter("ln_bias", at::zeros({count, d_model}));
  }
}

ExpertStackImpl::ExpertStackImpl(int64_t n_expert, int64_t d_model, int64_t d_ff, int64_t depth,
                                 Activation activation, uint64_t seed, ExpertShard shard)
    : n_expert_(shard.count < 0 ? n_expert : shard.count),
      first_expert_(shard.first),
      activation_(activation) {
  for (int64_t j = 0; j < depth; ++j) {
    // Distinct, seed-determined streams per sub-layer.
    sublayers_.push_back(register_module(
        std::to_string(j),
        ExpertSublayer(n_expert, d_model, d_ff, depth > 1, seed * 1000003ULL + 17ULL * (j + 1),
                       shard)));
  }
}

at::Tensor ExpertStackImpl::forward_expert(int64_t e, const at::Tensor& x) const {
  const int64_t d_model = x.size(1);
  at::Tensor out = x;
  for (const auto& sub : sublayers_) {
    at::Tensor in = sub->ln_weight.defined()
                        ? at::layer_norm(out, {d_model}, sub->ln_weight[e], sub->ln_bias[e], 1e-5)
                        : out;
    at::Tensor hidden = apply_activation(at::addmm(sub->b1[e], in, sub->w1[e].t()), activation_);
    at::Tensor ffn = at::addmm(sub->b2[e], hidden, sub->w2[e].t());
    out = sub->ln_weight.defined() ? out + ffn : ffn;
  }
  return out;
}

at::Tensor ExpertStackImpl::forward_sorted(const at::Tensor& x_sorted,
                                           const std::vector<int64_t>& offsets) const {
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == n_expert_ + 1,
              "xmoe::ExpertStack: offsets must have n_expert + 1 = ", n_expert_ + 1,
              " entries, got ", offsets.size());
  const int64_t d_model = x_sorted.size(1);
  at::Tensor out = x_sorted;
  for (const auto& sub : sublayers_) {
    // unbind once per sub-layer: its backward stacks the per-expert gradients in one pass,
    // where indexing w[e] per expert would add E full-size gradient tensors.
    const std::vector<at::Tensor> w1 = sub->w1.unbind(0), b1 = sub->b1.unbind(0),
                                  w2 = sub->w2.unbind(0), b2 = sub->b2.unbind(0);
    std::vector<at::Tensor> ln_w, ln_b;
    if (sub->ln_weight.defined()) {
      ln_w = sub->ln_weight.unbind(0);
      ln_b = sub->ln_bias.unbind(0);
    }
    std::vector<at::Tensor> blocks;
    for (int64_t e = 0; e < n_expert_; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n == 0) continue;  // an expert with no token costs nothing
      at::Tensor x = out.narrow(0, offsets[e], n);
      at::Tensor in = ln_w.empty() ? x : at::layer_norm(x, {d_model}, ln_w[e], ln_b[e], 1e-5);
      at::Tensor ffn = at::addmm(b2[e], apply_activation(at::addmm(b1[e], in, w1[e].t()), activation_),
                                 w2[e].t());
      blocks.push_back(ln_w.empty() ? ffn : x + ffn);
    }
    out = blocks.empty() ? at::zeros_like(out) : at::cat(blocks, 0);
  }
  return out;
}

bool ExpertStackImpl::fast_path_supports(const at::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat;
}

at::Tensor ExpertStackImpl::forward_sorted_fast(const at::Tensor& x_sorted,
                                                const std::vector<int64_t>& offsets) const {
  const int64_t d_model = x_sorted.size(1);
  at::Tensor expert_of_row;  // [N] int64, only needed for the per-expert LayerNorm weights
  if (depth() > 1) {
    at::Tensor counts = at::empty({n_expert_}, at::kLong);
    for (int64_t e = 0; e < n_expert_; ++e) counts[e] = offsets[e + 1] - offsets[e];
    expert_of_row = at::repeat_interleave(at::arange(n_expert_, at::kLong), counts);
  }
  at::Tensor out = x_sorted;
  for (const auto& sub : sublayers_) {
    at::Tensor in = out;
    if (sub->ln_weight.defined()) {
      in = at::layer_norm(out, {d_model}, {}, {}, 1e-5) * sub->ln_weight.index_select(0, expert_of_row) +
           sub->ln_bias.index_select(0, expert_of_row);
    }
    at::Tensor ffn = kernels::grouped_ffn(in.contiguous(), sub->w1, sub->b1, sub->w2, sub->b2,
                                          offsets, activation_);
    out = sub->ln_weight.defined() ? out + ffn : ffn;
  }
  return out;
}

}  // namespace xmoe
