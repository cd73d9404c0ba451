// Masked-LM corruption (SPEC §6, BERT 80/10/10): statistics on a large batch with chi-square
// tolerances, special and padding positions never touched, labels, determinism, errors.
#include "xmoe/data/masking.h"

#include "test_util.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace xmoe {
namespace {

using xmoe_test::Contains;

constexpr int64_t kFirstRegular = 5;  // pad 0, unk 1, cls 2, sep 3, mask 4
constexpr int64_t kMaskId = 4;

// ids [B, L]: regular tokens in [5, V), [CLS] first, a [SEP] every 37 positions and at the end
// of the row, then padding (id 0, mask false) after a row-dependent length.
struct Sample {
  at::Tensor ids, mask;
};
Sample make_sample(int64_t b, int64_t l, int64_t vocab, uint64_t seed) {
  at::Generator gen = make_generator(seed);
  Sample s;
  s.ids = at::randint(kFirstRegular, vocab, {b, l}, gen, at::kLong);
  at::Tensor lengths = at::randint(l / 2, l + 1, {b}, gen, at::kLong);
  s.mask = at::arange(l, at::kLong).unsqueeze(0).lt(lengths.unsqueeze(1));
  s.ids.index_put_({at::indexing::Slice(), at::indexing::Slice(0, l, 37)}, 3);  // [SEP]s
  s.ids.index_put_({at::indexing::Slice(), 0}, 2);                              // [CLS]
  s.ids.index_put_({at::indexing::Slice(), 5}, 1);                              // an <unk>
  s.ids.masked_fill_(s.mask.logical_not(), 0);                                  // padding
  return s;
}

int64_t count(const at::Tensor& t) { return t.sum().item<int64_t>(); }

TEST(DataMasking, ChosenShareAndEightyTenTenSplit) {
  const int64_t vocab = 1000;
  const Sample s = make_sample(200, 500, vocab, 11);
  const MaskingOptions options(vocab);
  const MaskedTokens m = mask_tokens(s.ids, s.mask, options, make_generator(12));

  const at::Tensor eligible = s.mask.logical_and(s.ids.ge(kFirstRegular));
  const at::Tensor chosen = m.labels.ne(-100);
  const double n_eligible = static_cast<double>(count(eligible));
  const double n_chosen = static_cast<double>(count(chosen));
  ASSERT_GT(n_eligible, 50000);
  // Binomial(n_eligible, 0.15): |z| < 4.
  const double z = (n_chosen - 0.15 * n_eligible) / std::sqrt(n_eligible * 0.15 * 0.85);
  EXPECT_LT(std::abs(z), 4.0) << "chosen " << n_chosen << " of " << n_eligible;

  // Of the chosen: [MASK], a different token (random), or the original (unchanged or a random
  // draw of the original itself, probability 1/995).
  const double v = static_cast<double>(vocab - kFirstRegular);
  const double observed[3] = {
      static_cast<double>(count(chosen.logical_and(m.input_ids.eq(kMaskId)))),
      static_cast<double>(
          count(chosen.logical_and(m.input_ids.ne(kMaskId)).logical_and(m.input_ids.ne(s.ids)))),
      static_cast<double>(count(chosen.logical_and(m.input_ids.eq(s.ids))))};
  const double expected_p[3] = {0.8, 0.1 * (1 - 1 / v), 0.1 + 0.1 / v};
  double chi2 = 0;
  for (int k = 0; k < 3; ++k) {
    const double e = expected_p[k] * n_chosen;
    chi2 += (observed[k] - e) * (observed[k] - e) / e;
  }
  EXPECT_LT(chi2, 13.82) << "[MASK] " << observed[0] << ", random " << observed[1]
                         << ", unchanged " << observed[2] << " of " << n_chosen;  // df 2, p 0.001
}

TEST(DataMasking, NeverTouchesPaddingOrSpecialTokens) {
  const Sample s = make_sample(64, 300, 50, 3);
  const MaskedTokens m = mask_tokens(s.ids, s.mask, MaskingOptions(50).mask_prob(1.0),
                                     make_generator(4));
  const at::Tensor protected_pos = s.mask.logical_not().logical_or(s.ids.lt(kFirstRegular));
  ASSERT_GT(count(protected_pos), 1000);
  EXPECT_TRUE(m.labels.masked_select(protected_pos).eq(-100).all().item<bool>());
  EXPECT_TRUE(m.input_ids.masked_select(protected_pos).equal(s.ids.masked_select(protected_pos)));
  // mask_prob 1: every eligible position is chosen.
  const at::Tensor eligible = protected_pos.logical_not();
  EXPECT_TRUE(m.labels.masked_select(eligible).equal(s.ids.masked_select(eligible)));
}

TEST(DataMasking, LabelsAreTheOriginalIdsAtChosenPositionsOnly) {
  const Sample s = make_sample(32, 128, 300, 5);
  const MaskedTokens m = mask_tokens(s.ids, s.mask, MaskingOptions(300), make_generator(6));
  EXPECT_EQ(m.input_ids.sizes(), s.ids.sizes());
  EXPECT_EQ(m.labels.scalar_type(), at::kLong);
  const at::Tensor chosen = m.labels.ne(-100);
  EXPECT_GT(count(chosen), 0);
  EXPECT_TRUE(m.labels.masked_select(chosen).equal(s.ids.masked_select(chosen)));
  const at::Tensor other = chosen.logical_not();
  EXPECT_TRUE(m.input_ids.masked_select(other).equal(s.ids.masked_select(other)));
  // The input is never changed to a special id other than [MASK].
  const at::Tensor changed = m.input_ids.ne(s.ids);
  EXPECT_TRUE(m.input_ids.masked_select(changed)
                  .eq(kMaskId)
                  .logical_or(m.input_ids.masked_select(changed).ge(kFirstRegular))
                  .all()
                  .item<bool>());
}

TEST(DataMasking, RandomReplacementsAreUniformOverRegularIds) {
  const int64_t vocab = 25;  // 20 regular ids
  const Sample s = make_sample(100, 1000, vocab, 7);
  const auto options =
      MaskingOptions(vocab).mask_prob(1.0).mask_token_prob(0.0).random_token_prob(1.0);
  const MaskedTokens m = mask_tokens(s.ids, s.mask, options, make_generator(8));
  const at::Tensor drawn = m.input_ids.masked_select(m.labels.ne(-100));
  ASSERT_GT(drawn.numel(), 50000);
  EXPECT_GE(drawn.min().item<int64_t>(), kFirstRegular);
  EXPECT_LT(drawn.max().item<int64_t>(), vocab);
  const at::Tensor counts = at::bincount(drawn - kFirstRegular, {}, vocab - kFirstRegular);
  const double e = static_cast<double>(drawn.numel()) / static_cast<double>(vocab - kFirstRegular);
  const double chi2 = (counts.to(at::kDouble) - e).pow(2).sum().item<double>() / e;
  EXPECT_LT(chi2, 43.82);  // df 19, p 0.001
}

TEST(DataMasking, DeterministicGivenTheGenerator) {
  const Sample s = make_sample(16, 64, 100, 9);
  const MaskingOptions options(100);
  const MaskedTokens a = mask_tokens(s.ids, s.mask, options, make_generator(21));
  const MaskedTokens b = mask_tokens(s.ids, s.mask, options, make_generator(21));
  const MaskedTokens c = mask_tokens(s.ids, s.mask, options, make_generator(22));
  EXPECT_TRUE(a.input_ids.equal(b.input_ids));
  EXPECT_TRUE(a.labels.equal(b.labels));
  EXPECT_FALSE(a.labels.equal(c.labels));
  // Three [B, L] draws whatever the content: the generator ends in the same state.
  at::Generator g1 = make_generator(5), g2 = make_generator(5);
  mask_tokens(s.ids, s.mask, options, g1);
  mask_tokens(at::full_like(s.ids, 0), at::Tensor(), options, g2);
  EXPECT_TRUE(at::rand({4}, g1).equal(at::rand({4}, g2)));
}

TEST(DataMasking, ZeroProbabilityChangesNothingAndUndefinedMaskMeansAllReal) {
  const Sample s = make_sample(8, 40, 60, 1);
  const MaskedTokens m =
      mask_tokens(s.ids, s.mask, MaskingOptions(60).mask_prob(0.0), make_generator(1));
  EXPECT_TRUE(m.input_ids.equal(s.ids));
  EXPECT_TRUE(m.labels.eq(-100).all().item<bool>());
  const at::Tensor ids = at::full({2, 6}, 7, at::kLong);
  const MaskedTokens all = mask_tokens(ids, at::Tensor(), MaskingOptions(60).mask_prob(1.0),
                                       make_generator(2));
  EXPECT_TRUE(all.labels.eq(7).all().item<bool>());
}

TEST(DataMasking, BadInputsAndOptionsAreRejected) {
  const at::Tensor ids = at::full({2, 3}, 6, at::kLong);
  const at::Tensor mask = at::ones({2, 3}, at::kBool);
  const MaskingOptions ok(10);
  auto message = [&](const at::Tensor& i, const at::Tensor& m, const MaskingOptions& o) {
    try {
      mask_tokens(i, m, o, make_generator(0));
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_TRUE(Contains(message(ids.to(at::kInt), mask, ok), "int64"));
  EXPECT_TRUE(Contains(message(ids.flatten(), mask, ok), "[B, L]"));
  EXPECT_TRUE(Contains(message(ids, mask.to(at::kLong), ok), "mask"));
  EXPECT_TRUE(Contains(message(ids, at::ones({3, 2}, at::kBool), ok), "mask"));
  EXPECT_TRUE(Contains(message(at::full({2, 3}, 10, at::kLong), mask, ok), "token id 10 outside"));
  EXPECT_TRUE(Contains(message(ids, mask, MaskingOptions(10).mask_prob(1.5)), "mask_prob"));
  EXPECT_TRUE(Contains(message(ids, mask, MaskingOptions(10).mask_token_prob(0.95)),
                       "mask_token_prob + random_token_prob"));
  EXPECT_TRUE(Contains(message(ids, mask, MaskingOptions(5)), "vocab_size"));
  EXPECT_TRUE(Contains(message(ids, mask, MaskingOptions(10).mask_id(10)), "mask_id"));
  EXPECT_TRUE(Contains(message(ids, mask, MaskingOptions(10).ignore_index(3)), "ignore_index"));
}

}  // namespace
}  // namespace xmoe
