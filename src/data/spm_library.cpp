// Loads libxmoe_spm.so (spm_api.h) privately: RTLD_LOCAL keeps its symbols (SentencePiece and
// its bundled protobuf-lite) out of the global scope, RTLD_DEEPBIND makes it bind to its own
// copies before LibTorch's libprotobuf.
#include "spm_api.h"

#include "xmoe/util/sanitizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#ifndef XMOE_SPM_LIBRARY_PATH
#define XMOE_SPM_LIBRARY_PATH ""
#endif

namespace xmoe::spm {
namespace {

constexpr const char* kLibraryName = "libxmoe_spm.so";

// The directory of the running executable ("" when unknown).
std::string executable_dir() {
  char buffer[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0) return "";
  std::string path(buffer, static_cast<size_t>(n));
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// dlopen() itself, or, in an AddressSanitizer build, glibc's dlopen behind ASan's interceptor:
// the interceptor refuses RTLD_DEEPBIND because a deep-bound library would reach libc's malloc
// instead of ASan's. Built with -DXMOE_SANITIZE=address, the shim links libasan first,
// which then heads its deep-bound lookup scope: its malloc is still ASan's.
void* open_private(const std::string& path) {
  constexpr int kFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#if XMOE_ADDRESS_SANITIZER
  using Dlopen = void* (*)(const char*, int);
  static const Dlopen libc_dlopen = [] {
    void* libc = ::dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    return libc != nullptr ? reinterpret_cast<Dlopen>(::dlsym(libc, "dlopen")) : nullptr;
  }();
  if (libc_dlopen != nullptr) return libc_dlopen(path.c_str(), kFlags);
#endif
  return ::dlopen(path.c_str(), kFlags);
}

const Api* load_api() {
  // $XMOE_SPM_LIBRARY, then beside the executable, then the build tree, then the loader path.
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("XMOE_SPM_LIBRARY"); env != nullptr && *env != '\0') {
    candidates.emplace_back(env);
  }
  const std::string dir = executable_dir();
  if (!dir.empty()) candidates.push_back(dir + "/" + kLibraryName);
  if (std::string(XMOE_SPM_LIBRARY_PATH).size() > 0) candidates.emplace_back(XMOE_SPM_LIBRARY_PATH);
  candidates.emplace_back(kLibraryName);

  std::string tried;
  for (const auto& path : candidates) {
    void* handle = open_private(path);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      tried += "\n  " + path + ": " + (why != nullptr ? why : "cannot load");
      continue;
    }
    using Entry = const Api* (*)();
    auto entry = reinterpret_cast<Entry>(::dlsym(handle, "xmoe_spm_api"));
    const Api* table = entry != nullptr ? entry() : nullptr;
    if (table == nullptr || table->version != kApiVersion) {
      tried += "\n  " + path + ": not a compatible xmoe SentencePiece shim";
      ::dlclose(handle);
      continue;
    }
    return table;  // kept loaded for the life of the process
  }
  throw std::runtime_error(
      std::string("cannot load the SentencePiece shim ") + kLibraryName +
      " (built beside the xmoe binaries; set XMOE_SPM_LIBRARY to its path). Tried:" + tried);
}

}  // namespace

const Api& api() {
  static std::once_flag once;
  static const Api* table = nullptr;
  static std::string error;
  std::call_once(once, [] {
    try {
      table = load_api();
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  if (table == nullptr) throw std::runtime_error(error);
  return *table;
}

}  // namespace xmoe::spm
