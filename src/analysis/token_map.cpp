#include "xmoe/analysis/token_map.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <string>

namespace xmoe::analysis {

namespace {

[[noreturn]] void fail_pca(const std::string& message) {
  throw std::invalid_argument("xmoe::analysis::pca_2d: " + message);
}

void check_input(const at::Tensor& x) {
  if (!x.defined()) fail_pca("x is an undefined tensor");
  if (x.dim() != 2 || x.size(0) < 2 || x.size(1) < 1) {
    std::ostringstream s;
    s << "x must be [N, d] with N >= 2 points and d >= 1, got shape " << x.sizes();
    fail_pca(s.str());
  }
  if (!at::isFloatingType(x.scalar_type())) {
    fail_pca(std::string("x must be a floating tensor, got ") + c10::toString(x.scalar_type()));
  }
  if (!at::isfinite(x).all().item<bool>()) fail_pca("x has non-finite values");
}

}  // namespace

at::Tensor pca_2d(const at::Tensor& x_in) {
  check_input(x_in);
  at::NoGradGuard no_grad;
  at::Tensor x = x_in.detach().to(at::kCPU, at::kDouble);
  at::Tensor centred = x - x.mean(0, /*keepdim=*/true);  // [N, d]
  auto svd = at::linalg_svd(centred, /*full_matrices=*/false);
  at::Tensor sigma = std::get<1>(svd);      // [min(N, d)], descending
  at::Tensor vh = std::get<2>(svd);         // [min(N, d), d], rows = components v_jᵀ
  const int64_t n_components = std::min<int64_t>(2, sigma.size(0));
  const double tolerance = kPcaRelativeTolerance * sigma[0].item<double>();

  at::Tensor out = at::zeros({x.size(0), 2}, x.options());  // [N, 2]
  for (int64_t j = 0; j < n_components; ++j) {
    const double s = sigma[j].item<double>();
    if (!(s > tolerance)) continue;  // no variance along v_j: leave the column 0
    at::Tensor v = vh[j];                                    // [d]
    const int64_t pivot = v.abs().argmax().item<int64_t>();  // first largest |loading|
    if (v[pivot].item<double>() < 0.0) v = -v;
    out.select(1, j).copy_(at::matmul(centred, v));
  }
  return out;
}

}  // namespace xmoe::analysis
