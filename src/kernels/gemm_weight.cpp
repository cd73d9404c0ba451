#include "xmoe/kernels/gemm_weight.h"

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <oneapi/dnnl/dnnl.h>

#include <cstdint>

namespace xmoe::kernels {

int64_t gemm_weight_offset_bytes() {
  static const int64_t offset = [] {
    const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
    const unsigned avx2 = dnnl_cpu_isa_avx2, avx512 = dnnl_cpu_isa_avx512_core;
    const bool runs_avx2_kernels = (isa & avx2) == avx2 && (isa & avx512) != avx512;
    return runs_avx2_kernels ? int64_t{16} : int64_t{0};
  }();
  return offset;
}

at::Tensor empty_gemm_weight(at::IntArrayRef shape) {
  const int64_t numel = c10::multiply_integers(shape);
  const int64_t offset = gemm_weight_offset_bytes();
  if (offset == 0) return at::empty(shape, at::kFloat);
  // LibTorch's CPU allocator aligns to 64 bytes; 8 spare floats cover any base address.
  at::Tensor storage = at::empty({numel + 8}, at::kFloat);
  const auto misalignment =
      static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(storage.data_ptr<float>()) % 32);
  const int64_t shift_bytes = (offset - misalignment + 32) % 32;
  // set_ rather than narrow: the result owns a share of the storage without being an autograd
  // view of it, so it can be registered as a parameter like any freshly allocated tensor.
  return at::empty({0}, at::kFloat).set_(storage.storage(), shift_bytes / 4, shape, {});
}

}  // namespace xmoe::kernels
