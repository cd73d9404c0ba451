// E feed-forward experts as stacked parameters (never a vector of nn::Linear).
//
// expert_depth = 1:   FFN_e(x) = W2_e · act(W1_e · x + b1_e) + b2_e
// expert_depth = D>1: x ← x + FFN_{e,j}(LayerNorm_{e,j}(x)) for j = 0 … D−1 (BASE layers)
//
// Parameter names (SPEC §8), sub-layer j registered as child module "j":
//   j.w1 [E, d_ff, d_model]  j.b1 [E, d_ff]  j.w2 [E, d_model, d_ff]  j.b2 [E, d_model]
//   j.ln_weight, j.ln_bias [E, d_model]   (only when expert_depth > 1)
//
// A stack may hold a contiguous shard of the E experts (expert parallelism): its tensors then
// have E_local rows, with the values that rows [first, first + E_local) of the whole stack with
// the same seed would have.
#pragma once

#include "xmoe/kernels/activation.h"

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

/// Experts [first, first + count) of a layer's n_expert (count −1: all of them).
struct ExpertShard {
  int64_t first = 0;
  int64_t count = -1;
};

struct ExpertSublayerImpl : torch::nn::Module {
  ExpertSublayerImpl(int64_t n_expert, int64_t d_model, int64_t d_ff, bool layer_norm,
                     uint64_t seed, ExpertShard shard = {});
  at::Tensor w1, b1, w2, b2;       // see the file comment
  at::Tensor ln_weight, ln_bias;   // undefined when expert_depth = 1
};
TORCH_MODULE(ExpertSublayer);

class ExpertStackImpl : public torch::nn::Module {
 public:
  ExpertStackImpl(int64_t n_expert, int64_t d_model, int64_t d_ff, int64_t depth,
                  Activation activation, uint64_t seed, ExpertShard shard = {});

  /// Applies expert e to x [n, d_model] → [n, d_model] (plain autograd ops).
  at::Tensor forward_expert(int64_t e, const at::Tensor& x) const;

  /// Reference grouped computation: x_sorted [N, d_model] holds the rows of expert e in
  /// [offsets[e], offsets[e+1]); returns [N, d_model] in the same order.
  at::Tensor forward_sorted(const at::Tensor& x_sorted, const std::vector<int64_t>& offsets) const;

  /// The same through the fast kernels (kernels::grouped_ffn; float32 CPU only). For
  /// expert_depth > 1 each sub-layer's LayerNorm uses per-row gathers of the expert's weights.
  at::Tensor forward_sorted_fast(const at::Tensor& x_sorted,
                                 const std::vector<int64_t>& offsets) const;

  /// Whether forward_sorted_fast handles tensors like `x` (float32 on the CPU).
  static bool fast_path_supports(const at::Tensor& x);

  /// Experts held here (the shard's count); offsets passed in have n_expert() + 1 entries.
  int64_t n_expert() const { return n_expert_; }
  /// Index of the first held expert in the layer's numbering.
  int64_t first_expert() const { return first_expert_; }
  int64_t depth() const { return static_cast<int64_t>(sublayers_.size()); }
  const ExpertSublayer& sublayer(int64_t j) const { return sublayers_.at(j); }
  Activation activation() const { return activation_; }

 private:
  int64_t n_expert_;
  int64_t first_expert_;
  Activation activation_;
  std::vector<ExpertSublayer> sublayers_;
};
TORCH_MODULE(ExpertStack);

}  // namespace xmoe
