#include "xmoe/util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace xmoe {
namespace {

[[noreturn]] void throw_errno(const std::string& path, const std::string& what, int err) {
  throw std::runtime_error(path + ": " + what + ": " + std::strerror(err));
}

// The directory holding `path`, for the fsync that makes the rename durable.
std::string parent_directory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void fsync_file(const std::string& path, const std::string& file) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw_errno(path, "cannot reopen temporary file '" + file + "' for fsync", errno);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    throw_errno(path, "fsync of temporary file '" + file + "' failed", err);
  }
  if (::close(fd) != 0) throw_errno(path, "closing temporary file '" + file + "' failed", errno);
}

// Writes the temporary file through `write` and flushes it to disk.
void write_temporary(const std::string& path, const std::string& tmp,
                     const std::function<void(std::ostream&)>& write) {
  {
    errno = 0;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw_errno(path, "cannot create temporary file '" + tmp + "'", errno);
    try {
      write(out);
    } catch (const std::exception& e) {
      throw std::runtime_error(path + ": writing failed: " + e.what());
    } catch (...) {
      throw std::runtime_error(path + ": writing failed with an unknown exception");
    }
    errno = 0;
    out.flush();
    out.close();
    if (!out) {
      // ofstream does not promise to set errno; report it only when it was.
      const int err = errno;
      throw std::runtime_error(path + ": error writing temporary file '" + tmp + "'" +
                               (err != 0 ? std::string(": ") + std::strerror(err) : ""));
    }
  }
  fsync_file(path, tmp);
}

}  // namespace

// Where the new file goes: `path`, or the file a symbolic link at `path` points to (the link
// stays). Anything else already there — a directory, a device, a FIFO — is refused: the rename
// would replace it (`--out /dev/full` once replaced the device node).
std::string replacement_target(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target = path;
  if (fs::is_symlink(fs::symlink_status(path, ec))) {  // ec: also set when nothing is there
    target = fs::weakly_canonical(path, ec);
    if (ec) throw std::runtime_error(path + ": cannot resolve the symbolic link: " + ec.message());
  }
  const fs::file_status status = fs::status(target, ec);
  if (fs::exists(status) && !fs::is_regular_file(status)) {
    const char* kind = fs::is_directory(status) ? "a directory" : "not a regular file";
    throw std::runtime_error(path + ": " + kind + " is already there; refusing to replace it");
  }
  return target.string();
}

void write_file_atomically(const std::string& path,
                           const std::function<void(std::ostream&)>& write) {
  const std::string target = replacement_target(path);
  const std::string tmp = target + ".tmp." + std::to_string(::getpid());
  try {
    write_temporary(path, tmp, write);
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
      throw_errno(path, "cannot rename temporary file '" + tmp + "' over it", errno);
    }
  } catch (...) {
    ::unlink(tmp.c_str());  // best effort: the temporary may not even exist yet
    throw;
  }

  // Without this the rename itself may be lost on a crash. The new contents are already in
  // place, so a failure here only means durability is not guaranteed.
  const std::string dir = parent_directory(target);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno(path, "file replaced, but cannot open directory '" + dir + "' for fsync", errno);
  // Some filesystems cannot fsync a directory (EINVAL); there is nothing more to do there.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    const int err = errno;
    ::close(fd);
    throw_errno(path, "file replaced, but fsync of directory '" + dir + "' failed", err);
  }
  ::close(fd);
}

void copy_file_atomically(const std::string& from, const std::string& to) {
  write_file_atomically(to, [&](std::ostream& out) {
    std::ifstream in(from, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + from);
    out << in.rdbuf();
  });
}

}  // namespace xmoe
