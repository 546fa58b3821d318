// Shared main for unit tests: GoogleTest plus helpers to locate the real model and test data.
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
