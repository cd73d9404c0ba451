// Mean cross-entropy of logits against class labels, log-softmax and NLL in one pass.
//
//   loss = (1/N) Σ_i [ lse_i − z_{i, y_i} ],   lse_i = log Σ_j e^{z_ij}
//   ∂z_ij = (∂loss / N) · (e^{z_ij − lse_i} − [j = y_i])
//
// logits z [N, V], labels y [N] int64 in [0, V) → a scalar. Forward reads z twice (row max, then
// Σ e^{z − max}) and keeps only lse [N]; backward writes ∂z in one pass. Why not
// at::cross_entropy_loss: it materialises log_softmax [N, V], gathers, and its backward runs
// another two passes (13 ms of a tiny training step over the [~330, 8000] vocabulary logits).
// float32 on CPU uses a vectorised exp (src/kernels/vec_math.h); float64 uses std::exp (gradient
// checks); other dtypes and devices use at::cross_entropy_loss. N = 0 gives NaN, as a mean over
// nothing does in torch.
#pragma once

#include <ATen/Tensor.h>

namespace xmoe::kernels {

/// Throws c10::Error naming the shape or the first label outside [0, V).
at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& labels);

}  // namespace xmoe::kernels
