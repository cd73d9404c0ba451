// The core of multi-head self-attention, fused for short sequences on CPU.
//
//   per batch row b and head h, with Q, K, V the head's [L, dh] slices of qkv:
//   S = Q Kᵀ / √dh,   S[:, j] = −∞ where key j is padding
//   P = softmax(S) row-wise (a row whose keys are all padding → 0)
//   O = dropout(P) V                                   (dropout of kernels::dropout)
//
// qkv [B, L, 3·d] laid out [B, L, 3, H, dh] (one fused Q/K/V projection), key_padding [B, L]
// bool (true = padding) → context [B, L, d] laid out [B, L, H, dh].
//
// Why: LibTorch 1.13 runs the two batched products as B·H separate GEMM calls, each preceded by
// three select() dispatches, after copying Q, K, V into [B, H, L, dh]; masked_fill, softmax,
// nan_to_num and dropout are each another pass (~20 % of a tiny training step,
// docs/performance.md). Here each (b, h) is one task whose GEMMs read qkv and write the context
// in place through row strides, with the masked row softmax run on its scores while they are
// still in cache (src/kernels/softmax_rows.h); backward uses the saved P and regenerates the
// dropout mask from its key:  dW = dO Vᵀ,  dV = Wᵀ dO,  dP = dropout(dW),  dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √dh,
// dQ = dS K,  dK = dSᵀ Q.
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace xmoe::kernels {

/// float32 / float64 CPU tensors use the fused kernel; any other dtype or device runs
/// attention_reference (with at::dropout). The dropout key is drawn as kernels::dropout draws it,
/// and element (b, h, i, j) of P gets the mask of flat index ((b·H + h)·L + i)·L + j, so the
/// result equals attention_reference with kernels::dropout for the same generator state.
at::Tensor attention(const at::Tensor& qkv, const at::Tensor& key_padding, int64_t n_heads,
                     double dropout, bool train, c10::optional<at::Generator> generator = c10::nullopt);

/// The same function composed of ATen operators (matmul, masked_fill, softmax, nan_to_num) and
/// kernels::dropout: the fallback, and the plain reference the tests compare with.
at::Tensor attention_reference(const at::Tensor& qkv, const at::Tensor& key_padding, int64_t n_heads,
                               double dropout, bool train,
                               c10::optional<at::Generator> generator = c10::nullopt);

}  // namespace xmoe::kernels
