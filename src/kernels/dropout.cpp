#include "xmoe/kernels/dropout.h"

#include "vec_math.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kDropoutGrain = 1 << 14;  // elements per task: a few µs of hashing

// Chris Wellons' "lowbias32" integer mixer (hash-prospector): full avalanche on 32 bits in
// five cheap operations, all of which AVX2 vectorises (vpmulld, shifts, xor).
XMOE_VEC_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The per-element draw: the counter is the low 32 bits of the index; the high bits are folded
// into k1 by the caller, so tensors over 2³² elements get distinct masks too.
XMOE_VEC_INLINE uint32_t draw(uint32_t counter, uint32_t k0, uint32_t k1) {
  return mix32(mix32(counter + k0) ^ k1);
}

struct Keys {
  uint32_t k0, k1;
};

Keys keys_for(uint64_t key, uint64_t high) {
  return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32) ^ mix32(static_cast<uint32_t>(high))};
}

// Draws are 16 bits: p is rounded to t / 2¹⁶, t = ⌊p · 2¹⁶⌉, and a kept element is scaled by
// 2¹⁶ / (2¹⁶ − t), the exact inverse of the keep rate, so E[y] = x.
uint32_t drop_threshold(double p) {
  return static_cast<uint32_t>(std::min(65536.0, std::nearbyint(p * 65536.0)));
}

double keep_scale(uint32_t threshold) { return 65536.0 / (65536.0 - threshold); }

// One 32-bit hash gives two 16-bit draws. Counters are taken in chunks of 128: element c with
// o = c mod 128 uses hash number (c / 128) · 64 + o mod 64, its low half when o < 64 and its
// high half otherwise. A whole chunk is then three plain loops (64 hashes, 64 + 64 elements)
// that vectorise; only a slice's ragged ends go element by element.
constexpr uint32_t kChunk = 128, kHalf = kChunk / 2;

XMOE_VEC_INLINE uint32_t draw16(uint32_t c, Keys k) {
  const uint32_t h = draw(((c / kChunk) * kHalf) | (c % kHalf), k.k0, k.k1);
  return (c % kChunk) < kHalf ? h & 0xffffu : h >> 16;
}

// out[i] = keep(i) ? in[i] · scale : 0 for i in [0, n), counters start at `first`.
template <typename T>
XMOE_VEC_INLINE void masked_scale(const T* in, T* out, int64_t n, uint32_t first, Keys k,
                                  uint32_t threshold, T scale) {
  auto one = [&](int64_t j) {
    out[j] = in[j] * (draw16(first + static_cast<uint32_t>(j), k) >= threshold ? scale : T(0));
  };
  int64_t j = 0;
  for (; j < n && (first + static_cast<uint32_t>(j)) % kChunk != 0; ++j) one(j);
  uint32_t h[kHalf];
  for (; j + kChunk <= n; j += kChunk) {
    const uint32_t base = (first + static_cast<uint32_t>(j)) / kChunk * kHalf;
    for (uint32_t l = 0; l < kHalf; ++l) h[l] = draw(base + l, k.k0, k.k1);
    const T* x = in + j;
    T* y = out + j;
    // selects, not branches
    for (uint32_t l = 0; l < kHalf; ++l) {
      y[l] = x[l] * ((h[l] & 0xffffu) >= threshold ? scale : T(0));
    }
    for (uint32_t l = 0; l < kHalf; ++l) {
      y[kHalf + l] = x[kHalf + l] * ((h[l] >> 16) >= threshold ? scale : T(0));
    }
  }
  for (; j < n; ++j) one(j);
}

// The float32 loop is the hot one: it also has a copy compiled for AVX2, chosen at run time.
#if XMOE_X86_DISPATCH
XMOE_TARGET_AVX2_FMA void masked_scale_f32_avx2(const float* in, float* out, int64_t n,
                                                uint32_t first, Keys k, uint32_t threshold,
                                                float scale) {
  masked_scale(in, out, n, first, k, threshold, scale);
}
#endif

void masked_scale_f32(const float* in, float* out, int64_t n, uint32_t first, Keys k,
                      uint32_t threshold, float scale) {
#if XMOE_X86_DISPATCH
  if (detail::cpu_has_avx2_fma()) return masked_scale_f32_avx2(in, out, n, first, k, threshold, scale);
#endif
  masked_scale(in, out, n, first, k, threshold, scale);
}

void masked_scale_f64(const double* in, double* out, int64_t n, uint32_t first, Keys k,
                      uint32_t threshold, double scale) {
  masked_scale(in, out, n, first, k, threshold, scale);
}

template <typename T>
void apply_mask_slice(const T* in, T* out, int64_t n, int64_t first, double p, uint64_t key) {
  const uint32_t threshold = drop_threshold(p);
  const double scale = keep_scale(threshold);
  // Split at multiples of 2³² so each piece has one high word.
  int64_t begin = first;
  const int64_t end = first + n;
  while (begin < end) {
    const uint64_t high = static_cast<uint64_t>(begin) >> 32;
    const int64_t piece_end = std::min<int64_t>(end, static_cast<int64_t>((high + 1) << 32));
    const Keys k = keys_for(key, high);
    const auto counter = static_cast<uint32_t>(begin);
    if constexpr (std::is_same_v<T, float>) {
      masked_scale_f32(in + (begin - first), out + (begin - first), piece_end - begin, counter, k,
                       threshold, static_cast<float>(scale));
    } else {
      masked_scale_f64(in + (begin - first), out + (begin - first), piece_end - begin, counter, k,
                       threshold, scale);
    }
    begin = piece_end;
  }
}

// y = mask(key) ⊙ x / (1 − p) over the flat elements of x, in parallel.
at::Tensor apply_mask(const at::Tensor& x, double p, uint64_t key) {
  at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "xmoe::kernels::dropout", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, in.numel(), kDropoutGrain, [&](int64_t begin, int64_t end) {
      apply_mask_slice(src + begin, dst + begin, end - begin, begin, p, key);
    });
  });
  return out;
}

struct HashDropout : torch::autograd::Function<HashDropout> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double p, int64_t key) {
    ctx->saved_data["p"] = p;
    ctx->saved_data["key"] = key;
    return apply_mask(x, p, static_cast<uint64_t>(key));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The mask is regenerated from the key: nothing of size x is kept for backward.
    const double p = ctx->saved_data["p"].toDouble();
    const auto key = static_cast<uint64_t>(ctx->saved_data["key"].toInt());
    return {apply_mask(grads[0], p, key), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor dropout(const at::Tensor& x, double p, bool train, c10::optional<at::Generator> generator) {
  if (!(p >= 0.0 && p < 1.0))
    throw std::invalid_argument("xmoe::kernels::dropout: p = " + std::to_string(p) + " must be in [0, 1)");
  if (!train || p == 0.0) return x;
  const bool hashed = x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
  if (!hashed) return at::dropout(x, p, train);
  const uint64_t key = draw_dropout_key(generator);
  return HashDropout::apply(x, p, static_cast<int64_t>(key));
}

uint64_t draw_dropout_key(c10::optional<at::Generator> generator) {
  at::CPUGeneratorImpl* gen =
      at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

void apply_dropout_mask(const float* in, float* out, int64_t n, int64_t first, double p, uint64_t key) {
  apply_mask_slice(in, out, n, first, p, key);
}

void apply_dropout_mask(const double* in, double* out, int64_t n, int64_t first, double p,
                        uint64_t key) {
  apply_mask_slice(in, out, n, first, p, key);
}

at::Tensor dropout_keep_mask(int64_t numel, double p, uint64_t key) {
  if (!(p >= 0.0 && p < 1.0))
    throw std::invalid_argument("xmoe::kernels::dropout_keep_mask: p = " + std::to_string(p) +
                                " must be in [0, 1)");
  return apply_mask(at::ones({numel}, at::kFloat), p, key).ne(0);
}

}  // namespace xmoe::kernels
