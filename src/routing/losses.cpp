#include "xmoe/routing/losses.h"

#include <ATen/ATen.h>

#include <cmath>

namespace xmoe {

at::Tensor switch_balance_loss(const at::Tensor& probs, const at::Tensor& top1) {
  TORCH_CHECK(probs.dim() == 2, "xmoe::switch_balance_loss: probs must be [T, E], got ",
              probs.sizes());
  TORCH_CHECK(top1.dim() == 1 && top1.size(0) == probs.size(0),
              "xmoe::switch_balance_loss: top1 must be [T] with T = ", probs.size(0), ", got ",
              top1.sizes());
  const int64_t n_expert = probs.size(1);
  if (probs.size(0) == 0) return at::zeros({}, probs.options());
  // f_j: share of tokens whose first choice is j (a count: no gradient).
  at::Tensor f = at::zeros({n_expert}, probs.options())
                     .index_add_(0, top1, at::ones({top1.size(0)}, probs.options()))
                     .div_(static_cast<double>(top1.size(0)));
  at::Tensor p = probs.mean(0);
  return (f * p).sum() * static_cast<double>(n_expert);
}

at::Tensor cv_squared(const at::Tensor& v) {
  TORCH_CHECK(v.dim() == 1, "xmoe::cv_squared: expects a vector, got ", v.sizes());
  if (v.size(0) <= 1) return at::zeros({}, v.options());
  at::Tensor mean = v.mean();
  at::Tensor variance = (v - mean).pow(2).mean();  // population variance
  return variance / (mean.pow(2) + 1e-10);
}

at::Tensor router_z_loss(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "xmoe::router_z_loss: logits must be [T, E], got ",
              logits.sizes());
  if (logits.size(0) == 0) return at::zeros({}, logits.options());
  return at::logsumexp(logits, {1}).pow(2).mean();
}

at::Tensor normal_cdf(const at::Tensor& x) { return 0.5 * at::erfc(x * (-M_SQRT1_2)); }

at::Tensor smooth_load(const at::Tensor& clean, const at::Tensor& noise_std,
                       const at::Tensor& topk_plus_one, const at::Tensor& in_topk, int64_t k) {
  TORCH_CHECK(topk_plus_one.size(1) == k + 1, "xmoe::smooth_load: need the k+1 = ", k + 1,
              " largest noisy values, got ", topk_plus_one.size(1));
  // An expert already in the top k stays there while its noisy value beats the (k+1)-th;
  // one outside must beat the k-th.
  at::Tensor threshold_if_in = topk_plus_one.narrow(1, k, 1);       // [T, 1]
  at::Tensor threshold_if_out = topk_plus_one.narrow(1, k - 1, 1);  // [T, 1]
  at::Tensor prob_if_in = normal_cdf((clean - threshold_if_in) / noise_std);
  at::Tensor prob_if_out = normal_cdf((clean - threshold_if_out) / noise_std);
  return at::where(in_topk, prob_if_in, prob_if_out).sum(0);
}

double mean_entropy(const at::Tensor& probs) {
  if (probs.size(0) == 0) return 0.0;
  at::NoGradGuard no_grad;
  at::Tensor p = probs.to(at::kDouble);
  // 0·log 0 = 0
  at::Tensor plogp = at::where(p > 0, p * at::log(p.clamp_min(1e-300)), at::zeros_like(p));
  return (-plogp.sum(1)).mean().item<double>();
}

at::Tensor l2_normalize(const at::Tensor& v, double eps) {
  // The norm is accumulated in double: in float32 the sum of squares of a row near 1e20 is inf
  // and the row would become zeros, a silently wrong direction for a finite vector.
  const at::Tensor norm = v.norm(2, {-1}, /*keepdim=*/true, at::kDouble).clamp_min(eps);
  return v / norm.to(v.scalar_type());
}

}  // namespace xmoe
