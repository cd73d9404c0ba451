// Embedding lookup with a fast, deterministic backward.
//
//   rows = W[ids]                         W [V, d], ids [...] int64 → rows [..., d]
//   ∂W[v] = Σ_{i : ids_i = v} ∂rows[i]     (summed in index order; every other row 0)
//
// Why not at::embedding: LibTorch 1.13's CPU embedding backward adds one gradient row per index
// through a `select` + `add_` dispatch (~9 000 operator calls, ~6 % of a tiny training step,
// docs/performance.md). Here backward is one pass, parallel over vocabulary ranges (each thread
// owns its rows, so the sums are deterministic).
#pragma once

#include <ATen/Tensor.h>

namespace xmoe::kernels {

/// float32 / float64 CPU weights use this kernel; any other dtype or device falls back to
/// at::embedding. Throws c10::Error naming the first id outside [0, V).
at::Tensor embedding_lookup(const at::Tensor& weight, const at::Tensor& ids);

}  // namespace xmoe::kernels
