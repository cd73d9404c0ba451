#include "xmoe/kernels/nonfinite.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <functional>

namespace xmoe::kernels {

namespace {

// Non-finite ⇔ every exponent bit set (∞ and NaN). Integer tests on the bits vectorise; the
// floating-point classification does not without -ffinite-math-only, which would remove it.
template <typename Float, typename Bits, Bits kExponent>
int64_t count_exponent_all_ones(const Float* x, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, x + i, sizeof bits);
    count += (bits & kExponent) == kExponent;
  }
  return count;
}

template <typename Float, typename Bits, Bits kExponent>
int64_t count_parallel(const Float* x, int64_t n) {
  return at::parallel_reduce(
      0, n, int64_t{1} << 16, int64_t{0},
      [&](int64_t begin, int64_t end, int64_t partial) {
        return partial + count_exponent_all_ones<Float, Bits, kExponent>(x + begin, end - begin);
      },
      std::plus<int64_t>());
}

}  // namespace

int64_t count_nonfinite(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous()) {
    if (t.scalar_type() == at::kFloat)
      return count_parallel<float, uint32_t, 0x7f800000u>(t.data_ptr<float>(), t.numel());
    if (t.scalar_type() == at::kDouble)
      return count_parallel<double, uint64_t, 0x7ff0000000000000ull>(t.data_ptr<double>(), t.numel());
  }
  at::NoGradGuard no_grad;
  return t.numel() - at::isfinite(t).sum().item<int64_t>();
}

}  // namespace xmoe::kernels
