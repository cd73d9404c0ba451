#include "xmoe/kernels/dropout.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

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
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The per-element draw: the counter is the low 32 bits of the index; the high bits are folded
// into k1 by the caller, so tensors over 2³² elements get distinct masks too.
inline uint32_t draw(uint32_t counter, uint32_t k0, uint32_t k1) { return mix32(mix32(counter + k0) ^ k1); }

struct Keys {
  uint32_t k0, k1;
};

Keys keys_for(uint64_t key, uint64_t high) {
  return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32) ^ mix32(static_cast<uint32_t>(high))};
}

uint32_t drop_threshold(double p) {
  const double t = std::nearbyint(p * 4294967296.0);
  return t >= 4294967295.0 ? 0xffffffffU : static_cast<uint32_t>(t);
}

// out[i] = keep(i) ? in[i] · scale : 0 for i in [0, n), counters start at `first`.
template <typename T>
inline void masked_scale(const T* in, T* out, int64_t n, uint32_t first, Keys k, uint32_t threshold,
                         T scale) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t h = draw(first + static_cast<uint32_t>(j), k.k0, k.k1);
    const T factor = h >= threshold ? scale : T(0);  // a select, not a branch: vectorises
    out[j] = in[j] * factor;
  }
}

// The float32 loop is the hot one: compiled for AVX2 and for the baseline ISA, picked at load
// time, so the binary stays portable.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void masked_scale_f32(const float* in, float* out, int64_t n, uint32_t first, Keys k,
                      uint32_t threshold, float scale) {
  masked_scale(in, out, n, first, k, threshold, scale);
}

void masked_scale_f64(const double* in, double* out, int64_t n, uint32_t first, Keys k,
                      uint32_t threshold, double scale) {
  masked_scale(in, out, n, first, k, threshold, scale);
}

template <typename T>
void apply_mask_slice(const T* in, T* out, int64_t n, int64_t first, double p, uint64_t key) {
  const uint32_t threshold = drop_threshold(p);
  const double scale = 1.0 / (1.0 - p);
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
