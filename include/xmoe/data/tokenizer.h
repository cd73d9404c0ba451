// The subword tokenizer (SPEC §6): a SentencePiece model (Kudo & Richardson 2018; unigram LM,
// Kudo 2018) with five fixed special ids shared by every xmoe model:
//
//   id  piece     role
//   0   <pad>     padding
//   1   <unk>     unknown character
//   2   <s>       [CLS]: first token of every packed sequence (SentencePiece's bos)
//   3   </s>      [SEP]: closes every line of a packed sequence (SentencePiece's eos)
//   4   <mask>    [MASK] of the masked-LM objective (a user-defined symbol: the text "<mask>"
//                 encodes to it, which `xmoe tokenizer encode` uses for fill-in examples)
//   5 … V−1       regular pieces
//
// encode() never adds [CLS]/[SEP]; the packer does (xmoe/data/packing.h). Text is normalised
// with SentencePiece's nmt_nfkc rule (NFKC, whitespace runs collapsed, leading/trailing
// whitespace removed), so decode(encode(s)) == s for text already in that form and made of
// characters the model covers. Training: xmoe/data/tokenizer_trainer.h.
// SentencePiece itself runs in the private library libxmoe_spm.so, built beside the xmoe
// binaries and loaded on first use (see src/data/spm_api.h for why).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace xmoe {

class Tokenizer {
 public:
  static constexpr int kPadId = 0;
  static constexpr int kUnkId = 1;
  static constexpr int kClsId = 2;
  static constexpr int kSepId = 3;
  static constexpr int kMaskId = 4;
  /// Ids below this are special; regular pieces are [kNumSpecial, vocab_size()).
  static constexpr int kNumSpecial = 5;
  static constexpr const char* kMaskPiece = "<mask>";

  /// Loads `<path>` (a .model file written by train_tokenizer or spm_train with the ids above).
  /// Throws std::runtime_error naming the file when it is missing or unreadable, is not a
  /// SentencePiece model (corrupt or truncated), or has different special ids.
  static Tokenizer load(const std::string& path);
  /// The same from the bytes of a .model file; `source` names it in error messages.
  static Tokenizer from_serialized(const std::string& bytes, const std::string& source);

  /// Subword ids of `text` (no [CLS]/[SEP]); "" gives {}. Throws std::runtime_error on a
  /// SentencePiece failure.
  std::vector<int> encode(const std::string& text) const;
  /// The pieces of `text` ("▁" marks a preceding space).
  std::vector<std::string> encode_as_pieces(const std::string& text) const;
  /// Text of `ids`; special ids other than <unk> and <mask> decode to "". Throws
  /// std::invalid_argument for an id outside [0, vocab_size()).
  std::string decode(const std::vector<int>& ids) const;

  /// V, the number of pieces (specials included).
  int64_t vocab_size() const;
  /// The piece of `id` (std::invalid_argument outside [0, vocab_size())).
  std::string id_to_piece(int id) const;
  /// The id of `piece`, or kUnkId when it is not in the vocabulary.
  int piece_to_id(const std::string& piece) const;

  int pad_id() const { return kPadId; }
  int unk_id() const { return kUnkId; }
  int cls_id() const { return kClsId; }
  int sep_id() const { return kSepId; }
  int mask_id() const { return kMaskId; }

  /// The file it was loaded from ("" for from_serialized without a file).
  const std::string& path() const { return path_; }
  /// 64-bit FNV-1a hash of the model bytes: identifies the model in token caches.
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  Tokenizer() = default;

  // The SentencePiece processor, held by the private shim library (src/data/spm_api.h).
  std::shared_ptr<void> processor_;
  std::string path_;
  uint64_t fingerprint_ = 0;
};

}  // namespace xmoe
