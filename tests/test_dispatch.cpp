// Dispatch plan and expert capacity (SPEC §2.4, §4, §8 "Capacity mode") on hand-built routings.
#include "xmoe/kernels/dispatch_plan.h"
#include "xmoe/util/init.h"

#include "test_util.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace xmoe {
namespace {

at::Tensor ids2d(const std::vector<int64_t>& v, int64_t k) {
  return at::tensor(v, at::kLong).reshape({-1, k});
}
at::Tensor bools2d(const std::vector<int64_t>& v, int64_t k) {
  return at::tensor(v, at::kLong).reshape({-1, k}).to(at::kBool);
}
std::vector<int64_t> vec(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous().reshape({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// ---- expert_capacity -------------------------------------------------------------------------

TEST(DispatchCapacity, HandValues) {
  // C = ceil(cf · k · T / E); argument order (cf, T, k, E).
  EXPECT_EQ(expert_capacity(1.0, 5, 2, 4), 3);    // 10/4 = 2.5 → 3
  EXPECT_EQ(expert_capacity(1.0, 8, 1, 4), 2);    // exactly 2
  EXPECT_EQ(expert_capacity(1.25, 8, 1, 4), 3);   // 2.5 → 3
  EXPECT_EQ(expert_capacity(2.0, 3, 1, 4), 2);    // 1.5 → 2
  EXPECT_EQ(expert_capacity(0.5, 16, 2, 4), 4);   // exactly 4
  EXPECT_EQ(expert_capacity(0.01, 5, 2, 4), 1);   // 0.025 → 1: any positive factor keeps >= 1
  EXPECT_EQ(expert_capacity(1.0, 7, 3, 2), 11);   // 10.5 → 11
  EXPECT_EQ(expert_capacity(1.5, 100, 2, 32), 10);  // 9.375 → 10
}

TEST(DispatchCapacity, ZeroFactorMeansDropless) {
  EXPECT_EQ(expert_capacity(0.0, 5, 2, 4), -1);
  EXPECT_EQ(expert_capacity(0.0, 1000, 1, 3), -1);
}

TEST(DispatchCapacity, InvalidFactorThrows) {
  EXPECT_THROW(expert_capacity(-0.5, 5, 2, 4), c10::Error);
  EXPECT_THROW(expert_capacity(-1e-9, 5, 2, 4), c10::Error);
  EXPECT_THROW(expert_capacity(std::numeric_limits<double>::quiet_NaN(), 5, 2, 4), c10::Error);
  EXPECT_THROW(expert_capacity(std::numeric_limits<double>::infinity(), 5, 2, 4), c10::Error);
  try {
    expert_capacity(-0.5, 5, 2, 4);
    FAIL() << "expected a throw";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity_factor"), std::string::npos) << e.what();
  }
}

// ---- make_dispatch_plan ----------------------------------------------------------------------
//
// The hand-built routing used below: T = 5 tokens, k = 2, E = 4; expert 3 gets no token.
//   token: (first, second)   flat slot ids t·k + j
//   t0: (1, 0)   s0, s1
//   t1: (1, 2)   s2, s3
//   t2: (0, 1)   s4, s5
//   t3: (1, 0)   s6, s7
//   t4: (2, 1)   s8, s9
// Fill order = first choices in token order (s0 s2 s4 s6 s8), then second choices (s1 s3 s5 s7 s9).
//   expert 0: s4 (t2, 1st), s1 (t0, 2nd), s7 (t3, 2nd)
//   expert 1: s0, s2, s6 (1st of t0, t1, t3), s5, s9 (2nd of t2, t4)
//   expert 2: s8 (t4, 1st), s3 (t1, 2nd)
//   expert 3: —
at::Tensor hand_ids() { return ids2d({1, 0, 1, 2, 0, 1, 1, 0, 2, 1}, 2); }

TEST(DispatchPlan, DroplessGroupsByExpertInFillOrder) {
  DispatchPlan plan = make_dispatch_plan(hand_ids(), at::Tensor(), 4, -1);
  EXPECT_EQ(plan.n_tokens, 5);
  EXPECT_EQ(plan.top_k, 2);
  EXPECT_EQ(plan.n_expert, 4);
  EXPECT_EQ(plan.capacity, -1);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 3, 8, 10, 10}));
  EXPECT_EQ(vec(plan.slot_index), (std::vector<int64_t>{4, 1, 7, 0, 2, 6, 5, 9, 8, 3}));
  EXPECT_EQ(vec(plan.token_index), (std::vector<int64_t>{2, 0, 3, 0, 1, 3, 2, 4, 4, 1}));
  EXPECT_EQ(vec(plan.tokens_per_expert), (std::vector<int64_t>{3, 5, 2, 0}));
  EXPECT_EQ(plan.slot_index.scalar_type(), at::kLong);
  EXPECT_EQ(plan.token_index.scalar_type(), at::kLong);
  EXPECT_TRUE(plan.kept.all().item<bool>());
  EXPECT_EQ(plan.kept.sizes(), (std::vector<int64_t>{5, 2}));
  EXPECT_EQ(plan.n_active, 10);
  EXPECT_EQ(plan.n_dropped, 0);
  EXPECT_EQ(plan.n_kept(), 10);
  EXPECT_DOUBLE_EQ(plan.dropped_fraction(), 0.0);
}

TEST(DispatchPlan, TokenIndexIsSlotDividedByK) {
  DispatchPlan plan = make_dispatch_plan(hand_ids(), at::Tensor(), 4, -1);
  EXPECT_TRUE(at::equal(plan.token_index, plan.slot_index.div(2, "floor")));
  // Every row's slot really routes to the expert owning that row.
  at::Tensor flat = hand_ids().reshape({-1});
  for (int64_t e = 0; e < 4; ++e) {
    for (int64_t r = plan.offsets[e]; r < plan.offsets[e + 1]; ++r) {
      EXPECT_EQ(flat[plan.slot_index[r].item<int64_t>()].item<int64_t>(), e) << "row " << r;
    }
  }
}

TEST(DispatchPlan, EmptyExpertHasEmptyBlock) {
  // Only experts 0 and 2 of 5 receive tokens: experts 1, 3 and 4 get empty blocks.
  at::Tensor ids = ids2d({2, 0, 0, 2, 2}, 1);
  DispatchPlan plan = make_dispatch_plan(ids, at::Tensor(), 5, -1);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 2, 2, 5, 5, 5}));
  EXPECT_EQ(vec(plan.slot_index), (std::vector<int64_t>{1, 2, 0, 3, 4}));
  EXPECT_EQ(vec(plan.token_index), (std::vector<int64_t>{1, 2, 0, 3, 4}));
  EXPECT_EQ(vec(plan.tokens_per_expert), (std::vector<int64_t>{2, 0, 3, 0, 0}));
}

TEST(DispatchPlan, CapacityDropsLaterFirstChoicesAndSecondChoicesAfterAllFirst) {
  // C = 2. expert 0: keep s4 (t2 1st), s1 (t0 2nd); drop s7 (t3 2nd).
  //        expert 1: keep s0, s2 (1st of t0, t1); drop s6 (t3's FIRST choice, past capacity),
  //                  s5, s9 (second choices).  expert 2: keep s8, s3.
  DispatchPlan plan = make_dispatch_plan(hand_ids(), at::Tensor(), 4, 2);
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 2, 4, 6, 6}));
  EXPECT_EQ(vec(plan.slot_index), (std::vector<int64_t>{4, 1, 0, 2, 8, 3}));
  EXPECT_EQ(vec(plan.token_index), (std::vector<int64_t>{2, 0, 0, 1, 4, 1}));
  EXPECT_EQ(vec(plan.kept), (std::vector<int64_t>{1, 1, 1, 1, 1, 0, 0, 0, 1, 0}));
  // tokens_per_expert counts routed slots before dropping.
  EXPECT_EQ(vec(plan.tokens_per_expert), (std::vector<int64_t>{3, 5, 2, 0}));
  EXPECT_EQ(plan.n_active, 10);
  EXPECT_EQ(plan.n_dropped, 4);
  EXPECT_EQ(plan.n_kept(), 6);
  EXPECT_DOUBLE_EQ(plan.dropped_fraction(), 0.4);
}

TEST(DispatchPlan, SecondChoiceOfEarlierTokenLosesToFirstChoiceOfLaterToken) {
  // C = 1: expert 0 keeps t2's first choice (s4), not t0's second choice (s1), although t0
  // comes first in token order.
  DispatchPlan plan = make_dispatch_plan(hand_ids(), at::Tensor(), 4, 1);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 1, 2, 3, 3}));
  EXPECT_EQ(vec(plan.slot_index), (std::vector<int64_t>{4, 0, 8}));
  EXPECT_EQ(vec(plan.token_index), (std::vector<int64_t>{2, 0, 4}));
  EXPECT_EQ(vec(plan.kept), (std::vector<int64_t>{1, 0, 0, 0, 1, 0, 0, 0, 1, 0}));
  EXPECT_EQ(plan.n_dropped, 7);
  EXPECT_DOUBLE_EQ(plan.dropped_fraction(), 0.7);
}

TEST(DispatchPlan, CapacityFromExpertCapacity) {
  // expert_capacity(1.0, T=5, k=2, E=4) = 3: only expert 1 overflows (5 slots), dropping its
  // last two in fill order, the second choices s5 and s9.
  const int64_t c = expert_capacity(1.0, 5, 2, 4);
  DispatchPlan plan = make_dispatch_plan(hand_ids(), at::Tensor(), 4, c);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 3, 6, 8, 8}));
  EXPECT_EQ(vec(plan.slot_index), (std::vector<int64_t>{4, 1, 7, 0, 2, 6, 8, 3}));
  EXPECT_EQ(vec(plan.kept), (std::vector<int64_t>{1, 1, 1, 1, 1, 0, 1, 1, 1, 0}));
  EXPECT_DOUBLE_EQ(plan.dropped_fraction(), 0.2);
}

TEST(DispatchPlan, ZeroCapacityDropsEverything) {
  DispatchPlan plan = make_dispatch_plan(hand_ids(), at::Tensor(), 4, 0);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 0, 0, 0, 0}));
  EXPECT_EQ(plan.slot_index.numel(), 0);
  EXPECT_FALSE(plan.kept.any().item<bool>());
  EXPECT_DOUBLE_EQ(plan.dropped_fraction(), 1.0);
}

TEST(DispatchPlan, InactiveSlotsAreNeitherCountedNorDispatched) {
  // s0 (t0's first choice, expert 1) and s3 (t1's second choice, expert 2) are inactive.
  at::Tensor active = bools2d({0, 1, 1, 0, 1, 1, 1, 1, 1, 1}, 2);
  DispatchPlan dropless = make_dispatch_plan(hand_ids(), active, 4, -1);
  EXPECT_EQ(vec(dropless.tokens_per_expert), (std::vector<int64_t>{3, 4, 1, 0}));
  EXPECT_EQ(dropless.n_active, 8);
  EXPECT_EQ(dropless.n_dropped, 0);
  EXPECT_EQ(dropless.offsets, (std::vector<int64_t>{0, 3, 7, 8, 8}));
  EXPECT_EQ(vec(dropless.slot_index), (std::vector<int64_t>{4, 1, 7, 2, 6, 5, 9, 8}));
  EXPECT_EQ(vec(dropless.kept), (std::vector<int64_t>{0, 1, 1, 0, 1, 1, 1, 1, 1, 1}));

  // With C = 2 the inactive s0 takes no capacity: expert 1 keeps s2 and s6 (t3's first
  // choice, dropped above when s0 was active), drops s5 and s9.
  DispatchPlan capped = make_dispatch_plan(hand_ids(), active, 4, 2);
  EXPECT_EQ(capped.offsets, (std::vector<int64_t>{0, 2, 4, 5, 5}));
  EXPECT_EQ(vec(capped.slot_index), (std::vector<int64_t>{4, 1, 2, 6, 8}));
  EXPECT_EQ(vec(capped.token_index), (std::vector<int64_t>{2, 0, 1, 3, 4}));
  EXPECT_EQ(vec(capped.kept), (std::vector<int64_t>{0, 1, 1, 0, 1, 0, 1, 0, 1, 0}));
  EXPECT_EQ(capped.n_active, 8);
  EXPECT_EQ(capped.n_dropped, 3);  // s7, s5, s9
  EXPECT_DOUBLE_EQ(capped.dropped_fraction(), 3.0 / 8.0);
}

TEST(DispatchPlan, UncomputedTokensKeepCapacityButGetNoRow) {
  // Tokens t1 and t3 are not computed. With C = 2 they still fill capacity exactly as above
  // (kept, dropped and counts unchanged), but only t0, t2, t4's kept slots get rows:
  //   expert 0 keeps s4 (t2), s1 (t0); expert 1 keeps s0 (t0), s2 (t1 → no row);
  //   expert 2 keeps s8 (t4), s3 (t1 → no row).
  const at::Tensor computed = at::tensor(std::vector<int64_t>{1, 0, 1, 0, 1}, at::kLong).to(at::kBool);
  DispatchPlan all = make_dispatch_plan(hand_ids(), at::Tensor(), 4, 2);
  DispatchPlan some = make_dispatch_plan(hand_ids(), at::Tensor(), 4, 2, computed);
  EXPECT_TRUE(at::equal(some.kept, all.kept));
  EXPECT_TRUE(at::equal(some.tokens_per_expert, all.tokens_per_expert));
  EXPECT_EQ(some.n_dropped, all.n_dropped);
  EXPECT_EQ(some.n_kept(), all.n_kept());
  EXPECT_EQ(some.n_skipped(), 2);
  EXPECT_EQ(some.offsets, (std::vector<int64_t>{0, 2, 3, 4, 4}));
  EXPECT_EQ(some.n_rows(), 4);
  EXPECT_EQ(vec(some.slot_index), (std::vector<int64_t>{4, 1, 0, 8}));
  EXPECT_EQ(vec(some.token_index), (std::vector<int64_t>{2, 0, 0, 4}));
  EXPECT_EQ(vec(some.row_of_slot), (std::vector<int64_t>{2, 1, -1, -1, 0, -1, -1, -1, 3, -1}));

  // All computed is the plan without the argument; a wrong shape names the argument.
  DispatchPlan every = make_dispatch_plan(hand_ids(), at::Tensor(), 4, 2, at::ones({5}, at::kBool));
  EXPECT_TRUE(at::equal(every.row_of_slot, all.row_of_slot));
  EXPECT_EQ(every.n_skipped(), 0);
  EXPECT_TRUE(xmoe_test::Contains(xmoe_test::error_message<c10::Error>([&] {
                                    make_dispatch_plan(hand_ids(), at::Tensor(), 4, 2,
                                                       at::ones({4}, at::kBool));
                                  }),
                                  "computed must be [5]"));
}

TEST(DispatchPlan, AllInactiveGivesEmptyPlanAndZeroDropFraction) {
  at::Tensor active = at::zeros({5, 2}, at::kBool);
  DispatchPlan plan = make_dispatch_plan(hand_ids(), active, 4, 1);
  EXPECT_EQ(plan.n_active, 0);
  EXPECT_EQ(plan.slot_index.numel(), 0);
  EXPECT_EQ(vec(plan.tokens_per_expert), (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_DOUBLE_EQ(plan.dropped_fraction(), 0.0);
}

TEST(DispatchPlan, OutOfRangeIdThrowsNamingTheToken) {
  for (int64_t bad : {4, 17, -1}) {
    at::Tensor ids = hand_ids();
    ids[3][1] = bad;  // token 3, slot 1
    try {
      make_dispatch_plan(ids, at::Tensor(), 4, -1);
      FAIL() << "expected a throw for id " << bad;
    } catch (const c10::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("token 3"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
    }
  }
}

TEST(DispatchPlan, BadShapesThrow) {
  EXPECT_THROW(make_dispatch_plan(at::zeros({5}, at::kLong), at::Tensor(), 4, -1), c10::Error);
  EXPECT_THROW(make_dispatch_plan(at::zeros({5, 2}, at::kFloat), at::Tensor(), 4, -1),
               c10::Error);
  EXPECT_THROW(make_dispatch_plan(hand_ids(), at::ones({5, 1}, at::kBool), 4, -1), c10::Error);
}

// Randomised cross-check against a direct transcription of the fill rule.
TEST(DispatchPlan, MatchesNaiveFillOnRandomRoutings) {
  at::Generator gen = make_generator(1234);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t T = 1 + trial % 9, k = 1 + trial % 3, E = 3 + trial % 4;
    const int64_t capacity = trial % 4 == 0 ? -1 : trial % 4;
    at::Tensor ids = at::randint(0, E, {T, k}, gen, at::TensorOptions().dtype(at::kLong));
    at::Tensor active = at::rand({T, k}, gen, at::TensorOptions().dtype(at::kDouble)) > 0.2;

    std::vector<std::vector<int64_t>> rows(E);
    std::vector<int64_t> routed(E, 0);
    std::vector<int64_t> kept(T * k, 0);
    int64_t n_active = 0, n_dropped = 0;
    for (int64_t j = 0; j < k; ++j) {
      for (int64_t t = 0; t < T; ++t) {
        if (!active[t][j].item<bool>()) continue;
        const int64_t e = ids[t][j].item<int64_t>();
        ++routed[e];
        ++n_active;
        if (capacity >= 0 && static_cast<int64_t>(rows[e].size()) >= capacity) {
          ++n_dropped;
          continue;
        }
        rows[e].push_back(t * k + j);
        kept[t * k + j] = 1;
      }
    }
    std::vector<int64_t> slots, offsets{0};
    for (int64_t e = 0; e < E; ++e) {
      slots.insert(slots.end(), rows[e].begin(), rows[e].end());
      offsets.push_back(static_cast<int64_t>(slots.size()));
    }
    std::vector<int64_t> tokens;
    for (int64_t s : slots) tokens.push_back(s / k);

    DispatchPlan plan = make_dispatch_plan(ids, active, E, capacity);
    SCOPED_TRACE("trial " + std::to_string(trial));
    EXPECT_EQ(plan.offsets, offsets);
    EXPECT_EQ(vec(plan.slot_index), slots);
    EXPECT_EQ(vec(plan.token_index), tokens);
    EXPECT_EQ(vec(plan.kept), kept);
    EXPECT_EQ(vec(plan.tokens_per_expert), routed);
    EXPECT_EQ(plan.n_active, n_active);
    EXPECT_EQ(plan.n_dropped, n_dropped);
  }
}

}  // namespace
}  // namespace xmoe
