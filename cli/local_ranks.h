// Runs a command as N ranks on this machine (`--nproc N` of xmoe pretrain and xmoe bench train):
// N copies of this program, each told its rank through the torchrun environment (RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which is also how ranks on several hosts are started.
#pragma once

#include "xmoe/dist/communicator.h"

#include <memory>
#include <string>
#include <vector>

namespace xmoe::cli {

/// Starts `nproc` copies of this program with arguments `args` (everything after the program
/// name) as ranks 0..nproc-1 on 127.0.0.1 and waits for them. Ctrl-C and SIGTERM are passed on
/// to every rank. When a rank fails the others — blocked in collectives with it — are killed.
/// Returns 0, 130 when the ranks stopped on a signal, or the failed rank's exit status.
int run_local_ranks(const std::vector<std::string>& args, int nproc, const std::string& command);

/// Whether the environment makes this process one rank of several (WORLD_SIZE > 1).
bool started_as_rank();

/// This process's group: from the environment when started_as_rank(), else null (one process).
std::shared_ptr<dist::Communicator> group_from_environment();

}  // namespace xmoe::cli
