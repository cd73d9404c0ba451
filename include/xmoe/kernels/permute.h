// Moving token rows into per-expert order and back (the data movement around the grouped
// GEMMs), as autograd functions with hand-written backwards. Float32, contiguous, CPU.
#pragma once

#include <ATen/Tensor.h>

namespace xmoe::kernels {

/// xs[r] = x[token_index[r]]: x [T, d] → xs [N, d].
/// Backward: gx[t] = Σ_j gxs[row_of_slot[t·k + j]] (rows −1 skipped), parallel over tokens.
/// token_index [N] int64; row_of_slot [T·k] int64 (−1 = slot not kept), with k = T·k / T.
at::Tensor gather_rows(const at::Tensor& x, const at::Tensor& token_index,
                       const at::Tensor& row_of_slot);

/// y[t] = Σ_j gates[t, j] · ys[row_of_slot[t·k + j]] (rows −1 contribute nothing):
/// ys [N, d], gates [T, k] → y [T, d]. Differentiable in ys and gates.
at::Tensor combine_rows(const at::Tensor& ys, const at::Tensor& gates,
                        const at::Tensor& row_of_slot);

}  // namespace xmoe::kernels
