// xmoe pretrain: masked-LM pre-training of a (MoE) encoder from a JSON config
// (docs/pretraining.md; the run directory: docs/run-directory.md).
//   xmoe pretrain --config FILE [--set key=value ...] [--out DIR] [--resume] [--quiet]
//   xmoe pretrain --resume --out DIR          (config from DIR/config.json)
//   xmoe pretrain ... --nproc N               N ranks on this machine (expert parallelism)
// A process started with RANK and WORLD_SIZE > 1 in its environment (and MASTER_ADDR,
// MASTER_PORT: the torchrun convention) is one rank of a run spread over processes or hosts.
// Ctrl-C finishes the current step, writes a checkpoint and exits with status 130; a second
// Ctrl-C (a second or more later) exits at once, without one.
#include "commands.h"
#include "validators.h"

#include "xmoe/dist/communicator.h"
#include "xmoe/train/trainer.h"

#include <ATen/Parallel.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace xmoe::cli {

namespace {

struct PretrainArgs {
  std::string config, out;
  std::vector<std::string> set;
  bool resume = false, quiet = false;
  int nproc = 1;
};

std::atomic<bool> g_stop{false};
std::atomic<int64_t> g_first_signal_ms{-1};

int64_t monotonic_ms() {  // clock_gettime is async-signal-safe
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
}

// The first SIGINT/SIGTERM asks for a checkpoint and a clean exit. A second one more than a
// second later ends the process at once; one sooner is the same request delivered twice
// (`timeout -s INT` signals the child and then its whole process group) and is ignored.
extern "C" void on_interrupt(int) {
  const int64_t now = monotonic_ms();
  int64_t first = -1;
  if (g_first_signal_ms.compare_exchange_strong(first, now)) {
    g_stop.store(true);
    return;
  }
  if (now - first < 1000) return;
  static const char kMessage[] =
      "\nxmoe pretrain: interrupted again; exiting without a checkpoint\n";
  (void)!::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
  ::_exit(130);
}

// ---- --nproc: one worker process per rank ------------------------------------------------
std::vector<pid_t> g_workers;

extern "C" void forward_signal(int signal) {
  for (pid_t pid : g_workers) ::kill(pid, signal);  // kill is async-signal-safe
}

/// A TCP port on the loopback interface that nothing listens on right now.
int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("--nproc: cannot open a socket to find a free port");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error("--nproc: cannot find a free port on 127.0.0.1");
  return ntohs(address.sin_port);
}

/// Starts a.nproc copies of this program as ranks 0..N-1 of one run and waits for them. The
/// cores are shared out (--threads per worker = this process's threads / N, at least 1). When
/// a worker fails, the others (blocked in collectives with it) are stopped.
int launch_workers(const PretrainArgs& a) {
  const int threads = std::max(1, at::get_num_threads() / a.nproc);
  std::vector<std::string> argv{"xmoe", "--threads", std::to_string(threads), "pretrain"};
  if (!a.config.empty()) argv.insert(argv.end(), {"--config", a.config});
  if (!a.out.empty()) argv.insert(argv.end(), {"--out", a.out});
  for (const std::string& s : a.set) argv.insert(argv.end(), {"--set", s});
  if (a.resume) argv.push_back("--resume");
  if (a.quiet) argv.push_back("--quiet");
  const std::string port = std::to_string(free_loopback_port());

  std::signal(SIGINT, forward_signal);
  std::signal(SIGTERM, forward_signal);
  for (int rank = 0; rank < a.nproc; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      forward_signal(SIGKILL);
      throw std::runtime_error("--nproc: fork failed for rank " + std::to_string(rank));
    }
    if (pid == 0) {
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(a.nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      std::vector<char*> args;
      for (const std::string& s : argv) args.push_back(const_cast<char*>(s.c_str()));
      args.push_back(nullptr);
      ::execv("/proc/self/exe", args.data());
      std::perror("xmoe pretrain --nproc: exec");
      ::_exit(127);
    }
    g_workers.push_back(pid);
  }
  int status_of_run = 0;
  size_t running = g_workers.size();
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::wait(&status);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && code != 130 && status_of_run == 0) {
      status_of_run = code;
      size_t rank = 0;
      while (rank < g_workers.size() && g_workers[rank] != pid) ++rank;
      std::cerr << "xmoe pretrain: rank " << rank << " of " << a.nproc << " failed (exit status "
                << code << "); stopping the other ranks\n";
      for (pid_t other : g_workers)
        if (other != pid) ::kill(other, SIGKILL);
    } else if (code == 130 && status_of_run == 0) {
      status_of_run = 130;  // stopped with a checkpoint
    }
  }
  g_workers.clear();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return status_of_run;
}

int run_pretrain(const PretrainArgs& a) {
  namespace fs = std::filesystem;
  std::string config_path = a.config;
  if (config_path.empty()) {
    if (!a.resume || a.out.empty())
      throw std::invalid_argument("give --config FILE (or --resume --out DIR to continue a run "
                                  "with its saved config)");
    config_path = (fs::path(a.out) / "config.json").string();
    std::error_code ec;
    if (!fs::exists(config_path, ec))
      throw std::invalid_argument(a.out + ": no run to resume (no config.json there); start one "
                                  "with --config FILE --out " + a.out);
  }
  PretrainConfig config = load_pretrain_config(config_path, a.set);
  make_data_paths_absolute(config);  // the print-out shows what the run saves
  const char* world = std::getenv("WORLD_SIZE");
  const bool one_of_many = world != nullptr && std::string(world) != "1" && *world != '\0';
  if (a.nproc > 1) {
    if (one_of_many)
      throw std::invalid_argument("--nproc " + std::to_string(a.nproc) + " in a process that is "
                                  "already a rank (WORLD_SIZE = " + world + " is set)");
    if (config.moe && config.moe->n_expert() % a.nproc != 0)
      throw std::invalid_argument("--nproc " + std::to_string(a.nproc) + ": moe.n_expert = " +
                                  std::to_string(config.moe->n_expert()) + " experts do not "
                                  "split evenly over " + std::to_string(a.nproc) + " ranks");
    return launch_workers(a);  // the config was checked once here, before any worker starts
  }
  TrainerOptions options;
  if (one_of_many) options.group = dist::Communicator::from_environment();
  const bool lead = options.group == nullptr || options.group->rank() == 0;
  options.run_dir = a.out.empty() ? (fs::path("runs") / config.name).string() : a.out;
  options.resume = a.resume;
  options.progress = !a.quiet;
  options.stop = &g_stop;
  if (!a.quiet && lead)  // one line; the run directory gets the indented copy (config.json)
    std::cout << "resolved config: " << nlohmann::json::parse(config.to_json()).dump() << std::endl;

  g_stop.store(false);
  g_first_signal_ms.store(-1);
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  const TrainResult r = pretrain(config, options);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);

  if (!lead) return r.finished ? 0 : 130;
  if (!r.finished) {
    std::cerr << "xmoe pretrain: stopped at step " << r.step << "; checkpoint " << r.checkpoint
              << "\n  continue with: xmoe pretrain --resume --out " << options.run_dir
              << (options.group ? " --nproc " + std::to_string(options.group->size()) : "")
              << "\n";
    return 130;
  }
  std::cout << "run " << options.run_dir << ": " << r.step << " steps, checkpoint " << r.checkpoint
            << "\n";
  return 0;
}

}  // namespace

void register_pretrain(CLI::App& app) {
  auto args = std::make_shared<PretrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "pretrain", "Masked-LM pre-training of a dense, SMoE or X-MoE encoder from a JSON config "
                  "(configs/*.json; docs/pretraining.md)");
  cmd->add_option("--config", args->config, "Config file (JSON)");
  cmd->add_option("--set", args->set,
                  "Override a config key, e.g. --set train.steps=2000 --set moe.top_k=2 "
                  "(value is JSON, or a plain string)")
      ->take_all();
  cmd->add_option("--out", args->out, "Run directory (default: runs/<config name>)");
  cmd->add_flag("--resume", args->resume, "Continue from the newest checkpoint of the run directory");
  cmd->add_flag("--quiet", args->quiet, "No config print-out and no progress line");
  cmd->add_option("--nproc", args->nproc,
                  "Ranks on this machine, one process each: data parallel, with the MoE layers' "
                  "experts split over the ranks (moe.n_expert a multiple of N; "
                  "docs/expert-parallel.md)")
      ->check(int_in(1, 64));
  cmd->callback([args] {
    const int rc = run_pretrain(*args);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace xmoe::cli
