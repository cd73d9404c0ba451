#include <ATen/Parallel.h>
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);  // tests compare numbers, not speed: one thread is deterministic
  return RUN_ALL_TESTS();
}
