// 2-D token maps for the report (X-MoE paper Figure 4 style): the representations entering a
// MoE layer projected onto a plane, one point per probe token, coloured by its top-1 expert.
#pragma once

#include <ATen/Tensor.h>

namespace xmoe::analysis {

/// Singular values of the centred data below kPcaRelativeTolerance · σ_max (or all of them when
/// σ_max = 0) count as zero: the component carries no variance and its column is exactly 0.
inline constexpr double kPcaRelativeTolerance = 1e-12;

/// Principal-component projection of x [N, d] onto its top two components. Returns [N, 2]
/// float64 on the CPU (input: any floating dtype and device, computed in float64).
///   x̄ = (1/N) Σ_n x_n,  X_c = x − x̄,  X_c = U S Vᵀ (thin SVD, σ_1 ≥ σ_2 ≥ …),
///   out[:, j] = X_c v_j  for j = 1, 2   (= u_j σ_j; column j has variance σ_j² / N).
/// Deterministic sign: each v_j is flipped so that its largest-|·| entry (the first such on
/// ties) is positive, so the map does not mirror between runs or library versions.
/// Column 1 is all zeros when d == 1 or when the centred data has rank < 2 (σ_2 ≈ 0); both
/// columns are zeros when all points coincide. Invariant to translation of x; the columns
/// are uncorrelated.
/// Throws std::invalid_argument unless x is 2-D with N ≥ 2, d ≥ 1, floating and finite.
at::Tensor pca_2d(const at::Tensor& x);

}  // namespace xmoe::analysis
