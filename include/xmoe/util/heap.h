// Process-wide heap setting for training and benchmarking.
//
// glibc serves every allocation above its mmap threshold (≤ 32 MiB) with its own mmap and
// unmaps it on free, so a buffer that autograd frees and re-allocates every step — weight
// gradients set to none, activations — comes back as fresh pages: a page fault and a kernel
// page clear per 4 KiB (or 2 MiB) each time. For one MoE layer with E = 128 experts (1 GiB of
// expert weight gradients per step) that was ~20 % of forward + backward (docs/performance.md).
#pragma once

namespace xmoe {

/// Makes glibc serve large allocations from its heap and never return freed heap memory to the
/// operating system (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = -1), so steady-state steps reuse
/// already-mapped pages. The process's resident memory then stays at its peak. Call once, early
/// (the `xmoe` CLI does); a library user opts in. Returns false where the C library is not glibc
/// or refuses a setting (nothing is changed then, or only the first setting).
bool retain_freed_heap_memory();

}  // namespace xmoe
