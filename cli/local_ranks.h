// Runs a command as N ranks on this machine (`--nproc N` of xmoe pretrain and xmoe bench train):
// N copies of this program, each told its rank through the torchrun environment (RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which is also how ranks on several hosts are started.
#pragma once

#include "xmoe/dist/communicator.h"
#include "xmoe/train/pretrain_config.h"

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

namespace xmoe::cli {

/// The --nproc and --experts options of a command that can run as several ranks.
struct RankOptions {
  int nproc = 1;
  std::string experts = "split";  // "split" | "replicated"
  bool split_experts() const { return experts == "split"; }
};

/// Adds --nproc and --experts to `cmd`.
void add_rank_options(CLI::App* cmd, RankOptions& ranks);

/// Before any rank starts: refuses --nproc in a process that already is a rank, and experts
/// that do not split evenly over the ranks.
void check_rank_request(const RankOptions& ranks, const PretrainConfig& config);

/// Starts `ranks.nproc` copies of this program as ranks 0..nproc-1 on 127.0.0.1, each with the
/// arguments `args` (the subcommand and its options) plus --threads (this process's threads / N,
/// at least 1) and --experts, and waits for them. Ctrl-C and SIGTERM are passed on to every
/// rank. When a rank fails the others — blocked in collectives with it — are killed. Returns 0,
/// 130 when the ranks stopped on a signal, or the failed rank's exit status.
int run_local_ranks(const std::vector<std::string>& args, const RankOptions& ranks,
                    const std::string& command);

/// Whether the environment makes this process one rank of several (WORLD_SIZE > 1).
bool started_as_rank();

/// This process's group: from the environment when started_as_rank(), else null (one process).
std::shared_ptr<dist::Communicator> group_from_environment();

}  // namespace xmoe::cli
