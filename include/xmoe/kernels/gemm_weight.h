// Where expert weight matrices start in memory.
//
// oneDNN 2.6 runs a row-major product C = A · B (neither operand transposed) with few rows, where
// it picks its no-copy kernels (m up to a few hundred rows against thousands of columns), much
// more slowly under its AVX2 kernels when B starts on a 32-byte boundary than when it starts
// 16 bytes past one. Every expert block's input gradients, ∂h = ∂y · W2[e] and ∂x = ∂a · W1[e],
// are such products with an expert weight as B. Measured on the 2-core EPYC (AVX2) hosts, 2
// threads, T = 8192, d = 512, d_ff = 2048, E = 128 (64 rows per block; docs/performance.md,
// "Expert weights off the 32-byte grid"): 33-44 → 64-79 GFLOP/s per thread for ∂y · W2[e] and
// 53-60 → 69-84 for ∂a · W1[e]; starts 4, 8, 16, 48 or 80 bytes past a boundary were fast,
// multiples of 32 bytes slow. BM_SgemmWeightPlacement (bench/bench_gemm.cpp) shows it alone.
// LibTorch aligns every allocation to 64 bytes, so the weights are placed explicitly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace xmoe::kernels {

/// Bytes past a 32-byte boundary at which B operands of few-row C = A · B products should start
/// on this CPU: 16 where oneDNN runs its AVX2 kernels, 0 elsewhere (its AVX-512 kernels are other
/// code, not measured, and their 64-byte loads would split cache lines from such an offset).
int64_t gemm_weight_offset_bytes();

/// An uninitialised contiguous float32 CPU tensor of `shape` whose data starts
/// gemm_weight_offset_bytes() past a 32-byte boundary (where that is not 0: up to 7 floats into a
/// slightly larger storage, not an autograd view). Every slice along the first dimension starts
/// at the same offset when a slice's size is a multiple of 8 floats, as for [E, rows, cols]
/// expert weights with cols a multiple of 8.
at::Tensor empty_gemm_weight(at::IntArrayRef shape);

}  // namespace xmoe::kernels
