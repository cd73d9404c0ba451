// Gradients of data-parallel + expert-parallel training (docs/expert-parallel.md).
//
// Each of the W ranks trains on its own batch with loss L_r; the step must be the one a single
// process would take on the mean loss L = (1/W) Σ_r L_r. Replicated parameters (everything
// but the sharded experts) hold ∂L_r/∂θ on rank r and need the mean over ranks; an expert
// parameter lives on one rank only, and backward already brought every rank's contribution to
// it through the exchanges, Σ_r ∂L_r/∂θ, so it needs only the 1/W.
#pragma once

#include "xmoe/dist/communicator.h"

#include <torch/nn/module.h>

#include <vector>

namespace xmoe {

/// After backward on every rank, with the same model on each (same parameter order and shapes
/// of the replicated parameters): replicated gradients ← mean over the ranks (one all-reduce of
/// one flat buffer), expert gradients of expert-parallel MoE layers ← gradient / W. A parameter
/// that requires grad but has none on this rank (not reached by its batch) gets a zero gradient,
/// so every rank reduces the same layout and keeps the same optimizer states. Nothing happens
/// for a group of one rank.
void synchronize_gradients(torch::nn::Module& model, dist::Communicator& group);

/// ‖g‖₂ of the whole model after synchronize_gradients: of the gradients of `with_grad` (this
/// rank's parameters that have one) — replicated ones once, expert shards of every rank (one
/// all-reduce). For clipped_adamw_step's total_norm.
double total_gradient_norm(const torch::nn::Module& model,
                           const std::vector<at::Tensor>& with_grad, dist::Communicator& group);

}  // namespace xmoe
