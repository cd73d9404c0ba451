// xmoe corpus build: builds the multilingual text corpus (LibreOffice help, man pages, fortunes
// from Debian packages) by running scripts/corpus/build_corpus.py with python3; docs/corpus.md.
#include "commands.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace xmoe::cli {

namespace {

struct CorpusBuildArgs {
  std::string out, cache, languages, sources;
  int64_t max_paragraphs = -1;  // -1: not given, the script's default applies
  int jobs = 0;                 // 0: not given
  bool keys = false, quiet = false;
};

bool is_file(const std::string& path) { return !path.empty() && access(path.c_str(), R_OK) == 0; }

// The script: $XMOE_SCRIPTS_DIR/corpus/build_corpus.py when that variable is set, else the
// source tree this binary was built from, else ../scripts next to the executable's folder.
std::string find_script() {
  std::vector<std::string> candidates;
  if (const char* dir = std::getenv("XMOE_SCRIPTS_DIR"); dir != nullptr && *dir != '\0') {
    candidates.push_back(std::string(dir) + "/corpus/build_corpus.py");
    candidates.push_back(std::string(dir) + "/build_corpus.py");
  }
#ifdef XMOE_SOURCE_DIR
  candidates.push_back(std::string(XMOE_SOURCE_DIR) + "/scripts/corpus/build_corpus.py");
#endif
  std::vector<char> exe(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  if (n > 0) {
    std::string dir(exe.data(), static_cast<size_t>(n));
    dir = dir.substr(0, dir.find_last_of('/'));
    candidates.push_back(dir + "/../scripts/corpus/build_corpus.py");
    candidates.push_back(dir + "/../share/xmoe/scripts/corpus/build_corpus.py");
  }
  for (const std::string& c : candidates)
    if (is_file(c)) return c;
  std::string tried;
  for (const std::string& c : candidates) tried += "\n  " + c;
  throw std::runtime_error("cannot find scripts/corpus/build_corpus.py (set XMOE_SCRIPTS_DIR to "
                           "the scripts folder); tried:" + tried);
}

// Runs argv (argv[0] looked up on PATH) and returns its exit status (128 + signal if killed).
int run_process(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
  if (rc != 0)
    throw std::runtime_error("cannot run " + args[0] + ": " + std::strerror(rc) +
                             " (install the Debian package python3)");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error(std::string("waitpid: ") + std::strerror(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

void run_corpus_build(const CorpusBuildArgs& a) {
  std::vector<std::string> args = {"python3", find_script()};
  auto pass = [&](const char* flag, const std::string& value) {
    if (!value.empty()) {
      args.push_back(flag);
      args.push_back(value);
    }
  };
  pass("--out", a.out);
  pass("--cache", a.cache);
  pass("--languages", a.languages);
  pass("--sources", a.sources);
  if (a.max_paragraphs >= 0) pass("--max-paragraphs-per-language", std::to_string(a.max_paragraphs));
  if (a.jobs > 0) pass("--jobs", std::to_string(a.jobs));
  if (a.keys) args.push_back("--keys");
  if (a.quiet) args.push_back("--quiet");
  const int status = run_process(args);
  // A RuntimeError makes main return the status without printing anything more; the script
  // has already reported the error.
  if (status != 0) throw CLI::RuntimeError(status);
}

}  // namespace

void register_corpus(CLI::App& app) {
  CLI::App* corpus = app.add_subcommand("corpus", "Build the multilingual text corpus");
  corpus->require_subcommand(1);
  auto args = std::make_shared<CorpusBuildArgs>();
  CLI::App* build = corpus->add_subcommand(
      "build", "Fetch Debian packages (LibreOffice help, man pages, fortunes) and write "
               "<out>/<split>/<lang>.txt and <out>/manifest.json (runs "
               "scripts/corpus/build_corpus.py; docs/corpus.md)");
  build->add_option("--out", args->out, "Output folder (default data/corpus)");
  build->add_option("--cache", args->cache, "Folder of downloaded .deb files (default data/debs)");
  build->add_option("--languages", args->languages,
                    "Comma-separated languages (default all: en,de,fr,es,it,ru,pt,nl,pl,ja,zh,uk,cs)");
  build->add_option("--sources", args->sources,
                    "Comma-separated sources (default all: libreoffice,manpages,fortunes)");
  build->add_option("--max-paragraphs-per-language", args->max_paragraphs,
                    "Keep at most N paragraphs per language (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1000000000}));
  build->add_option("--jobs", args->jobs, "Parallel man page renderings (default: the cores)")
      ->check(CLI::Range(1, 1024));
  build->add_flag("--keys", args->keys, "Also write <split>/<lang>.keys (the key of each line)");
  build->add_flag("--quiet", args->quiet, "No progress lines");
  build->callback([args] { run_corpus_build(*args); });
}

}  // namespace xmoe::cli
