// Ranks as threads: each thread joins one c10d Gloo group, through an in-process store (or a TCP
// or file rendezvous), as separate processes would through TCP.
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

using RankBody = std::function<void(int, xmoe::dist::Communicator&)>;

/// Runs body(rank, group) on `world` threads that meet at `where`, and fails the test with
/// every rank's exception.
inline void run_ranks_at(const xmoe::dist::Rendezvous& where, int world, const RankBody& body,
                         std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
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

/// run_ranks_at a fresh in-process store.
inline void run_ranks(int world, const RankBody& body,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  static std::atomic<int> groups_formed{0};
  xmoe::dist::Rendezvous where;
  where.kind = xmoe::dist::Rendezvous::Kind::kInProcess;
  where.name = "test-group-" + std::to_string(groups_formed++);
  run_ranks_at(where, world, body, timeout);
}

}  // namespace xmoe_test
