// Expert parallelism: ranks are threads of this process meeting in an in-process c10d store,
// each with its own Gloo process group (loopback TCP), as separate processes would be.
// The sharded layer must compute exactly what the whole layer computes on each rank's tokens.
#include "xmoe/dist/all_to_all.h"
#include "xmoe/dist/communicator.h"
#include "xmoe/moe/moe_layer.h"
#include "xmoe/train/gradient_sync.h"
#include "xmoe/util/init.h"

#include "test_ranks.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

namespace xmoe {
namespace {

using dist::Communicator;
using xmoe_test::run_ranks;

TEST(ExpertParallel, CommunicatorIsAvailable) {
  // scripts/setup.sh installs libgloo-dev, so the suite's build always has it.
  EXPECT_TRUE(Communicator::available());
}

TEST(ExpertParallel, AllToAllMovesRowsAndItsBackwardSendsGradientsHome) {
  const int world = 3;
  // send[r][s]: rows rank r sends to rank s (zeros included).
  const std::vector<std::vector<int64_t>> send = {{1, 0, 2}, {3, 1, 0}, {0, 2, 2}};
  run_ranks(world, [&](int rank, Communicator& group) {
    std::vector<int64_t> recv(world);
    for (int s = 0; s < world; ++s) recv[s] = send[s][rank];
    int64_t n_send = 0;
    for (auto n : send[rank]) n_send += n;
    // Row i of rank r holds the value 100·r + i in both columns.
    at::Tensor x = (at::arange(n_send, at::kDouble) + 100.0 * rank)
                       .unsqueeze(1).repeat({1, 2}).requires_grad_();
    at::Tensor y = dist::exchange_rows(group, x, send[rank], recv);
    std::vector<double> expected;
    for (int s = 0; s < world; ++s) {
      int64_t first = 0;
      for (int t = 0; t < rank; ++t) first += send[s][t];
      for (int64_t i = 0; i < send[s][rank]; ++i) expected.push_back(100.0 * s + first + i);
    }
    ASSERT_EQ(y.size(0), static_cast<int64_t>(expected.size()));
    EXPECT_TRUE(at::equal(y.select(1, 0), at::tensor(expected, at::kDouble)));
    // d(Σ y ⊙ y)/dx = 2x: every gradient row returns to the row it came from.
    (y * y).sum().backward();
    EXPECT_TRUE(at::allclose(x.grad(), 2 * x.detach()));
  });
}

TEST(ExpertParallel, AllReduceSumsOverRanks) {
  run_ranks(2, [](int rank, Communicator& group) {
    std::vector<at::Tensor> t{at::full({3}, rank + 1.0)};
    group.all_reduce_sum(t);
    EXPECT_TRUE(at::equal(t[0], at::full({3}, 3.0)));
    group.barrier();
  });
}

TEST(ExpertParallel, GatherCollectsTensorsOfAnyShapeOnTheRoot) {
  run_ranks(3, [](int rank, Communicator& group) {
    // Rank r sends an [r + 1, 2] matrix of r's; rank 2 a scalar instead.
    const at::Tensor mine = rank == 2 ? at::full({}, 7.0) : at::full({rank + 1, 2}, 1.0 * rank);
    const std::vector<at::Tensor> got = group.gather(mine, /*root=*/1);
    if (rank != 1) {
      EXPECT_TRUE(got.empty());
      return;
    }
    ASSERT_EQ(got.size(), 3u);
    EXPECT_TRUE(at::equal(got[0], at::zeros({1, 2})));
    EXPECT_TRUE(at::equal(got[1], at::ones({2, 2})));
    EXPECT_EQ(got[2].dim(), 0);
    EXPECT_EQ(got[2].item<double>(), 7.0);
  });
}

struct ParallelCase {
  int world;
  std::string router;
  int64_t top_k;
  double capacity_factor;
  int64_t depth;
  ExpertPath path;
};

std::string parallel_case_name(const ::testing::TestParamInfo<ParallelCase>& info) {
  const ParallelCase& c = info.param;
  return "w" + std::to_string(c.world) + "_" + c.router + "_k" + std::to_string(c.top_k) +
         "_cf" + std::to_string(static_cast<int>(c.capacity_factor * 10)) + "_depth" +
         std::to_string(c.depth) + "_" + to_string(c.path);
}

void PrintTo(const ParallelCase& c, std::ostream* os) {
  *os << c.world << " ranks, " << c.router << " top-" << c.top_k << ", capacity factor "
      << c.capacity_factor << ", depth " << c.depth << ", " << to_string(c.path) << " path";
}

class ShardedLayerEqualsWholeLayer : public ::testing::TestWithParam<ParallelCase> {};

// Rank r routes its own tokens x_r. The whole (unsharded) layer of the same seed, run on each
// x_r in one process, is the reference: outputs and input gradients per rank, and — after
// synchronize_gradients — every parameter gradient of Σ_r L_r (scaled by W: the sync averages).
TEST_P(ShardedLayerEqualsWholeLayer, OutputsAndGradients) {
  const ParallelCase& c = GetParam();
  const int64_t d_model = 10, d_ff = 14, n_expert = 8;
  const bool fast = c.path == ExpertPath::kFast;
  const auto dtype = fast ? at::kFloat : at::kDouble;
  const double rtol = fast ? 1e-4 : 1e-10, atol = fast ? 1e-5 : 1e-12;
  auto options = MoELayerOptions(d_model, d_ff, n_expert)
                     .router(c.router)
                     .top_k(c.top_k)
                     .capacity_factor(c.capacity_factor)
                     .expert_depth(c.depth)
                     .expert_path(c.path)
                     .seed(23);
  // Uneven token counts; one rank with a single token.
  std::vector<at::Tensor> inputs, grad_outs, noises;
  at::Generator gen = make_generator(9);
  for (int r = 0; r < c.world; ++r) {
    const int64_t n = r == 1 ? 1 : 19 + 6 * r;
    inputs.push_back(at::empty({n, d_model}, dtype).normal_(0, 1, gen));
    grad_outs.push_back(at::empty({n, d_model}, dtype).normal_(0, 1, gen));
    noises.push_back(at::empty({n, n_expert}, dtype).normal_(0, 1, gen));
  }

  MoELayer whole(options);
  whole->to(dtype);
  whole->train();
  std::vector<at::Tensor> want_out, want_dx;
  for (int r = 0; r < c.world; ++r) {
    at::Tensor x = inputs[r].clone().requires_grad_();
    MoEOutput out = whole->forward(x, MoEInputs{at::Tensor(), noises[r], at::Tensor()});
    ((out.output * grad_outs[r]).sum() + out.aux_loss).backward();
    want_out.push_back(out.output.detach());
    want_dx.push_back(x.grad());
  }
  auto want_grads = whole->named_parameters();

  run_ranks(c.world, [&](int rank, Communicator& group) {
    auto sharded_options = options;
    sharded_options.expert_group(group.shared_from_this());
    MoELayer layer(sharded_options);
    layer->to(dtype);
    layer->train();
    ASSERT_EQ(layer->expert_parallel_size(), c.world);
    const int64_t n_local = n_expert / c.world;
    ASSERT_EQ(layer->experts()->n_expert(), n_local);
    ASSERT_EQ(layer->experts()->first_expert(), rank * n_local);

    at::Tensor x = inputs[rank].clone().requires_grad_();
    MoEOutput out = layer->forward(x, MoEInputs{at::Tensor(), noises[rank], at::Tensor()});
    ((out.output * grad_outs[rank]).sum() + out.aux_loss).backward();
    EXPECT_EQ(out.routing.stats.path, to_string(c.path));
    EXPECT_TRUE(at::allclose(out.output, want_out[rank], rtol, atol))
        << "rank " << rank << " output, max diff " << (out.output - want_out[rank]).abs().max();
    EXPECT_TRUE(at::allclose(x.grad(), want_dx[rank], rtol, atol))
        << "rank " << rank << " input grad, max diff " << (x.grad() - want_dx[rank]).abs().max();

    synchronize_gradients(*layer, group);
    for (const auto& item : layer->named_parameters()) {
      const at::Tensor& want_full = want_grads[item.key()].grad();
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      // The whole layer's gradient, restricted to this rank's experts where sharded.
      const bool expert = item.key().rfind("experts.", 0) == 0;
      at::Tensor want = expert ? want_full.narrow(0, rank * n_local, n_local) : want_full;
      at::Tensor got = item.value().grad() * static_cast<double>(c.world);
      EXPECT_TRUE(at::allclose(got, want, rtol, atol))
          << "rank " << rank << " " << item.key() << ": max diff " << (got - want).abs().max();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(
    Routers, ShardedLayerEqualsWholeLayer,
    ::testing::Values(ParallelCase{2, "dot", 1, 0.0, 1, ExpertPath::kFast},
                      ParallelCase{2, "dot", 2, 0.0, 1, ExpertPath::kReference},
                      ParallelCase{4, "dot", 1, 1.0, 1, ExpertPath::kFast},
                      ParallelCase{4, "xmoe", 2, 0.0, 2, ExpertPath::kFast},
                      ParallelCase{2, "xmoe", 1, 1.25, 1, ExpertPath::kReference},
                      ParallelCase{2, "noisy_topk", 2, 0.0, 1, ExpertPath::kFast},
                      ParallelCase{8, "dot", 2, 0.0, 1, ExpertPath::kReference}),
    parallel_case_name);

// Rank 1's experts never win: it receives no row, yet takes part in both backward exchanges
// (else rank 0 would wait in them until the timeout), and its shard gets zero gradients — the
// whole layer's rows for idle experts — so its optimizer steps them like rank 0's.
TEST(ExpertParallel, AnIdleShardGetsZeroGradients) {
  for (const bool input_grad : {false, true}) {  // weights only, and the input's gradient too
    SCOPED_TRACE(input_grad ? "input requires grad" : "weights only");
    run_ranks(2, [&](int rank, Communicator& group) {
      MoELayer layer(MoELayerOptions(6, 8, 4).seed(3).expert_path(ExpertPath::kReference)
                         .expert_group(group.shared_from_this()));
      layer->to(at::kDouble);
      {
        at::NoGradGuard no_grad;
        at::Tensor w = layer->router().named_parameters()["weight"];
        for (int64_t e : {2, 3}) {
          w[e].fill_(0);
          w[e][0] = -50.0;  // with x[:, 0] > 0 experts 2 and 3 always lose
        }
      }
      at::Tensor x = at::randn({9, 6}, at::kDouble).abs_().requires_grad_(input_grad);
      MoEOutput out = layer->forward(x);
      EXPECT_EQ(out.routing.stats.tokens_per_expert.slice(0, 2).sum().item<int64_t>(), 0);
      out.output.sum().backward();
      synchronize_gradients(*layer, group);
      for (const auto& p : layer->experts()->parameters()) {
        ASSERT_TRUE(p.grad().defined());
        const double largest = p.grad().abs().max().item<double>();
        if (rank == 1) {
          EXPECT_EQ(largest, 0.0);
        } else {
          EXPECT_GT(largest, 0.0);
        }
      }
      if (input_grad) {
        EXPECT_GT(x.grad().abs().max().item<double>(), 0.0);
      }
    }, std::chrono::seconds(20));
  }
}

TEST(ExpertParallel, ShardsTogetherHoldTheWholeLayersExperts) {
  auto options = MoELayerOptions(6, 9, 4).expert_depth(2).seed(5);
  MoELayer whole(options);
  run_ranks(2, [&](int rank, Communicator& group) {
    auto sharded_options = options;
    MoELayer shard(sharded_options.expert_group(group.shared_from_this()));
    auto want = whole->experts()->named_parameters();
    for (const auto& item : shard->experts()->named_parameters()) {
      EXPECT_TRUE(at::equal(item.value(), want[item.key()].narrow(0, 2 * rank, 2))) << item.key();
    }
    // The router is replicated, with the same values on every rank.
    auto router = whole->router().named_parameters();
    for (const auto& item : shard->router().named_parameters())
      EXPECT_TRUE(at::equal(item.value(), router[item.key()])) << item.key();
  });
}

TEST(ExpertParallel, ExpertsThatDoNotSplitEvenlyAreRefused) {
  run_ranks(2, [](int, Communicator& group) {
    try {
      MoELayer layer(MoELayerOptions(4, 6, 3).name("enc.moe").expert_group(
          group.shared_from_this()));
      ADD_FAILURE() << "3 experts over 2 ranks were accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("n_expert = 3 must be a multiple of the expert "
                                           "group's 2 ranks"),
                std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("enc.moe"), std::string::npos) << e.what();
    }
  });
}

// The rendezvous of separate processes: a TCP store served by rank 0 (what `--nproc` and
// torchrun use) and a shared file. (LibTorch 2.6 from Debian 13 refused the TCP store until the
// classic backend was chosen: it is built without libuv, the 2.4+ default.)
TEST(ExpertParallel, TcpAndFileRendezvousFormGroups) {
  xmoe_test::TempDir dir("xmoe_rendezvous");
  dist::Rendezvous tcp;
  tcp.kind = dist::Rendezvous::Kind::kTcp;
  tcp.port = dist::free_loopback_port();
  dist::Rendezvous file;
  file.kind = dist::Rendezvous::Kind::kFile;
  file.path = dir.file("store");
  for (const dist::Rendezvous& where : {tcp, file}) {
    SCOPED_TRACE(where.kind == dist::Rendezvous::Kind::kTcp ? "tcp" : "file");
    xmoe_test::run_ranks_at(where, 3, [](int rank, Communicator& group) {
      std::vector<at::Tensor> t{at::full({2}, rank + 1.0)};
      group.all_reduce_sum(t);
      EXPECT_TRUE(at::equal(t[0], at::full({2}, 6.0)));
    }, std::chrono::seconds(30));
  }
}

TEST(ExpertParallel, ARankThatNeverJoinsFailsTheOthersWithinTheTimeout) {
  dist::Rendezvous where;
  where.kind = dist::Rendezvous::Kind::kInProcess;
  where.name = "lonely";
  const auto start = std::chrono::steady_clock::now();
  try {
    Communicator::create(0, 2, where, std::chrono::milliseconds(300));
    ADD_FAILURE() << "a group of 2 formed with one rank";
  } catch (const dist::CommunicatorError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 of 2 could not join the group"),
              std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

TEST(ExpertParallel, BadGroupRequestsAreRefused) {
  dist::Rendezvous where;
  EXPECT_THROW(Communicator::create(2, 2, where), std::invalid_argument);
  EXPECT_THROW(Communicator::create(0, 0, where), std::invalid_argument);
  where.kind = dist::Rendezvous::Kind::kFile;
  EXPECT_THROW(Communicator::create(0, 2, where), std::invalid_argument);
  // One rank needs no transport and no rendezvous.
  auto single = Communicator::create(0, 1, where);
  EXPECT_EQ(single->size(), 1);
  at::Tensor x = at::arange(4.0);
  EXPECT_TRUE(at::equal(single->all_to_all(x, {4}, {4}), x));
  EXPECT_THROW(single->all_to_all(x, {3}, {3}), std::invalid_argument);  // rows do not add up
}

TEST(ExpertParallel, EnvironmentRendezvousNamesWhatIsMissing) {
  ::unsetenv("RANK");
  try {
    Communicator::from_environment();
    ADD_FAILURE() << "no RANK accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("RANK is not set"), std::string::npos) << e.what();
  }
  ::setenv("RANK", "x1", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  try {
    Communicator::from_environment();
    ADD_FAILURE() << "RANK=x1 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("RANK = 'x1' is not a number"), std::string::npos)
        << e.what();
  }
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
}

}  // namespace
}  // namespace xmoe
