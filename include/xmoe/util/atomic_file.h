// Crash-safe file replacement: write to "<path>.tmp.<pid>", fsync the file, rename over
// `path`, fsync the directory. A reader sees either the old file or the complete new one.
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace xmoe {

/// Calls `write(stream)` on a temporary file and atomically renames it to `path` (or, when
/// `path` is a symbolic link, to the file it points to). A directory, device or other
/// non-regular file at `path` is refused. On any failure (including an exception from `write`)
/// the temporary is removed, `path` is untouched, and std::runtime_error naming `path` is thrown.
void write_file_atomically(const std::string& path,
                           const std::function<void(std::ostream&)>& write);

/// Copies the file `from` to `to` through write_file_atomically; std::runtime_error naming
/// `from` when it cannot be read.
void copy_file_atomically(const std::string& from, const std::string& to);

}  // namespace xmoe
