// retain_freed_heap_memory: a large freed block stays mapped in the process's heap.
#include "xmoe/util/heap.h"
#include "xmoe/util/sanitizer.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

void* volatile g_sink;  // keeps the compiler from eliding the malloc / free pair

TEST(Heap, FreedLargeBlocksStayInTheHeap) {
#if XMOE_ADDRESS_SANITIZER
  GTEST_SKIP() << "AddressSanitizer replaces glibc's allocator; mallopt does nothing under it";
#elif defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
  ASSERT_TRUE(xmoe::retain_freed_heap_memory());
  const size_t big = size_t{256} << 20;  // far above glibc's largest mmap threshold (32 MiB)
  const struct mallinfo2 before = mallinfo2();
  void* block = std::malloc(big);
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, big);
  g_sink = block;
  const struct mallinfo2 during = mallinfo2();
  EXPECT_EQ(during.hblkhd, before.hblkhd) << "the block was mmapped on its own";
  std::free(g_sink);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_GE(after.fordblks, big) << "the freed block was returned to the operating system";
#else
  GTEST_SKIP() << "glibc 2.33 or newer only";
#endif
}

}  // namespace
