#include "xmoe/data/tokenizer.h"

#include "seeded_random.h"
#include "spm_api.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace xmoe {
namespace {

[[noreturn]] void fail_tokenizer(const std::string& source, const std::string& message) {
  throw std::runtime_error(source + ": " + message);
}

// The special ids every xmoe model must have (see the table in tokenizer.h).
void check_special_ids(const void* processor, const std::string& source) {
  const spm::Api& api = spm::api();
  int pad = -1, unk = -1, bos = -1, eos = -1;
  api.special_ids(processor, &pad, &unk, &bos, &eos);
  auto expect = [&](const char* what, int got, int want) {
    if (got != want) {
      fail_tokenizer(source, std::string("not an xmoe tokenizer: ") + what + " is " + std::to_string(got) +
                                 ", expected " + std::to_string(want) +
                                 " (train it with `xmoe tokenizer train`)");
    }
  };
  expect("pad_id", pad, Tokenizer::kPadId);
  expect("unk_id", unk, Tokenizer::kUnkId);
  expect("bos_id ([CLS])", bos, Tokenizer::kClsId);
  expect("eos_id ([SEP])", eos, Tokenizer::kSepId);
  expect("the id of <mask>", api.piece_to_id(processor, Tokenizer::kMaskPiece), Tokenizer::kMaskId);
  const int size = api.piece_size(processor);
  if (size <= Tokenizer::kNumSpecial) {
    fail_tokenizer(source,
                   "not an xmoe tokenizer: only " + std::to_string(size) + " pieces, no regular ones");
  }
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_tokenizer(path, "cannot open tokenizer model (missing or unreadable file)");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) fail_tokenizer(path, "error reading tokenizer model");
  Tokenizer tokenizer = from_serialized(bytes.str(), path);
  tokenizer.path_ = path;
  return tokenizer;
}

Tokenizer Tokenizer::from_serialized(const std::string& bytes, const std::string& source) {
  if (bytes.empty()) fail_tokenizer(source, "empty file, not a SentencePiece model");
  const spm::Api& api = spm::api();
  std::string error;
  void* raw = api.load(bytes, &error);
  if (raw == nullptr)
    fail_tokenizer(source, "not a SentencePiece model (corrupt or truncated file): " + error);
  std::shared_ptr<void> processor(raw, api.destroy);
  check_special_ids(processor.get(), source);
  Tokenizer tokenizer;
  tokenizer.processor_ = std::move(processor);
  tokenizer.fingerprint_ = data_detail::fnv1a(bytes);
  return tokenizer;
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  std::string error;
  if (!spm::api().encode(processor_.get(), text, &ids, &error)) {
    throw std::runtime_error("xmoe::Tokenizer::encode: " + error);
  }
  return ids;
}

std::vector<std::string> Tokenizer::encode_as_pieces(const std::string& text) const {
  std::vector<std::string> pieces;
  std::string error;
  if (!spm::api().encode_pieces(processor_.get(), text, &pieces, &error)) {
    throw std::runtime_error("xmoe::Tokenizer::encode: " + error);
  }
  return pieces;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  const int64_t v = vocab_size();
  for (int id : ids) {
    if (id < 0 || id >= v) {
      throw std::invalid_argument("xmoe::Tokenizer::decode: id " + std::to_string(id) +
                                  " outside the vocabulary [0, " + std::to_string(v) + ")");
    }
  }
  std::string text, error;
  if (!spm::api().decode(processor_.get(), ids, &text, &error)) {
    throw std::runtime_error("xmoe::Tokenizer::decode: " + error);
  }
  return text;
}

int64_t Tokenizer::vocab_size() const { return spm::api().piece_size(processor_.get()); }

std::string Tokenizer::id_to_piece(int id) const {
  if (id < 0 || id >= vocab_size()) {
    throw std::invalid_argument("xmoe::Tokenizer::id_to_piece: id " + std::to_string(id) +
                                " outside the vocabulary [0, " + std::to_string(vocab_size()) +
                                ")");
  }
  return spm::api().id_to_piece(processor_.get(), id);
}

int Tokenizer::piece_to_id(const std::string& piece) const {
  return spm::api().piece_to_id(processor_.get(), piece);
}

}  // namespace xmoe
