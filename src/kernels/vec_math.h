// Branch-free float32 exp for the elementwise kernels (GELU, cross-entropy).
//
// Why not std::exp: without -ffast-math GCC keeps expf a scalar libm call, so a loop over it
// does not vectorise; this one is plain arithmetic on floats and int32 and does.
//
//   e^x = 2ⁿ · e^r,   n = round(x · log₂e),   r = x − n · ln 2  (ln 2 split in two for accuracy)
//   e^r ≈ 1 + r + r² · P(r) on |r| ≤ ln2 / 2  (Cephes expf's degree-5 minimax polynomial)
//
// Error ≤ 1 ulp of the correctly rounded result (measured on every 64th float of [−87, 88],
// AVX2 + FMA and baseline builds). Arguments are clamped to that range, so e^x for x < −87 comes
// out as e^−87 ≈ 1.6e−38 instead of a smaller number or zero; NaN stays NaN.
#pragma once

#include <cstdint>
#include <cstring>

namespace xmoe::kernels::detail {

// Forced inline: the callers are loops compiled for AVX2 + FMA (below), into which GCC does not
// inline a plain function by itself (different target options), and a call stops vectorisation.
#if defined(__GNUC__)
#define XMOE_VEC_INLINE inline __attribute__((always_inline))
#else
#define XMOE_VEC_INLINE inline
#endif

// x86-64 with GCC or Clang: hot loops get a second copy compiled for AVX2 + FMA, chosen at run
// time, so the binary stays portable. (Not target_clones("arch=haswell"): its resolver asks
// whether the CPU *is* a Haswell, so AMD CPUs with AVX2 would get the baseline copy.)
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define XMOE_X86_DISPATCH 1
#define XMOE_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
#define XMOE_X86_DISPATCH 0
#endif

XMOE_VEC_INLINE float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : x;  // selects, not std::min: GCC left that an out-of-line call
  x = x > 88.0f ? 88.0f : x;    // inside the AVX2 copies
  // Round to nearest by the 1.5 · 2²³ trick: vectorises without SSE4.1's roundps.
  constexpr float kRound = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2ⁿ, n ∈ [−126, 127]. A NaN x leaves n NaN, whose int conversion is undefined (and came out
  // as INT_MIN, shifted left as a negative number): it takes n = 0 and p carries the NaN.
  const float n_finite = n == n ? n : 0.0f;
  const int32_t bits = (static_cast<int32_t>(n_finite) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace xmoe::kernels::detail
