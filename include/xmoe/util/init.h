// Seeded parameter initialisers (each draws only from the generator it is given, so a layer's
// weights depend on its seed alone, not on what else used the global RNG).
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>

namespace xmoe {

/// A CPU generator seeded with `seed`.
at::Generator make_generator(uint64_t seed);

/// U(−bound, bound) samples of the given shape (float32).
at::Tensor uniform_init(at::IntArrayRef shape, double bound, at::Generator generator);

/// [rows, cols] matrix with orthonormal rows (rows ≤ cols) or columns (rows > cols), times
/// `gain`: Q of the QR decomposition of a Gaussian matrix, signs fixed by diag(R).
at::Tensor orthogonal_init(int64_t rows, int64_t cols, double gain, at::Generator generator);

}  // namespace xmoe
