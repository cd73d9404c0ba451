// libxmoe_spm.so: the only code that links SentencePiece (see spm_api.h for why). Built without
// LibTorch, with hidden visibility except for xmoe_spm_api().
#include "spm_api.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <exception>
#include <unordered_map>

// Exported by libsentencepiece (common.h, not installed): the level below which its LOG()
// messages are dropped (0 INFO, 1 WARNING, 2 ERROR).
namespace sentencepiece::logging {
int GetMinLogLevel();
void SetMinLogLevel(int v);
}  // namespace sentencepiece::logging

namespace {

using sentencepiece::SentencePieceProcessor;

const SentencePieceProcessor& sp(const void* p) { return *static_cast<const SentencePieceProcessor*>(p); }

bool check(const sentencepiece::util::Status& status, std::string* error) {
  if (status.ok()) return true;
  if (error != nullptr) *error = status.ToString();
  return false;
}

class VectorSentenceIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorSentenceIterator(const std::vector<std::string>& sentences)
      : sentences_(sentences) {}
  bool done() const override { return index_ >= sentences_.size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return sentences_[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& sentences_;
  size_t index_ = 0;
};

void* load(const std::string& bytes, std::string* error) {
  try {
    auto* p = new SentencePieceProcessor();
    if (!check(p->LoadFromSerializedProto(bytes), error)) {
      delete p;
      return nullptr;
    }
    return p;
  } catch (const std::exception& e) {
    *error = e.what();
    return nullptr;
  }
}

void destroy(void* p) { delete static_cast<SentencePieceProcessor*>(p); }

bool encode(const void* p, const std::string& text, std::vector<int>* ids, std::string* error) {
  return check(sp(p).Encode(text, ids), error);
}

bool encode_pieces(const void* p, const std::string& text, std::vector<std::string>* pieces,
                   std::string* error) {
  return check(sp(p).Encode(text, pieces), error);
}

bool decode(const void* p, const std::vector<int>& ids, std::string* text, std::string* error) {
  return check(sp(p).Decode(ids, text), error);
}

int piece_size(const void* p) { return sp(p).GetPieceSize(); }
std::string id_to_piece(const void* p, int id) { return sp(p).IdToPiece(id); }
int piece_to_id(const void* p, const std::string& piece) { return sp(p).PieceToId(piece); }
float score(const void* p, int id) { return sp(p).GetScore(id); }

void special_ids(const void* p, int* pad, int* unk, int* bos, int* eos) {
  *pad = sp(p).pad_id();
  *unk = sp(p).unk_id();
  *bos = sp(p).bos_id();
  *eos = sp(p).eos_id();
}

bool train(const xmoe::spm::Kwargs& kwargs, const std::vector<std::string>& sentences,
           unsigned int seed, int log_level, std::string* model_bytes, std::string* error) {
  const int saved = sentencepiece::logging::GetMinLogLevel();
  sentencepiece::logging::SetMinLogLevel(log_level);
  bool ok = false;
  try {
    sentencepiece::SetRandomGeneratorSeed(seed);
    const std::unordered_map<std::string, std::string> args(kwargs.begin(), kwargs.end());
    VectorSentenceIterator iterator(sentences);
    ok = check(sentencepiece::SentencePieceTrainer::Train(args, &iterator, model_bytes), error);
  } catch (const std::exception& e) {
    *error = e.what();
  }
  sentencepiece::logging::SetMinLogLevel(saved);
  return ok;
}

const xmoe::spm::Api kApi = {
    xmoe::spm::kApiVersion, load, destroy, encode, encode_pieces, decode, piece_size,
    id_to_piece, piece_to_id, score, special_ids, train,
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const xmoe::spm::Api* xmoe_spm_api() {
  return &kApi;
}
