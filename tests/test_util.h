// Small helpers shared by the test files: a self-removing temporary directory, whole-file
// read/write, and a substring assertion that prints both strings on failure.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace xmoe_test {

/// A float64 matrix of `rows` rows from row-major values: mat({1, 2, 3, 4}, 2) = [[1, 2], [3, 4]].
inline at::Tensor mat(std::vector<double> v, int64_t rows) {
  return at::tensor(v, at::kDouble).reshape({rows, -1});
}

/// A fresh directory under the system temp dir (mkdtemp), removed with everything in it when
/// the object goes out of scope.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "xmoe_test") {
    std::string pattern =
        (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (::mkdtemp(buffer.data()) == nullptr) {
      throw std::runtime_error("TempDir: mkdtemp failed for " + pattern);
    }
    path_ = buffer.data();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  /// The path of `name` inside the directory.
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// The whole content of a file ("" when it cannot be opened).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Replaces the content of `path` with `bytes`.
inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw std::runtime_error("write_file: cannot write " + path);
}

/// EXPECT_TRUE(Contains(text, "needle")) prints both strings when the needle is missing.
inline ::testing::AssertionResult Contains(const std::string& haystack, const std::string& needle) {
  if (haystack.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected to find \"" << needle << "\" in:\n"
                                       << haystack;
}

/// The message of the exception of type E that f throws, or "<nothing thrown>" — so that
/// EXPECT_TRUE(Contains(error_message<E>(f), "...")) fails when f does not throw. An exception
/// of another type propagates and fails the test.
template <typename E>
std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<nothing thrown>";
}

}  // namespace xmoe_test
