// The fused CPU kernels of the encoder — hash dropout, embedding lookup, attention, linear, GELU,
// cross-entropy, the routing gate — against plain references: mask statistics, equality with the
// ATen composition for the same generator state, and central-difference gradient checks in
// double precision.
#include "xmoe/kernels/attention.h"
#include "xmoe/kernels/cross_entropy.h"
#include "xmoe/kernels/dropout.h"
#include "xmoe/kernels/embedding.h"
#include "xmoe/kernels/gelu.h"
#include "xmoe/kernels/linear.h"
#include "xmoe/kernels/routing_gate.h"
#include "xmoe/routing/topk.h"
#include "xmoe/util/init.h"

#include "../src/kernels/vec_math.h"  // private to the kernels; its exp is tested here

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

#include "test_util.h"

namespace {

using xmoe::make_generator;
using xmoe_test::error_message;
using xmoe_test::Contains;
namespace kernels = xmoe::kernels;

at::Tensor normal(at::IntArrayRef shape, uint64_t seed, at::ScalarType dtype = at::kFloat) {
  return at::empty(shape, dtype).normal_(0.0, 1.0, make_generator(seed));
}

// Largest |autograd gradient − central difference| of L(x) = Σ f(x) ⊙ G over every element of
// x (double). f must be deterministic: it recreates any generator it uses.
double max_gradient_error(const std::function<at::Tensor(const at::Tensor&)>& f, const at::Tensor& x0) {
  at::Tensor x = x0.detach().clone().set_requires_grad(true);
  at::Tensor out = f(x);
  at::Tensor G = normal(out.sizes(), 99, at::kDouble);
  (out * G).sum().backward();
  at::Tensor analytic = x.grad();
  at::Tensor flat = x0.detach().clone().reshape({-1});
  const double eps = 1e-6;
  double worst = 0;
  at::NoGradGuard no_grad;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double v = flat[i].item<double>();
    flat[i] = v + eps;
    const double up = (f(flat.view(x0.sizes())) * G).sum().item<double>();
    flat[i] = v - eps;
    const double down = (f(flat.view(x0.sizes())) * G).sum().item<double>();
    flat[i] = v;
    worst = std::max(worst, std::abs((up - down) / (2 * eps) - analytic.reshape({-1})[i].item<double>()));
  }
  return worst;
}

// ---- dropout -----------------------------------------------------------------------------

TEST(HashDropout, KeepRateIsBinomial) {
  const int64_t n = 1 << 20;
  for (double p : {0.1, 0.5, 0.9}) {
    const double kept = kernels::dropout_keep_mask(n, p, 0x1234abcdULL).sum().item<double>();
    const double mean = n * (1 - p), sd = std::sqrt(n * p * (1 - p));
    EXPECT_LT(std::abs(kept - mean), 5 * sd) << "p = " << p << ": kept " << kept;
  }
}

TEST(HashDropout, NeighboursAndKeysAreIndependent) {
  const int64_t n = 1 << 20;
  const double p = 0.3, q = 1 - p;
  at::Tensor a = kernels::dropout_keep_mask(n, p, 7).to(at::kDouble);
  at::Tensor b = kernels::dropout_keep_mask(n, p, 8).to(at::kDouble);
  // Elements i and i + s both kept: q² of the n − s pairs. s = 64: the two 16-bit halves of one
  // hash. Two keys agree on p² + q² of the elements.
  for (int64_t s : {1, 64, 128}) {
    const double pairs = (a.slice(0, 0, n - s) * a.slice(0, s)).sum().item<double>();
    EXPECT_LT(std::abs(pairs - (n - s) * q * q), 5 * std::sqrt(n * q * q * (1 - q * q))) << "s = " << s;
  }
  const double agree = a.eq(b).sum().item<double>();
  const double r = p * p + q * q;
  EXPECT_LT(std::abs(agree - n * r), 5 * std::sqrt(n * r * (1 - r)));
}

TEST(HashDropout, AppliesTheMaskOfItsKeyAndScales) {
  at::Tensor x = normal({33, 65}, 1);
  const double p = 0.25;
  at::Tensor y = kernels::dropout(x, p, true, make_generator(5));
  at::Generator same = make_generator(5);
  const uint64_t key = kernels::draw_dropout_key(same);
  at::Tensor keep = kernels::dropout_keep_mask(x.numel(), p, key).view(x.sizes());
  EXPECT_TRUE(at::allclose(y, at::where(keep, x / (1 - p), at::zeros_like(x)), 1e-6, 0));
  EXPECT_TRUE(at::equal(y, kernels::dropout(x, p, true, make_generator(5))));  // deterministic
  EXPECT_FALSE(at::equal(y, kernels::dropout(x, p, true, make_generator(6))));
  // A slice of the flat index range gets the same mask as the whole tensor at those indices.
  at::Tensor flat = x.reshape({-1}).contiguous(), part = at::empty({100});
  kernels::apply_dropout_mask(flat.data_ptr<float>() + 500, part.data_ptr<float>(), 100, 500, p, key);
  EXPECT_TRUE(at::equal(part, y.reshape({-1}).slice(0, 500, 600)));
}

TEST(HashDropout, KeptValuesAreScaledByTheInverseOfTheQuantisedKeepRate) {
  // p = 0.3 is drawn at 16 bits: t = round(0.3 · 65536) = 19661 of 65536 dropped, so kept values
  // are x · 65536 / 45875 (not x / 0.7), which makes E[y] = x exactly.
  at::Tensor x = at::ones({4096});
  at::Tensor y = kernels::dropout(x, 0.3, true, make_generator(9));
  at::Tensor kept = y.masked_select(y.ne(0));
  EXPECT_TRUE(at::allclose(kept, at::full_like(kept, 65536.0 / 45875.0), 1e-7, 0));
  EXPECT_GT(kept.numel(), 0);
}

TEST(HashDropout, IdentityWhenOffAndRejectsBadP) {
  at::Tensor x = normal({4, 5}, 2);
  EXPECT_TRUE(kernels::dropout(x, 0.5, false).is_same(x));
  EXPECT_TRUE(kernels::dropout(x, 0.0, true).is_same(x));
  EXPECT_THROW(kernels::dropout(x, 1.0, true), std::invalid_argument);
  EXPECT_THROW(kernels::dropout(x, -0.1, true), std::invalid_argument);
  EXPECT_THROW(kernels::dropout(x, std::nan(""), true), std::invalid_argument);
}

TEST(HashDropout, IndicesBeyondTwoToThe32GetTheirOwnMask) {
  // One call across the 2³² boundary equals two calls split at it, and the high word changes
  // the mask (indices i and i + 2³² agree only by chance).
  const int64_t base = int64_t{1} << 32, n = 4096;
  std::vector<float> ones(2 * n, 1.f), whole(2 * n), lo(n), hi(n), wrapped(n);
  kernels::apply_dropout_mask(ones.data(), whole.data(), 2 * n, base - n, 0.5, 42);
  kernels::apply_dropout_mask(ones.data(), lo.data(), n, base - n, 0.5, 42);
  kernels::apply_dropout_mask(ones.data(), hi.data(), n, base, 0.5, 42);
  kernels::apply_dropout_mask(ones.data(), wrapped.data(), n, 0, 0.5, 42);
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(whole[i], lo[i]);
    ASSERT_EQ(whole[n + i], hi[i]);
    same += hi[i] == wrapped[i];
  }
  EXPECT_LT(same, n * 0.6);
}

TEST(HashDropout, GradientMatchesFiniteDifferences) {
  at::Tensor x = normal({6, 7}, 3, at::kDouble);
  auto f = [](const at::Tensor& v) { return kernels::dropout(v, 0.4, true, make_generator(11)); };
  EXPECT_LT(max_gradient_error(f, x), 1e-7);
}

// ---- embedding ---------------------------------------------------------------------------

TEST(EmbeddingLookup, EqualsAtenEmbeddingForwardAndBackward) {
  at::Tensor w = normal({11, 6}, 4);
  at::Tensor ids = at::tensor({3, 3, 0, 10, 7, 3, 10, 1}, at::kLong).view({2, 4});  // repeats
  at::Tensor w1 = w.clone().set_requires_grad(true), w2 = w.clone().set_requires_grad(true);
  at::Tensor y1 = kernels::embedding_lookup(w1, ids), y2 = at::embedding(w2, ids);
  ASSERT_EQ(y1.sizes(), y2.sizes());
  EXPECT_TRUE(at::equal(y1, y2));
  at::Tensor G = normal(y1.sizes(), 5);
  (y1 * G).sum().backward();
  (y2 * G).sum().backward();
  EXPECT_TRUE(at::allclose(w1.grad(), w2.grad(), 1e-6, 1e-6));
}

TEST(EmbeddingLookup, GradientMatchesFiniteDifferencesAndBadIdsAreNamed) {
  at::Tensor ids = at::tensor({2, 0, 2, 4}, at::kLong);
  auto f = [&](const at::Tensor& w) { return kernels::embedding_lookup(w, ids); };
  EXPECT_LT(max_gradient_error(f, normal({5, 3}, 6, at::kDouble)), 1e-7);
  auto bad_id = [] { kernels::embedding_lookup(normal({5, 3}, 6), at::tensor({1, 5}, at::kLong)); };
  EXPECT_TRUE(Contains(error_message<c10::Error>(bad_id), "id 5 is outside the vocabulary [0, 5)"));
}

// ---- attention ---------------------------------------------------------------------------

// B = 3 rows of L = 7: one unpadded, one with two padding keys, one entirely padding.
at::Tensor padding_mask() {
  at::Tensor pad = at::zeros({3, 7}, at::kBool);
  pad[1].slice(0, 5).fill_(true);
  pad[2].fill_(true);
  return pad;
}

TEST(FusedAttention, EqualsTheReferenceWithAndWithoutDropout) {
  const int64_t heads = 2;
  at::Tensor qkv = normal({3, 7, 3 * 10}, 7), pad = padding_mask();
  for (double p : {0.0, 0.3}) {
    for (bool train : {true, false}) {
      at::Tensor a = qkv.clone().set_requires_grad(true), b = qkv.clone().set_requires_grad(true);
      at::Tensor fused = kernels::attention(a, pad, heads, p, train, make_generator(8));
      at::Tensor ref = kernels::attention_reference(b, pad, heads, p, train, make_generator(8));
      EXPECT_TRUE(at::allclose(fused, ref, 1e-5, 1e-6)) << "p " << p << " train " << train;
      EXPECT_TRUE(at::all(at::isfinite(fused)).item<bool>());
      at::Tensor G = normal(fused.sizes(), 9);
      (fused * G).sum().backward();
      (ref * G).sum().backward();
      EXPECT_TRUE(at::allclose(a.grad(), b.grad(), 1e-5, 1e-5)) << "p " << p << " train " << train;
    }
  }
}

TEST(FusedAttention, LongRowsEqualTheReference) {
  // L = 37: the row softmax runs whole 8-float vectors and a tail of 5. Padding at the end of one
  // sequence and scattered through another.
  const int64_t heads = 2, len = 37;
  at::Tensor qkv = normal({3, len, 3 * 8}, 17, at::kFloat).mul_(3.0);
  at::Tensor pad = at::zeros({3, len}, at::kBool);
  pad[1].slice(0, 29).fill_(true);
  pad[2].slice(0, 0, len, 3).fill_(true);
  for (double p : {0.0, 0.2}) {
    at::Tensor a = qkv.clone().set_requires_grad(true), b = qkv.clone().set_requires_grad(true);
    at::Tensor fused = kernels::attention(a, pad, heads, p, true, make_generator(21));
    at::Tensor ref = kernels::attention_reference(b, pad, heads, p, true, make_generator(21));
    EXPECT_TRUE(at::allclose(fused, ref, 1e-5, 1e-6)) << "p " << p;
    at::Tensor G = normal(fused.sizes(), 22);
    (fused * G).sum().backward();
    (ref * G).sum().backward();
    // Scores ×3 make large gradients whose sums cancel: compare at float rounding of their scale.
    const double scale = b.grad().abs().max().item<double>();
    EXPECT_LT((a.grad() - b.grad()).abs().max().item<double>(), 2e-6 * scale) << "p " << p;
  }
}

TEST(FusedAttention, PaddingKeysGetNoWeight) {
  // Changing the values of padding positions changes nothing at the other positions.
  at::Tensor qkv = normal({3, 7, 12}, 10), pad = padding_mask();
  at::Tensor changed = qkv.clone();
  changed[1].slice(0, 5).normal_(0.0, 5.0, make_generator(3));
  at::Tensor a = kernels::attention(qkv, pad, 2, 0.0, false);
  at::Tensor b = kernels::attention(changed, pad, 2, 0.0, false);
  EXPECT_TRUE(at::allclose(a[1].slice(0, 0, 5), b[1].slice(0, 0, 5), 1e-6, 1e-6));
  EXPECT_TRUE(at::equal(a[2], at::zeros_like(a[2])));  // a sequence of padding attends nothing
}

TEST(FusedAttention, GradientMatchesFiniteDifferencesWithDropoutAndPadding) {
  at::Tensor qkv = normal({3, 7, 3 * 4}, 12, at::kDouble), pad = padding_mask();
  auto f = [&](const at::Tensor& x) { return kernels::attention(x, pad, 2, 0.3, true, make_generator(13)); };
  EXPECT_LT(max_gradient_error(f, qkv), 1e-7);
}

TEST(FusedAttention, BadShapesAreNamed) {
  EXPECT_THROW(kernels::attention(normal({2, 3, 10}, 1), at::zeros({2, 3}, at::kBool), 2, 0.0, false),
               c10::Error);  // 10 is not 3·d with d divisible by 2
  EXPECT_THROW(kernels::attention(normal({2, 3, 12}, 1), at::zeros({2, 4}, at::kBool), 2, 0.0, false),
               c10::Error);
}

}  // namespace

// ---- linear ------------------------------------------------------------------------------

namespace {

TEST(FusedLinear, EqualsAtenLinearForwardAndBackward) {
  for (bool with_bias : {true, false}) {
    at::Tensor x = normal({3, 5, 7}, 20), w = normal({4, 7}, 21), b = normal({4}, 22);
    at::Tensor x1 = x.clone().set_requires_grad(true), w1 = w.clone().set_requires_grad(true),
               b1 = b.clone().set_requires_grad(true);
    at::Tensor x2 = x.clone().set_requires_grad(true), w2 = w.clone().set_requires_grad(true),
               b2 = b.clone().set_requires_grad(true);
    at::Tensor y1 = kernels::linear(x1, w1, with_bias ? b1 : at::Tensor());
    at::Tensor y2 = at::linear(x2, w2, with_bias ? b2 : at::Tensor());
    ASSERT_EQ(y1.sizes(), y2.sizes());
    EXPECT_TRUE(at::allclose(y1, y2, 1e-5, 1e-6));
    at::Tensor G = normal(y1.sizes(), 23);
    (y1 * G).sum().backward();
    (y2 * G).sum().backward();
    EXPECT_TRUE(at::allclose(x1.grad(), x2.grad(), 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(w1.grad(), w2.grad(), 1e-5, 1e-6));
    if (with_bias) {
      EXPECT_TRUE(at::allclose(b1.grad(), b2.grad(), 1e-5, 1e-6));
    }
  }
}

TEST(FusedLinear, GradientsMatchFiniteDifferences) {
  at::Tensor x = normal({2, 3, 4}, 24, at::kDouble), w = normal({5, 4}, 25, at::kDouble),
             b = normal({5}, 26, at::kDouble);
  EXPECT_LT(max_gradient_error([&](const at::Tensor& v) { return kernels::linear(v, w, b); }, x), 1e-7);
  EXPECT_LT(max_gradient_error([&](const at::Tensor& v) { return kernels::linear(x, v, b); }, w), 1e-7);
  EXPECT_LT(max_gradient_error([&](const at::Tensor& v) { return kernels::linear(x, w, v); }, b), 1e-7);
}

TEST(FusedLinear, MismatchedShapesAreNamed) {
  EXPECT_THROW(kernels::linear(normal({2, 3}, 1), normal({4, 5}, 2)), c10::Error);
  EXPECT_THROW(kernels::linear(normal({2, 5}, 1), normal({4, 5}, 2), normal({3}, 3)), c10::Error);
}

}  // namespace

namespace {

TEST(FusedLinear, NoRowsGiveZeroWeightGradients) {
  at::Tensor w = normal({4, 3}, 30).set_requires_grad(true), b = normal({4}, 31).set_requires_grad(true);
  at::Tensor y = kernels::linear(at::empty({0, 3}), w, b);
  EXPECT_EQ(y.sizes(), at::IntArrayRef({0, 4}));
  y.sum().backward();
  EXPECT_TRUE(at::equal(w.grad(), at::zeros_like(w)));
  EXPECT_TRUE(at::equal(b.grad(), at::zeros_like(b)));
}

}  // namespace

namespace {

TEST(FusedKernels, EmptyAndSingleTokenInputs) {
  // One token per sequence: attention is the identity on V (softmax of one key = 1).
  at::Tensor qkv = normal({2, 1, 12}, 40);
  at::Tensor out = kernels::attention(qkv, at::zeros({2, 1}, at::kBool), 2, 0.0, false);
  EXPECT_TRUE(at::allclose(out, qkv.slice(2, 8, 12), 1e-6, 1e-6));
  // No sequences, no ids, no elements: empty results, no error.
  EXPECT_EQ(kernels::attention(at::empty({0, 5, 12}), at::zeros({0, 5}, at::kBool), 2, 0.1, true).sizes(),
            at::IntArrayRef({0, 5, 4}));
  EXPECT_EQ(kernels::embedding_lookup(normal({5, 3}, 41), at::empty({0}, at::kLong)).sizes(),
            at::IntArrayRef({0, 3}));
  EXPECT_EQ(kernels::dropout(at::empty({0}), 0.5, true).numel(), 0);
  // Non-contiguous inputs are handled (made contiguous), not misread.
  at::Tensor wide = normal({2, 3, 24}, 42);
  at::Tensor strided = wide.slice(2, 0, 24, 2);  // [2, 3, 12], stride 2 in the last dim
  EXPECT_TRUE(at::allclose(kernels::attention(strided, at::zeros({2, 3}, at::kBool), 2, 0.0, false),
                           kernels::attention_reference(strided, at::zeros({2, 3}, at::kBool), 2, 0.0, false),
                           1e-5, 1e-6));
  at::Tensor w = normal({6, 4}, 43).t();  // [4, 6] non-contiguous weight
  at::Tensor x = normal({3, 6}, 44);
  EXPECT_TRUE(at::allclose(kernels::linear(x, w), at::linear(x, w), 1e-5, 1e-6));
}

}  // namespace

// ---- vectorisable exp --------------------------------------------------------------------

namespace {

// Within 1 ulp of the correctly rounded e^x on every 1024th float of [−87, 88] (the range
// vec_math.h documents), in the baseline build this test is compiled with.
TEST(VecMath, ExpIsWithinOneUlp) {
  auto bits = [](float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; };
  double worst = 0;
  for (uint32_t sign : {0u, 0x80000000u}) {  // [0, 88], then [−87, −0]: bit patterns ascend with |x|
    const uint32_t last = bits(sign ? -87.0f : 88.0f);
    for (uint32_t u = sign; u <= last; u += 1024) {
      float x;
      std::memcpy(&x, &u, 4);
      const double exact = std::exp(static_cast<double>(x));
      const float rounded = static_cast<float>(exact);
      const double ulp = std::nextafter(rounded, INFINITY) - rounded;
      worst = std::max(worst, std::abs(xmoe::kernels::detail::exp_f32(x) - exact) / ulp);
    }
  }
  EXPECT_LE(worst, 1.0);
  // Through a volatile, so the NaN path runs (an undefined-behaviour sanitizer build checks it)
  // instead of being folded at compile time.
  volatile float nan_input = NAN;
  EXPECT_TRUE(std::isnan(xmoe::kernels::detail::exp_f32(nan_input)));
  EXPECT_GT(xmoe::kernels::detail::exp_f32(-1000.0f), 0.0f);  // clamped to e^-87, documented
}

}  // namespace

// ---- GELU --------------------------------------------------------------------------------

namespace {

// Every float in [-12, 12] on a 1/64 grid plus the tails and signed zeros, in an odd-sized
// tensor so the vector loops' remainders run too.
at::Tensor gelu_probe() {
  at::Tensor grid = at::arange(-768, 769, at::kFloat) / 64.0;
  return at::cat({grid, at::tensor({-0.0f, 0.0f, -30.f, -100.f, 30.f, 1e4f, -1e-30f, 3e-39f})});
}

TEST(FusedGelu, EqualsAtenGeluForwardAndBackward) {
  at::Tensor x = gelu_probe();
  at::Tensor x1 = x.clone().set_requires_grad(true), x2 = x.clone().set_requires_grad(true);
  at::Tensor y1 = kernels::gelu(x1), y2 = at::gelu(x2);
  // The reference in double: the float kernel's error is A&S 7.1.26's (|Δerf| ≤ 1.5e-7) plus rounding.
  at::Tensor exact = at::gelu(x.to(at::kDouble));
  EXPECT_LT((y1.to(at::kDouble) - exact).abs().div(exact.abs().clamp_min(1)).max().item<double>(), 4e-7);
  EXPECT_TRUE(at::allclose(y1, y2, 1e-6, 1e-6));
  at::Tensor G = normal(x.sizes(), 50);
  (y1 * G).sum().backward();
  (y2 * G).sum().backward();
  EXPECT_TRUE(at::allclose(x1.grad(), x2.grad(), 1e-6, 1e-6));
  // The raw entry point the grouped FFN uses gives the same numbers, and so does the
  // forward-only path taken without grad mode.
  at::Tensor h = at::empty_like(x), slope = at::empty_like(x);
  kernels::gelu_with_derivative_out(x, h, slope);
  EXPECT_TRUE(at::equal(h, y1));
  EXPECT_TRUE(at::equal(G * slope, x1.grad()));  // autograd's backward is this one multiply
  {
    at::NoGradGuard no_grad;
    EXPECT_TRUE(at::equal(kernels::gelu(x1), y1));
  }
  EXPECT_TRUE(at::equal(kernels::gelu(x), y1));  // no requires_grad
  EXPECT_EQ(kernels::gelu(at::empty({0, 3})).sizes(), at::IntArrayRef({0, 3}));
}

TEST(FusedGelu, GradientMatchesFiniteDifferences) {
  at::Tensor x = normal({5, 7}, 51, at::kDouble) * 3;
  EXPECT_LT(max_gradient_error([](const at::Tensor& v) { return kernels::gelu(v); }, x), 1e-7);
  at::Tensor exact = at::gelu(x);
  EXPECT_TRUE(at::allclose(kernels::gelu(x), exact, 1e-14, 1e-14));
}

// ---- cross-entropy -----------------------------------------------------------------------

TEST(FusedCrossEntropy, EqualsAtenCrossEntropyForwardAndBackward) {
  // V = 1003: not a multiple of the 16 lanes. Logits up to ±90 test the max shift.
  for (double spread : {1.0, 30.0}) {
    at::Tensor z = normal({37, 1003}, 52) * spread;
    at::Tensor y = at::randint(0, 1003, {37}, make_generator(53));
    at::Tensor z1 = z.clone().set_requires_grad(true), z2 = z.clone().set_requires_grad(true);
    at::Tensor l1 = kernels::cross_entropy(z1, y), l2 = at::cross_entropy_loss(z2, y);
    EXPECT_NEAR(l1.item<double>(), l2.item<double>(), 1e-5 * std::max(1.0, l2.item<double>()));
    (l1 * 3).backward();
    (l2 * 3).backward();
    EXPECT_TRUE(at::allclose(z1.grad(), z2.grad(), 1e-5, 1e-7)) << (z1.grad() - z2.grad()).abs().max();
  }
}

TEST(FusedCrossEntropy, HandComputedValue) {
  // Row 0: log(e^0 + e^ln3) − 0 = log 4. Row 1: log(e^2 + e^2) − 2 = log 2. Mean: (log 4 + log 2) / 2.
  at::Tensor z = at::tensor({0.0f, std::log(3.0f), 2.0f, 2.0f}).view({2, 2});
  at::Tensor loss = kernels::cross_entropy(z, at::tensor({0, 1}, at::kLong));
  EXPECT_NEAR(loss.item<double>(), 1.5 * std::log(2.0), 1e-6);
}

TEST(FusedCrossEntropy, GradientMatchesFiniteDifferencesAndBadLabelsAreNamed) {
  at::Tensor y = at::tensor({2, 0, 4, 4}, at::kLong);
  auto f = [&](const at::Tensor& z) { return kernels::cross_entropy(z, y); };
  EXPECT_LT(max_gradient_error(f, normal({4, 5}, 54, at::kDouble)), 1e-7);
  auto bad_label = [] { kernels::cross_entropy(normal({2, 5}, 55), at::tensor({1, 5}, at::kLong)); };
  EXPECT_TRUE(Contains(error_message<c10::Error>(bad_label), "label 5 at row 1 is outside the classes [0, 5)"));
  EXPECT_THROW(kernels::cross_entropy(normal({2, 5}, 55), at::tensor({1}, at::kLong)), c10::Error);
  EXPECT_TRUE(
      std::isnan(kernels::cross_entropy(at::empty({0, 5}), at::empty({0}, at::kLong)).item<double>()));
}

// ---- routing gate ------------------------------------------------------------------------

struct GateCase {
  bool sigmoid;
  int64_t k;
  bool normalize;
  bool separate_balance;
};

std::string describe(const GateCase& c) {
  return std::string(c.sigmoid ? "sigmoid" : "softmax") + " k=" + std::to_string(c.k) +
         (c.normalize ? " normalised" : "") + (c.separate_balance ? " separate balance" : "");
}

// The ATen composition (the routers' path off the CPU).
kernels::RoutingGate reference_gate(const at::Tensor& l, const at::Tensor& b, const GateCase& c) {
  return xmoe::routing_gate_aten(l, b, c.k, c.sigmoid ? xmoe::GateKind::kSigmoid : xmoe::GateKind::kSoftmax,
                                 c.normalize, xmoe::SecondExpertPolicy::kAll, /*training=*/true,
                                 make_generator(1), nullptr);
}

std::vector<GateCase> gate_cases() {
  std::vector<GateCase> cases;
  for (bool sigmoid : {false, true})
    for (int64_t k : {1, 2, 3})
      for (bool normalize : {false, true})
        for (bool separate : {false, true}) cases.push_back({sigmoid, k, normalize, separate});
  return cases;
}

TEST(RoutingGate, EqualsTheAtenCompositionForwardAndBackward) {
  // T = 300 spans two 256-row blocks; logits rounded to halves make ties, which both sides must
  // break toward the lower expert index.
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    for (int64_t n_expert : {5, 8}) {
      at::Tensor l0 = (normal({300, n_expert}, 60, dtype) * 4).round() / 2;
      at::Tensor b0 = normal({300, n_expert}, 61, dtype) * 3;
      for (const GateCase& c : gate_cases()) {
        SCOPED_TRACE(describe(c) + " E=" + std::to_string(n_expert) + " " + c10::toString(dtype));
        const double tol = dtype == at::kFloat ? 1e-5 : 1e-12;
        at::Tensor l1 = l0.clone().set_requires_grad(true), l2 = l0.clone().set_requires_grad(true);
        at::Tensor b1 = b0.clone().set_requires_grad(true), b2 = b0.clone().set_requires_grad(true);
        kernels::RoutingGate fused =
            kernels::routing_gate(l1, c.separate_balance ? b1 : at::Tensor(), c.k, c.sigmoid, c.normalize);
        kernels::RoutingGate ref = reference_gate(l2, c.separate_balance ? b2 : at::Tensor(), c);
        EXPECT_TRUE(at::equal(fused.expert_ids, ref.expert_ids));
        EXPECT_TRUE(at::allclose(fused.gates, ref.gates, tol, tol)) << (fused.gates - ref.gates).abs().max();
        EXPECT_NEAR(fused.balance_loss.item<double>(), ref.balance_loss.item<double>(), tol);
        EXPECT_NEAR(fused.z_loss.item<double>(), ref.z_loss.item<double>(), tol * 10);
        EXPECT_TRUE(at::equal(fused.tokens_per_expert, ref.tokens_per_expert));
        EXPECT_NEAR(fused.entropy, ref.entropy, tol);
        at::Tensor G = normal(fused.gates.sizes(), 62, dtype);
        for (kernels::RoutingGate* r : {&fused, &ref})
          ((r->gates * G).sum() + 3 * r->balance_loss + 5 * r->z_loss).backward();
        EXPECT_TRUE(at::allclose(l1.grad(), l2.grad(), tol, tol)) << (l1.grad() - l2.grad()).abs().max();
        if (c.separate_balance) {
          EXPECT_TRUE(at::allclose(b1.grad(), b2.grad(), tol, tol)) << (b1.grad() - b2.grad()).abs().max();
        } else {
          EXPECT_FALSE(b1.grad().defined());
        }
      }
    }
  }
}

TEST(RoutingGate, HandComputedValues) {
  // p = (1/4, 3/4) and (3/4, 1/4): first choices 1 and 0, f = P = (1/2, 1/2), balance = 2 · (1/4 +
  // 1/4) = 1; log Σ e^l = ln 4 in both rows, z = (ln 4)²; gates 3/4.
  const double ln3 = std::log(3.0);
  at::Tensor l = at::tensor({0.0, ln3, ln3, 0.0}, at::kDouble).view({2, 2});
  kernels::RoutingGate g = kernels::routing_gate(l, at::Tensor(), 1, false, false);
  EXPECT_TRUE(at::equal(g.expert_ids, at::tensor({1, 0}, at::kLong).view({2, 1})));
  EXPECT_NEAR(g.gates[0][0].item<double>(), 0.75, 1e-15);
  EXPECT_NEAR(g.gates[1][0].item<double>(), 0.75, 1e-15);
  EXPECT_NEAR(g.balance_loss.item<double>(), 1.0, 1e-15);
  EXPECT_NEAR(g.z_loss.item<double>(), std::pow(std::log(4.0), 2), 1e-14);
  EXPECT_NEAR(g.entropy, -(0.25 * std::log(0.25) + 0.75 * std::log(0.75)), 1e-15);
  // Sigmoid gate, k = 2: σ(ln 3) = 3/4, σ(0) = 1/2, never renormalised.
  kernels::RoutingGate s = kernels::routing_gate(l, at::Tensor(), 2, true, true);
  EXPECT_TRUE(at::allclose(s.gates, at::tensor({0.75, 0.5, 0.75, 0.5}, at::kDouble).view({2, 2}), 0, 1e-15));
  EXPECT_TRUE(at::equal(s.tokens_per_expert, at::tensor({2, 2}, at::kLong)));
}

TEST(RoutingGate, GradientsMatchFiniteDifferences) {
  at::Tensor l0 = normal({7, 5}, 63, at::kDouble), b0 = normal({7, 5}, 64, at::kDouble);
  for (const GateCase& c : gate_cases()) {
    SCOPED_TRACE(describe(c));
    auto outputs = [](const kernels::RoutingGate& g) {
      return at::cat({g.gates.reshape({-1}), g.balance_loss.view({1}), g.z_loss.view({1})});
    };
    auto in_l = [&](const at::Tensor& l) {
      return outputs(kernels::routing_gate(l, c.separate_balance ? b0 : at::Tensor(), c.k, c.sigmoid, c.normalize));
    };
    EXPECT_LT(max_gradient_error(in_l, l0), 1e-7);
    if (c.separate_balance) {
      auto in_b = [&](const at::Tensor& b) {
        return outputs(kernels::routing_gate(l0, b, c.k, c.sigmoid, c.normalize));
      };
      EXPECT_LT(max_gradient_error(in_b, b0), 1e-7);
    }
  }
}

TEST(RoutingGate, SameBitsForAnyThreadCount) {
  at::Tensor l = normal({1000, 16}, 65);
  const int threads = at::get_num_threads();
  std::vector<kernels::RoutingGate> runs;
  for (int n : {1, 2, 3}) {
    at::set_num_threads(n);
    runs.push_back(kernels::routing_gate(l, l * 0.5, 2, false, true));
  }
  at::set_num_threads(threads);
  for (const auto& r : runs) {
    EXPECT_TRUE(at::equal(r.gates, runs[0].gates));
    EXPECT_EQ(r.balance_loss.item<float>(), runs[0].balance_loss.item<float>());
    EXPECT_EQ(r.z_loss.item<float>(), runs[0].z_loss.item<float>());
    EXPECT_EQ(r.entropy, runs[0].entropy);
  }
}

TEST(RoutingGate, BadArgumentsAreNamed) {
  at::Tensor l = normal({4, 3}, 66);
  EXPECT_TRUE(Contains(error_message<c10::Error>([&] { kernels::routing_gate(l, at::Tensor(), 4, false, false); }),
                       "k = 4 must be in [1, E = 3]"));
  EXPECT_TRUE(Contains(error_message<c10::Error>([&] { kernels::routing_gate(l, normal({4, 2}, 67), 1, false, false); }),
                       "must match the gate logits"));
  EXPECT_FALSE(kernels::routing_gate_supported(at::empty({0, 3})));
  EXPECT_FALSE(kernels::routing_gate_supported(l.to(at::kHalf)));
  EXPECT_THROW(kernels::routing_gate(l.to(at::kHalf), at::Tensor(), 1, false, false), c10::Error);
}

}  // namespace
