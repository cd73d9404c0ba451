#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace xmoe {

at::Generator make_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

at::Tensor uniform_init(at::IntArrayRef shape, double bound, at::Generator generator) {
  return at::empty(shape, at::kFloat).uniform_(-bound, bound, generator);
}

at::Tensor orthogonal_init(int64_t rows, int64_t cols, double gain, at::Generator generator) {
  const bool tall = rows > cols;
  at::Tensor gaussian =
      at::empty({std::max(rows, cols), std::min(rows, cols)}, at::kDouble).normal_(0, 1, generator);
  auto qr = at::linalg_qr(gaussian);
  at::Tensor q = std::get<0>(qr);
  at::Tensor r = std::get<1>(qr);
  q = q * at::sign(r.diagonal()).unsqueeze(0);  // unique Q: diag(R) > 0
  if (!tall) q = q.t();
  return (q * gain).to(at::kFloat).contiguous();
}

}  // namespace xmoe
