#include "xmoe/util/heap.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace xmoe {

bool retain_freed_heap_memory() {
#if defined(__GLIBC__)
  // -1: "disables trimming completely" (mallopt(3)); 0 mmaps: large blocks come from the heap.
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1;
#else
  return false;
#endif
}

}  // namespace xmoe
