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
#include "local_ranks.h"
#include "validators.h"

#include "xmoe/train/trainer.h"

#include <ATen/Parallel.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

namespace xmoe::cli {

namespace {

struct PretrainArgs {
  std::string config, out;
  std::vector<std::string> set;
  bool resume = false, quiet = false;
  RankOptions ranks;
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

/// `xmoe pretrain` with the same arguments, once per rank.
int launch_ranks(const PretrainArgs& a) {
  std::vector<std::string> args{"pretrain"};
  if (!a.config.empty()) args.insert(args.end(), {"--config", a.config});
  if (!a.out.empty()) args.insert(args.end(), {"--out", a.out});
  for (const std::string& s : a.set) args.insert(args.end(), {"--set", s});
  if (a.resume) args.push_back("--resume");
  if (a.quiet) args.push_back("--quiet");
  return run_local_ranks(args, a.ranks, "xmoe pretrain");
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
  if (a.ranks.nproc > 1) {
    check_rank_request(a.ranks, config);
    return launch_ranks(a);  // the config was checked once here, before any rank starts
  }
  TrainerOptions options;
  options.group = group_from_environment();
  options.split_experts = a.ranks.split_experts();
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
  add_rank_options(cmd, args->ranks);
  cmd->callback([args] {
    const int rc = run_pretrain(*args);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace xmoe::cli
