#include "softmax_rows.h"

#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace xmoe::kernels::detail {

namespace {

// Reductions run in kLanes independent partial results (one vector register): that is what lets
// them vectorise without -ffast-math.
constexpr int64_t kLanes = 8;

// Eight floats as one value (GCC and Clang vector extension): one AVX register in the AVX2 copy,
// two SSE registers in the baseline one. The masked max is written with it because GCC leaves a
// float max reduction scalar, even split into lanes.
typedef float Float8 __attribute__((vector_size(32)));
typedef int32_t Int8 __attribute__((vector_size(32)));

XMOE_VEC_INLINE Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

XMOE_VEC_INLINE Float8 lanewise_max(Float8 a, Float8 b) {  // a > b ? a : b (a NaN in a yields b)
  const Int8 take_a = a > b;
  return reinterpret_cast<Float8>((take_a & reinterpret_cast<Int8>(a)) |
                                  (~take_a & reinterpret_cast<Int8>(b)));
}

XMOE_VEC_INLINE void masked_softmax_row(float* s, int64_t n, const float* bias) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // max_j s[j] + bias[j]: a padding key adds −∞; a NaN that garbage there may produce loses
  // every comparison and is skipped too.
  const int64_t body = n - n % kLanes;
  Float8 lane_max = Float8{} + kNegInf;
  for (int64_t j = 0; j < body; j += kLanes)
    lane_max = lanewise_max(load8(s + j) + load8(bias + j), lane_max);
  float m = kNegInf;
  for (int64_t l = 0; l < kLanes; ++l) m = lane_max[l] > m ? lane_max[l] : m;
  for (int64_t j = body; j < n; ++j) {
    const float v = s[j] + bias[j];
    m = v > m ? v : m;
  }
  // e^(s − m) where the key is real, 0 where it is padding (a select of two computed values),
  // then the sum in register lanes: a lane array summed inside this loop lives on the stack and
  // costs a store-to-load round trip per vector.
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_f32(s[j] - m);
    s[j] = bias[j] == 0.0f ? e : 0.0f;
  }
  Float8 lane_sum = {};
  for (int64_t j = 0; j < body; j += kLanes) lane_sum += load8(s + j);
  float sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lane_sum[l];
  for (int64_t j = body; j < n; ++j) sum += s[j];
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}

XMOE_VEC_INLINE void softmax_backward_row(float* dp, const float* p, int64_t n, float scale) {
  const int64_t body = n - n % kLanes;
  Float8 lane_dot = {};
  for (int64_t j = 0; j < body; j += kLanes) lane_dot += load8(dp + j) * load8(p + j);
  float dot = 0;
  for (int64_t l = 0; l < kLanes; ++l) dot += lane_dot[l];
  for (int64_t j = body; j < n; ++j) dot += dp[j] * p[j];
  for (int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - dot) * scale;
}

XMOE_VEC_INLINE void masked_softmax_loop(float* s, int64_t rows, int64_t n, const float* bias) {
  for (int64_t i = 0; i < rows; ++i) masked_softmax_row(s + i * n, n, bias);
}

XMOE_VEC_INLINE void softmax_backward_loop(float* dp, const float* p, int64_t rows, int64_t n,
                                           float scale) {
  for (int64_t i = 0; i < rows; ++i) softmax_backward_row(dp + i * n, p + i * n, n, scale);
}

#if XMOE_X86_DISPATCH
XMOE_TARGET_AVX2_FMA void masked_softmax_avx2(float* s, int64_t rows, int64_t n, const float* bias) {
  masked_softmax_loop(s, rows, n, bias);
}
XMOE_TARGET_AVX2_FMA void softmax_backward_avx2(float* dp, const float* p, int64_t rows, int64_t n,
                                                float scale) {
  softmax_backward_loop(dp, p, rows, n, scale);
}
#endif

}  // namespace

void masked_softmax_rows(float* s, int64_t rows, int64_t n, const float* bias) {
  if (std::all_of(bias, bias + n, [](float b) { return b != 0.0f; })) {
    std::fill(s, s + rows * n, 0.0f);
    return;
  }
#if XMOE_X86_DISPATCH
  if (cpu_has_avx2_fma()) return masked_softmax_avx2(s, rows, n, bias);
#endif
  masked_softmax_loop(s, rows, n, bias);
}

void masked_softmax_rows(double* s, int64_t rows, int64_t n, const double* bias) {
  if (std::all_of(bias, bias + n, [](double b) { return b != 0.0; })) {
    std::fill(s, s + rows * n, 0.0);
    return;
  }
  for (int64_t i = 0; i < rows; ++i) {
    double* r = s + i * n;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) m = bias[j] == 0.0 && r[j] > m ? r[j] : m;
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      r[j] = bias[j] == 0.0 ? std::exp(r[j] - m) : 0.0;
      sum += r[j];
    }
    for (int64_t j = 0; j < n; ++j) r[j] /= sum;
  }
}

void softmax_backward_rows(float* dp, const float* p, int64_t rows, int64_t n, float scale) {
#if XMOE_X86_DISPATCH
  if (cpu_has_avx2_fma()) return softmax_backward_avx2(dp, p, rows, n, scale);
#endif
  softmax_backward_loop(dp, p, rows, n, scale);
}

void softmax_backward_rows(double* dp, const double* p, int64_t rows, int64_t n, double scale) {
  for (int64_t i = 0; i < rows; ++i) {
    double* r = dp + i * n;
    const double* q = p + i * n;
    double dot = 0;
    for (int64_t j = 0; j < n; ++j) dot += r[j] * q[j];
    for (int64_t j = 0; j < n; ++j) r[j] = q[j] * (r[j] - dot) * scale;
  }
}

}  // namespace xmoe::kernels::detail
