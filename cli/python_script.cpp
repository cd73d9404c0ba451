#include "python_script.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

extern char** environ;

namespace xmoe::cli {

namespace {
bool is_file(const std::string& path) { return !path.empty() && access(path.c_str(), R_OK) == 0; }

std::atomic<pid_t> g_child{0};

// SIGINT/SIGTERM sent to xmoe alone (kill, a job runner's timeout) are passed on to the child,
// which would otherwise run on, orphaned, and finish writing its output after xmoe is gone.
// Ctrl-C in a terminal reaches both already; the child's own handling decides the exit status.
extern "C" void forward_to_child(int signal) {
  const pid_t child = g_child.load();
  if (child > 0) ::kill(child, signal);
}

// Installs forward_to_child for SIGINT and SIGTERM while alive; restores the old handlers.
class ForwardSignals {
 public:
  ForwardSignals() {
    struct sigaction forward {};
    forward.sa_handler = forward_to_child;
    sigemptyset(&forward.sa_mask);
    ::sigaction(SIGINT, &forward, &old_int_);
    ::sigaction(SIGTERM, &forward, &old_term_);
  }
  ~ForwardSignals() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
    g_child.store(0);
  }
  ForwardSignals(const ForwardSignals&) = delete;
  ForwardSignals& operator=(const ForwardSignals&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};
}  // namespace

std::string find_script(const std::string& relative) {
  const std::string file_name = relative.substr(relative.find_last_of('/') + 1);
  std::vector<std::string> candidates;
  if (const char* dir = std::getenv("XMOE_SCRIPTS_DIR"); dir != nullptr && *dir != '\0') {
    candidates.push_back(std::string(dir) + "/" + relative);
    candidates.push_back(std::string(dir) + "/" + file_name);
  }
#ifdef XMOE_SOURCE_DIR
  candidates.push_back(std::string(XMOE_SOURCE_DIR) + "/scripts/" + relative);
#endif
  std::vector<char> exe(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  if (n > 0) {
    std::string dir(exe.data(), static_cast<size_t>(n));
    dir = dir.substr(0, dir.find_last_of('/'));
    candidates.push_back(dir + "/../scripts/" + relative);
    candidates.push_back(dir + "/../share/xmoe/scripts/" + relative);
  }
  for (const std::string& c : candidates)
    if (is_file(c)) return c;
  std::string tried;
  for (const std::string& c : candidates) tried += "\n  " + c;
  throw std::runtime_error("cannot find scripts/" + relative +
                           " (set XMOE_SCRIPTS_DIR to the scripts folder); tried:" + tried);
}

int run_process(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  ForwardSignals forward;
  const int rc = posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
  if (rc != 0)
    throw std::runtime_error("cannot run " + args[0] + ": " + std::strerror(rc) +
                             (args[0] == "python3" ? " (install the Debian package python3)" : ""));
  g_child.store(pid);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error(std::string("waitpid: ") + std::strerror(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace xmoe::cli
