#include "local_ranks.h"

#include "validators.h"

#include <ATen/Parallel.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <stdexcept>

namespace xmoe::cli {
namespace {

std::vector<pid_t> g_ranks;  // read by the signal handler while the ranks run

extern "C" void forward_signal(int signal) {
  for (pid_t pid : g_ranks) ::kill(pid, signal);  // kill is async-signal-safe
}

}  // namespace

void add_rank_options(CLI::App* cmd, RankOptions& ranks) {
  cmd->add_option("--nproc", ranks.nproc,
                  "Ranks on this machine, one process each, the cores shared out: data parallel, "
                  "each rank with its own batches (docs/expert-parallel.md)")
      ->check(int_in(1, 64));
  cmd->add_option("--experts", ranks.experts,
                  "With several ranks: split (each rank holds n_expert / N experts) or "
                  "replicated (every rank holds all: plain data parallelism)")
      ->check(CLI::IsMember({"split", "replicated"}))
      ->capture_default_str();
}

void check_rank_request(const RankOptions& ranks, const PretrainConfig& config) {
  const std::string nproc = "--nproc " + std::to_string(ranks.nproc);
  if (started_as_rank())
    throw std::invalid_argument(nproc + " in a process that is already a rank (WORLD_SIZE > 1 "
                                "is set)");
  if (ranks.split_experts() && config.moe && config.moe->n_expert() % ranks.nproc != 0)
    throw std::invalid_argument(nproc + ": moe.n_expert = " +
                                std::to_string(config.moe->n_expert()) +
                                " experts do not split evenly over " +
                                std::to_string(ranks.nproc) + " ranks");
}

int run_local_ranks(const std::vector<std::string>& args, const RankOptions& ranks,
                    const std::string& command) {
  const int nproc = ranks.nproc;
  const std::string port = std::to_string(dist::free_loopback_port());
  std::vector<std::string> argv{"xmoe", "--threads",
                                std::to_string(std::max(1, at::get_num_threads() / nproc))};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.end(), {"--experts", ranks.experts});
  std::signal(SIGINT, forward_signal);
  std::signal(SIGTERM, forward_signal);
  for (int rank = 0; rank < nproc; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      forward_signal(SIGKILL);
      throw std::runtime_error("--nproc: fork failed for rank " + std::to_string(rank));
    }
    if (pid == 0) {
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      std::vector<char*> raw;
      for (const std::string& s : argv) raw.push_back(const_cast<char*>(s.c_str()));
      raw.push_back(nullptr);
      ::execv("/proc/self/exe", raw.data());
      std::perror("xmoe --nproc: exec");
      ::_exit(127);
    }
    g_ranks.push_back(pid);
  }
  int status_of_run = 0;
  size_t running = g_ranks.size();
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::wait(&status);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && code != 130 && (status_of_run == 0 || status_of_run == 130)) {
      status_of_run = code;
      size_t rank = 0;
      while (rank < g_ranks.size() && g_ranks[rank] != pid) ++rank;
      std::cerr << command << ": rank " << rank << " of " << nproc << " failed (exit status "
                << code << "); stopping the other ranks\n";
      for (pid_t other : g_ranks)
        if (other != pid) ::kill(other, SIGKILL);
    } else if (code == 130 && status_of_run == 0) {
      status_of_run = 130;  // stopped on a signal, with a checkpoint
    }
  }
  g_ranks.clear();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return status_of_run;
}

bool started_as_rank() {
  const char* world = std::getenv("WORLD_SIZE");
  return world != nullptr && *world != '\0' && std::string(world) != "1";
}

std::shared_ptr<dist::Communicator> group_from_environment() {
  return started_as_rank() ? dist::Communicator::from_environment() : nullptr;
}

}  // namespace xmoe::cli
