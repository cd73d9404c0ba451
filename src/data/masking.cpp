#include "xmoe/data/masking.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace xmoe {

void MaskingOptions::validate() const {
  auto fail = [](const std::string& m) {
    throw std::invalid_argument("xmoe::MaskingOptions: " + m);
  };
  auto probability = [&](const char* key, double v) {
    if (!(std::isfinite(v) && v >= 0.0 && v <= 1.0))
      fail(std::string(key) + " = " + std::to_string(v) + " must be in [0, 1]");
  };
  if (first_regular_id_ < 0)
    fail("first_regular_id = " + std::to_string(first_regular_id_) + " must be >= 0");
  if (vocab_size_ <= first_regular_id_)
    fail("vocab_size = " + std::to_string(vocab_size_) + " must be > first_regular_id = " +
         std::to_string(first_regular_id_) + " (at least one regular token)");
  if (mask_id_ < 0 || mask_id_ >= vocab_size_)
    fail("mask_id = " + std::to_string(mask_id_) + " must be in [0, vocab_size = " +
         std::to_string(vocab_size_) + ")");
  probability("mask_prob", mask_prob_);
  probability("mask_token_prob", mask_token_prob_);
  probability("random_token_prob", random_token_prob_);
  if (mask_token_prob_ + random_token_prob_ > 1.0 + 1e-12)
    fail("mask_token_prob + random_token_prob = " +
         std::to_string(mask_token_prob_ + random_token_prob_) + " must be <= 1");
  if (ignore_index_ >= 0 && ignore_index_ < vocab_size_)
    fail("ignore_index = " + std::to_string(ignore_index_) +
         " must lie outside the vocabulary [0, vocab_size)");
}

MaskedTokens mask_tokens(const at::Tensor& ids, const at::Tensor& mask,
                         const MaskingOptions& options, at::Generator generator) {
  options.validate();
  const std::string where = "xmoe::mask_tokens: ";
  if (!ids.defined() || ids.dim() != 2 || ids.scalar_type() != at::kLong)
    throw std::invalid_argument(where + "ids must be a [B, L] int64 tensor");
  if (!ids.device().is_cpu()) throw std::invalid_argument(where + "ids must be a CPU tensor");
  if (mask.defined() && (mask.scalar_type() != at::kBool || mask.sizes() != ids.sizes()))
    throw std::invalid_argument(where + "mask must be a bool tensor of the shape of ids [B, L]");

  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>();
    const int64_t hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= options.vocab_size())
      throw std::invalid_argument(where + "token id " + std::to_string(lo < 0 ? lo : hi) +
                                  " outside the vocabulary [0, " +
                                  std::to_string(options.vocab_size()) + ")");
  }

  const auto sizes = ids.sizes();
  const auto dbl = at::TensorOptions().dtype(at::kDouble);
  // Always three full draws, in a fixed order, independent of the content.
  at::Tensor u = at::rand(sizes, generator, dbl);
  at::Tensor v = at::rand(sizes, generator, dbl);
  at::Tensor random_ids = at::randint(options.first_regular_id(), options.vocab_size(), sizes,
                                      generator, at::TensorOptions().dtype(at::kLong));

  at::Tensor eligible = ids.ge(options.first_regular_id());
  if (mask.defined()) eligible = eligible.logical_and(mask);
  const at::Tensor chosen = eligible.logical_and(u.lt(options.mask_prob()));
  const double p_mask = options.mask_token_prob();
  const double p_random_end = p_mask + options.random_token_prob();
  const at::Tensor to_mask = chosen.logical_and(v.lt(p_mask));
  const at::Tensor to_random = chosen.logical_and(v.ge(p_mask)).logical_and(v.lt(p_random_end));

  MaskedTokens out;
  out.input_ids = ids.masked_fill(to_mask, options.mask_id());
  out.input_ids = at::where(to_random, random_ids, out.input_ids);
  out.labels = ids.masked_fill(chosen.logical_not(), options.ignore_index());
  return out;
}

}  // namespace xmoe
