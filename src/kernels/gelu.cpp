#include "xmoe/kernels/gelu.h"

#include "vec_math.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGeluGrain = 1 << 14;  // elements per task: a few µs

// Φ(x) and e^(−x²/2) for float32: A&S 7.1.26 gives erf(z) = 1 − P(t) e^(−z²), t = 1 / (1 + p z)
// for z = |x| / √2 ≥ 0, and e^(−z²) = e^(−x²/2).
struct CdfAndGauss {
  float cdf, gauss;  // Φ(x), e^(−x²/2)
};

XMOE_VEC_INLINE CdfAndGauss cdf_and_gauss(float x) {
  const float z = std::abs(x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  poly = poly * t;
  const float gauss = detail::exp_f32(-0.5f * x * x);
  const float tail = 0.5f * poly * gauss;  // ½ (1 − erf(z)) = Φ(−|x|)
  return {x >= 0.0f ? 1.0f - tail : tail, gauss};
}

XMOE_VEC_INLINE void gelu_forward_loop(const float* a, float* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] * cdf_and_gauss(a[i]).cdf;
}

XMOE_VEC_INLINE void gelu_with_derivative_loop(const float* a, float* h, float* g, int64_t n) {
  constexpr float kInvSqrt2Pi = 0.39894228040143268f;
  for (int64_t i = 0; i < n; ++i) {
    const CdfAndGauss c = cdf_and_gauss(a[i]);
    h[i] = a[i] * c.cdf;
    g[i] = c.cdf + a[i] * kInvSqrt2Pi * c.gauss;
  }
}

#if XMOE_X86_DISPATCH
XMOE_TARGET_AVX2_FMA void gelu_forward_avx2(const float* a, float* h, int64_t n) {
  gelu_forward_loop(a, h, n);
}
XMOE_TARGET_AVX2_FMA void gelu_with_derivative_avx2(const float* a, float* h, float* g, int64_t n) {
  gelu_with_derivative_loop(a, h, g, n);
}
#endif

void gelu_forward_span(const float* a, float* h, int64_t n) {
#if XMOE_X86_DISPATCH
  if (detail::cpu_has_avx2_fma()) return gelu_forward_avx2(a, h, n);
#endif
  gelu_forward_loop(a, h, n);
}

void gelu_with_derivative_span(const float* a, float* h, float* g, int64_t n) {
#if XMOE_X86_DISPATCH
  if (detail::cpu_has_avx2_fma()) return gelu_with_derivative_avx2(a, h, g, n);
#endif
  gelu_with_derivative_loop(a, h, g, n);
}

void gelu_forward_span(const double* a, double* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] * 0.5 * std::erfc(-a[i] * M_SQRT1_2);
}

void gelu_with_derivative_span(const double* a, double* h, double* g, int64_t n) {
  const double inv_sqrt_2pi = 0.5 * M_2_SQRTPI * M_SQRT1_2;
  for (int64_t i = 0; i < n; ++i) {
    const double cdf = 0.5 * std::erfc(-a[i] * M_SQRT1_2);
    h[i] = a[i] * cdf;
    g[i] = cdf + a[i] * inv_sqrt_2pi * std::exp(-0.5 * a[i] * a[i]);
  }
}

bool handled(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

// h = gelu(a), and g = gelu'(a) too when `g` is given; all contiguous, one shape.
void forward_into(const at::Tensor& a, at::Tensor& h, at::Tensor* g = nullptr) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "xmoe::kernels::gelu", [&] {
    const scalar_t* x = a.data_ptr<scalar_t>();
    scalar_t* out = h.data_ptr<scalar_t>();
    scalar_t* slope = g ? g->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, a.numel(), kGeluGrain, [&](int64_t b, int64_t e) {
      if (slope) {
        gelu_with_derivative_span(x + b, out + b, slope + b, e - b);
      } else {
        gelu_forward_span(x + b, out + b, e - b);
      }
    });
  });
}

// Saves gelu'(x) instead of x: it costs forward a few multiply-adds on the e^(−x²/2) it computes
// anyway, and turns backward into one multiply (the erf and exp were most of its time).
struct Gelu : torch::autograd::Function<Gelu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    at::Tensor h = at::empty_like(x);
    at::Tensor slope = at::empty_like(x);
    forward_into(x, h, &slope);
    ctx->save_for_backward({slope});
    return h;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0] * ctx->get_saved_variables()[0]};
  }
};

}  // namespace

at::Tensor gelu(const at::Tensor& x) {
  if (!handled(x)) return at::gelu(x);
  if (!(at::GradMode::is_enabled() && x.requires_grad())) {  // nothing will call backward
    at::Tensor in = x.contiguous();
    at::Tensor h = at::empty_like(in);
    forward_into(in, h);
    return h;
  }
  return Gelu::apply(x.contiguous());
}

void gelu_with_derivative_out(const at::Tensor& a, at::Tensor& h, at::Tensor& g) {
  TORCH_CHECK(a.sizes() == h.sizes() && a.sizes() == g.sizes() && a.scalar_type() == h.scalar_type() &&
                  a.scalar_type() == g.scalar_type(),
              "xmoe::kernels::gelu_with_derivative_out: outputs ", h.sizes(), " and ", g.sizes(),
              " do not match input ", a.sizes());
  if (!handled(a) || !a.is_contiguous() || !h.is_contiguous() || !g.is_contiguous() ||
      !h.device().is_cpu() || !g.device().is_cpu()) {
    at::gelu_out(h, a);
    g.copy_(at::gelu_backward(at::ones_like(a), a));
    return;
  }
  forward_into(a, h, &g);
}

}  // namespace xmoe::kernels
