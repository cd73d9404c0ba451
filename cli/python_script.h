// Running the Python scripts that ship in scripts/ (the corpus builder, the report) from the CLI.
#pragma once

#include <string>
#include <vector>

namespace xmoe::cli {

/// The path of scripts/<relative> (e.g. "report/make_report.py"): under $XMOE_SCRIPTS_DIR when
/// that variable is set (<dir>/<relative>, then <dir>/<file name>), else in the source tree this
/// binary was built from, else ../scripts or ../share/xmoe/scripts beside the executable's folder.
/// Throws std::runtime_error listing the places tried when none holds a readable file.
std::string find_script(const std::string& relative);

/// Runs args (args[0] looked up on PATH, e.g. "python3") with this process's environment,
/// stdout and stderr, and returns its exit status (128 + signal when killed). Throws
/// std::runtime_error when it cannot be started.
int run_process(const std::vector<std::string>& args);

}  // namespace xmoe::cli
