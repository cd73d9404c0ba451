// Inverted dropout with a counter-based mask, for training on CPU.
//
//   y = x ⊙ m · 2¹⁶ / (2¹⁶ − t),   m_i = [ h(key, i) ≥ t ],   t = ⌊p · 2¹⁶⌉,
//   i = flat element index
//
// h is a 16-bit draw: one half of a 32-bit integer hash of the element index and a per-call
// 64-bit key (two rounds of the "lowbias32" mixer; each hash serves two elements). p is thus
// rounded to a multiple of 2⁻¹⁶ (p < 2⁻¹⁷ drops nothing), and the scale is the exact inverse of
// the rounded keep rate, so E[y] = x. Why not at::dropout: LibTorch's CPU bernoulli_ draws one
// mt19937 value per element on one thread, 8-13 % of a training step here (docs/performance.md);
// the hash runs vectorised on every core, and backward regenerates the mask from the key
// instead of storing it.
//
// The key is one random64() draw from the generator (default: the global CPU generator, which
// the trainer seeds and checkpoints), so a run is reproducible and resumes bit-identically.
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace xmoe::kernels {

/// x of any shape → y of the same shape. Returns x itself when !train or p == 0.
/// float32 / float64 CPU tensors use the hash mask; any other dtype or device falls back to
/// at::dropout (LibTorch's own mask). Throws std::invalid_argument unless 0 ≤ p < 1.
at::Tensor dropout(const at::Tensor& x, double p, bool train,
                   c10::optional<at::Generator> generator = c10::nullopt);

/// One random64() draw from `generator` (default: the global CPU generator), under its lock:
/// the key of one dropout call.
uint64_t draw_dropout_key(c10::optional<at::Generator> generator = c10::nullopt);

/// out[j] = in[j] · keep(first + j) · scale for j in [0, n), on the calling thread: dropout()'s
/// mask for the flat elements [first, first + n) of a tensor, for kernels that fuse dropout
/// (kernels::attention). `in` and `out` may be the same buffer.
void apply_dropout_mask(const float* in, float* out, int64_t n, int64_t first, double p, uint64_t key);
void apply_dropout_mask(const double* in, double* out, int64_t n, int64_t first, double p,
                        uint64_t key);

/// The keep mask the kernel applies for `key` to a tensor of `numel` elements: [numel] bool.
at::Tensor dropout_keep_mask(int64_t numel, double p, uint64_t key);

}  // namespace xmoe::kernels
