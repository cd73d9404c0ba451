// Ranks as threads: each thread joins one c10d Gloo group through an in-process store, as
// separate processes would through TCP.
#pragma once

#include "xmoe/dist/communicator.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace xmoe_test {

/// Runs body(rank, group) on `world` threads and fails the test with every rank's exception.
inline void run_ranks(int world, const std::function<void(int, xmoe::dist::Communicator&)>& body,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  static std::atomic<int> groups_formed{0};
  xmoe::dist::Rendezvous where;
  where.kind = xmoe::dist::Rendezvous::Kind::kInProcess;
  where.name = "test-group-" + std::to_string(groups_formed++);
  std::vector<std::string> errors(world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      try {
        auto group = xmoe::dist::Communicator::create(r, world, where, timeout);
        body(r, *group);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

}  // namespace xmoe_test
