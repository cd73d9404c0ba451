// xmoe: command-line front end. Subcommands are in cli/<name>.cpp.
#include "commands.h"
#include "validators.h"

#include "xmoe/util/heap.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <exception>
#include <iostream>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  // Training and benchmarks free and re-allocate the same large buffers every step; keep them
  // mapped instead of paying page faults for fresh pages each time (include/xmoe/util/heap.h).
  xmoe::retain_freed_heap_memory();
  CLI::App app{"xmoe: sparse Mixture-of-Experts layers, routers (Switch, GShard, noisy top-k, "
               "X-MoE) and their analysis"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "xmoe 0.1.0");

  // LibTorch starts with one intra-op thread; use every core unless told otherwise.
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--threads", threads, "Intra-op threads (default: the number of cores)")
      ->check(xmoe::cli::int_in(1, xmoe::cli::kMaxThreads));
  app.parse_complete_callback([&] { at::set_num_threads(threads); });
  // Subcommands inherit this: an option a subcommand does not know falls through to its parents,
  // so `xmoe bench layer --threads 2` works as well as `xmoe --threads 2 bench layer`.
  app.fallthrough();
  app.footer("Every subcommand also takes --threads N (default: the number of cores).");

  xmoe::cli::register_analyze(app);
  xmoe::cli::register_bench(app);
  xmoe::cli::register_corpus(app);
  xmoe::cli::register_demo(app);
  xmoe::cli::register_eval(app);
  xmoe::cli::register_finetune(app);
  xmoe::cli::register_layer_init(app);
  xmoe::cli::register_layer_forward(app);
  xmoe::cli::register_pretrain(app);
  xmoe::cli::register_report(app);
  xmoe::cli::register_tokenizer(app);

  // CLI11 answers an unknown command word with "A subcommand is required"; name it instead.
  const CLI::App* level = &app;
  std::string path = "xmoe";
  for (int i = 1; i < argc && level->get_require_subcommand_min() > 0; ++i) {
    const std::string word = argv[i];
    if (word == "--threads") {
      ++i;  // its value
      continue;
    }
    if (word.rfind("-", 0) == 0) continue;
    std::string known;
    const CLI::App* next = nullptr;
    for (const CLI::App* sub : level->get_subcommands({})) {
      known += (known.empty() ? "" : ", ") + sub->get_name();
      if (sub->check_name(word)) next = sub;
    }
    if (next == nullptr) {
      std::cerr << path << ": unknown command '" << word << "' (known: " << known << "; "
                << path << " --help describes them)\n";
      return 109;  // CLI11's exit code for an unexpected argument
    }
    level = next;
    path += " " + word;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const c10::Error& e) {
    std::cerr << "xmoe: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "xmoe: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
