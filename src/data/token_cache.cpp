#include "xmoe/data/token_cache.h"

#include "seeded_random.h"
#include "xmoe/data/corpus_files.h"
#include "xmoe/util/atomic_file.h"

#include <ATen/Parallel.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <vector>

namespace xmoe {
namespace {

constexpr char kMagic[8] = {'X', 'M', 'O', 'E', 'I', 'D', 'S', '2'};
constexpr size_t kChunkLines = 8192;

struct CacheKey {
  uint64_t fingerprint = 0;
  uint64_t text_size = 0;
  int64_t text_mtime_ns = 0;
  uint64_t text_hash = 0;  // FNV-1a of the text: cp -p, rsync -a or tar keep size and mtime
  bool operator==(const CacheKey& o) const {
    return fingerprint == o.fingerprint && text_size == o.text_size &&
           text_mtime_ns == o.text_mtime_ns && text_hash == o.text_hash;
  }
};

uint64_t hash_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open corpus file");
  std::vector<char> buffer(1 << 20);
  uint64_t h = data_detail::kFnvOffset;
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0)
    h = data_detail::fnv1a(buffer.data(), static_cast<size_t>(in.gcount()), h);
  if (in.bad()) throw std::runtime_error(path + ": error reading corpus file");
  return h;
}

CacheKey key_of(const Tokenizer& tokenizer, const std::string& text_path) {
  struct stat st {};
  if (::stat(text_path.c_str(), &st) != 0) {
    throw std::runtime_error(text_path + ": cannot open corpus file (" + std::strerror(errno) + ")");
  }
  CacheKey key;
  key.fingerprint = tokenizer.fingerprint();
  key.text_size = static_cast<uint64_t>(st.st_size);
  key.text_mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  key.text_hash = hash_file(text_path);
  return key;
}

uint64_t checksum(const EncodedLines& lines) {
  uint64_t h = data_detail::fnv1a(lines.offsets.data(), lines.offsets.size() * sizeof(int64_t));
  return data_detail::fnv1a(lines.ids.data(), lines.ids.size() * sizeof(int32_t), h);
}

template <typename T>
bool read_pod(std::istream& in, T* value) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(value), sizeof(T)));
}
template <typename T>
void write_pod(std::ostream& out, const T& value) {
  out.write(reinterpret_cast<const char*>(&value), sizeof(T));
}

// The cached lines, or false when the cache is missing, stale, truncated or corrupt.
bool read_cache(const std::string& cache_path, const CacheKey& want, EncodedLines* lines) {
  std::ifstream in(cache_path, std::ios::binary);
  if (!in) return false;
  char magic[8];
  CacheKey key;
  uint64_t n_lines = 0, n_ids = 0;
  if (!in.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) return false;
  if (!read_pod(in, &key.fingerprint) || !read_pod(in, &key.text_size) ||
      !read_pod(in, &key.text_mtime_ns) || !read_pod(in, &key.text_hash) ||
      !read_pod(in, &n_lines) || !read_pod(in, &n_ids)) {
    return false;
  }
  if (!(key == want)) return false;
  // Sizes must match the file before anything is allocated.
  std::error_code ec;
  const auto file_size = std::filesystem::file_size(cache_path, ec);
  const uint64_t header = 8 + 6 * sizeof(uint64_t);
  if (ec || n_lines > file_size || n_ids > file_size ||
      file_size != header + (n_lines + 1) * sizeof(int64_t) + n_ids * sizeof(int32_t) +
                       sizeof(uint64_t)) {
    return false;
  }
  EncodedLines out;
  out.offsets.resize(n_lines + 1);
  out.ids.resize(n_ids);
  if (!in.read(reinterpret_cast<char*>(out.offsets.data()),
               static_cast<std::streamsize>(out.offsets.size() * sizeof(int64_t))) ||
      !in.read(reinterpret_cast<char*>(out.ids.data()),
               static_cast<std::streamsize>(out.ids.size() * sizeof(int32_t)))) {
    return false;
  }
  uint64_t sum = 0;
  if (!read_pod(in, &sum) || sum != checksum(out)) return false;
  if (out.offsets.front() != 0 || out.offsets.back() != static_cast<int64_t>(n_ids)) return false;
  for (size_t i = 0; i + 1 < out.offsets.size(); ++i) {
    if (out.offsets[i] > out.offsets[i + 1]) return false;
  }
  *lines = std::move(out);
  return true;
}

void write_cache(const std::string& cache_path, const CacheKey& key, const EncodedLines& lines) {
  const auto parent = std::filesystem::path(cache_path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  write_file_atomically(cache_path, [&](std::ostream& out) {
    out.write(kMagic, 8);
    write_pod(out, key.fingerprint);
    write_pod(out, key.text_size);
    write_pod(out, key.text_mtime_ns);
    write_pod(out, key.text_hash);
    write_pod(out, static_cast<uint64_t>(lines.n_lines()));
    write_pod(out, static_cast<uint64_t>(lines.ids.size()));
    out.write(reinterpret_cast<const char*>(lines.offsets.data()),
              static_cast<std::streamsize>(lines.offsets.size() * sizeof(int64_t)));
    out.write(reinterpret_cast<const char*>(lines.ids.data()),
              static_cast<std::streamsize>(lines.ids.size() * sizeof(int32_t)));
    write_pod(out, checksum(lines));
  });
}

// Encodes one chunk of lines in parallel and appends the results in order.
void encode_chunk(const Tokenizer& tokenizer, const std::vector<std::string>& chunk,
                  const std::string& text_path, int64_t first_line, EncodedLines* out) {
  std::vector<std::vector<int>> encoded(chunk.size());
  std::exception_ptr error;
  std::mutex error_mutex;
  at::parallel_for(0, static_cast<int64_t>(chunk.size()), 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        encoded[static_cast<size_t>(i)] = tokenizer.encode(chunk[static_cast<size_t>(i)]);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) {
          error = std::make_exception_ptr(std::runtime_error(
              text_path + ": line " + std::to_string(first_line + i + 1) + ": " + e.what()));
        }
      }
    }
  });
  if (error) std::rethrow_exception(error);
  for (const auto& line : encoded) out->append_line(line);
}

}  // namespace

int64_t EncodedLines::n_nonempty_lines() const {
  int64_t n = 0;
  for (size_t i = 0; i + 1 < offsets.size(); ++i) n += offsets[i + 1] > offsets[i] ? 1 : 0;
  return n;
}

void EncodedLines::append_line(const std::vector<int>& line_ids) {
  ids.insert(ids.end(), line_ids.begin(), line_ids.end());
  offsets.push_back(static_cast<int64_t>(ids.size()));
}

EncodedLines encode_lines(const Tokenizer& tokenizer, const std::string& text_path) {
  EncodedLines out;
  std::vector<std::string> chunk;
  chunk.reserve(kChunkLines);
  int64_t first_line = 0;
  for_each_line(text_path, [&](int64_t number, const std::string& line) {
    if (chunk.empty()) first_line = number;
    chunk.push_back(line);
    if (chunk.size() == kChunkLines) {
      encode_chunk(tokenizer, chunk, text_path, first_line, &out);
      chunk.clear();
    }
  });
  if (!chunk.empty()) encode_chunk(tokenizer, chunk, text_path, first_line, &out);
  return out;
}

EncodedLines encode_lines_cached(const Tokenizer& tokenizer, const std::string& text_path,
                                 const std::string& cache_path, bool* from_cache) {
  const CacheKey key = key_of(tokenizer, text_path);
  EncodedLines lines;
  if (read_cache(cache_path, key, &lines)) {
    if (from_cache != nullptr) *from_cache = true;
    return lines;
  }
  if (from_cache != nullptr) *from_cache = false;
  lines = encode_lines(tokenizer, text_path);
  // The file may have changed while it was read; key it by what was there before reading, so a
  // concurrent change makes the next run re-encode rather than trust stale ids.
  try {
    write_cache(cache_path, key, lines);
  } catch (const std::exception& e) {
    // A read-only model directory only costs the speed-up; say so once per process.
    static std::once_flag warned;
    std::call_once(warned, [&] {
      std::cerr << "xmoe: warning: cannot write the token cache (" << e.what()
                << "); the corpus is encoded again on every run\n";
    });
  }
  return lines;
}

}  // namespace xmoe
