// xmoe corpus build: builds the multilingual text corpus (LibreOffice help, man pages, fortunes
// from Debian packages) by running scripts/corpus/build_corpus.py with python3; docs/corpus.md.
#include "commands.h"
#include "python_script.h"
#include "validators.h"

#include <memory>
#include <string>
#include <vector>

namespace xmoe::cli {

namespace {

struct CorpusBuildArgs {
  std::string out, cache, languages, sources;
  int64_t max_paragraphs = -1;  // -1: not given, the script's default applies
  int jobs = 0;                 // 0: not given
  bool keys = false, quiet = false;
};

void run_corpus_build(const CorpusBuildArgs& a) {
  std::vector<std::string> args = {"python3", find_script("corpus/build_corpus.py")};
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
  build->add_option("--out", args->out, "Output folder (default data/corpus)")->check(kNonEmpty);
  build->add_option("--cache", args->cache, "Folder of downloaded .deb files (default data/debs)")
      ->check(kNonEmpty);
  build->add_option("--languages", args->languages,
                    "Comma-separated languages "
                    "(default all: en,de,fr,es,it,ru,pt,nl,pl,ja,zh,uk,cs)")
      ->check(kNonEmpty);
  build->add_option("--sources", args->sources,
                    "Comma-separated sources (default all: libreoffice,manpages,fortunes)")
      ->check(kNonEmpty);
  build->add_option("--max-paragraphs-per-language", args->max_paragraphs,
                    "Keep at most N paragraphs per language (0 = all)")
      ->check(int_in(0, 1000000000));
  build->add_option("--jobs", args->jobs, "Parallel man page renderings (default: the cores)")
      ->check(int_in(1, 1024));
  build->add_flag("--keys", args->keys, "Also write <split>/<lang>.keys (the key of each line)");
  build->add_flag("--quiet", args->quiet, "No progress lines");
  build->callback([args] { run_corpus_build(*args); });
}

}  // namespace xmoe::cli
