// Masked-LM corruption (SPEC §6; Devlin et al. 2019, BERT §3.1 "Task #1: Masked LM").
//
//   ids [B, L] int64, mask [B, L] bool (true = real token, false = padding)
//   eligible[b, i] = mask[b, i] ∧ ids[b, i] >= first_regular_id       (never pad/cls/sep/...)
//   chosen[b, i]   = eligible[b, i] ∧ u[b, i] < mask_prob,  u ~ U(0, 1) independently
//   of the chosen positions, by v ~ U(0, 1) independently:
//     v < mask_token_prob                                  → mask_id          (80%)
//     mask_token_prob <= v < mask_token_prob + random_token_prob
//                                                          → r ~ U{first_regular_id, ..., V−1}
//                                                                             (10%)
//     otherwise                                            → unchanged        (10%)
//   labels[b, i] = ids[b, i] where chosen, ignore_index (−100) elsewhere
//
// The loss is taken on the chosen positions only (labels != ignore_index). A random replacement
// may draw the original token (probability 1 / (V − first_regular_id)), as in BERT.
// Randomness: exactly three draws of [B, L] from the given generator, in this order —
// u (at::rand, double), v (at::rand, double), r (at::randint) — whatever the content of `ids`,
// so the result depends on the generator's state and the inputs only.
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>
#include <torch/arg.h>

#include <cstdint>

namespace xmoe {

struct MaskingOptions {
  explicit MaskingOptions(int64_t vocab_size) : vocab_size_(vocab_size) {}

  /// V: token ids are in [0, V).
  TORCH_ARG(int64_t, vocab_size);
  /// The [MASK] id (xmoe::Tokenizer::kMaskId).
  TORCH_ARG(int64_t, mask_id) = 4;
  /// Ids below this are special (pad, unk, cls, sep, mask): never chosen, never drawn as a
  /// random replacement (xmoe::Tokenizer::kNumSpecial).
  TORCH_ARG(int64_t, first_regular_id) = 5;
  /// Probability that an eligible position is chosen.
  TORCH_ARG(double, mask_prob) = 0.15;
  /// Of the chosen positions: share replaced by [MASK] ...
  TORCH_ARG(double, mask_token_prob) = 0.8;
  /// ... and share replaced by a random regular token (the rest stay unchanged).
  TORCH_ARG(double, random_token_prob) = 0.1;
  /// Label of the positions that are not chosen (PyTorch cross_entropy's default).
  TORCH_ARG(int64_t, ignore_index) = -100;

 public:
  /// Throws std::invalid_argument naming the first invalid field and its allowed values.
  void validate() const;
};

struct MaskedTokens {
  at::Tensor input_ids;  // [B, L] int64: the corrupted ids fed to the model
  at::Tensor labels;     // [B, L] int64: original id at chosen positions, ignore_index elsewhere
};

/// Applies the corruption above. `ids` [B, L] int64 (CPU); `mask` [B, L] bool, or an undefined
/// tensor for "every position is real". Throws std::invalid_argument for a wrong rank, dtype
/// or shape, and for ids outside [0, vocab_size).
MaskedTokens mask_tokens(const at::Tensor& ids, const at::Tensor& mask,
                         const MaskingOptions& options, at::Generator generator);

}  // namespace xmoe
