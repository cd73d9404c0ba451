// The SentencePiece tokenizer (SPEC §6): trained here on a small generated multilingual corpus
// with a 200-piece vocabulary. Fixed special ids, round trips, the balanced line sample,
// determinism, load errors, option errors and the `xmoe tokenizer` command.
#include "xmoe/data/tokenizer.h"
#include "xmoe/data/tokenizer_trainer.h"

#include "test_data_util.h"
#include "test_util.h"

#include "../src/data/spm_api.h"  // private: to make a model with other special ids

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef XMOE_CLI_PATH
#error "XMOE_CLI_PATH must name the xmoe binary (see CMakeLists.txt)"
#endif

namespace xmoe {
namespace {

using xmoe_test::Contains;
using xmoe_test::TempDir;

const std::map<std::string, int64_t> kTrainCounts = {{"de", 150}, {"en", 300}, {"ru", 120}, {"zh", 90}};

// One corpus and one tokenizer for the whole suite (training takes a fraction of a second, but
// every test needs it).
class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>("xmoe_tokenizer");
    xmoe_test::write_corpus(dir_->path(), "train", kTrainCounts, 1);
    report_ = std::make_unique<TokenizerTrainReport>(train_tokenizer_from_corpus(
        dir_->path(), "train", dir_->file("spm"), xmoe_test::tiny_tokenizer_options()));
  }
  static void TearDownTestSuite() {
    report_.reset();
    dir_.reset();
  }
  static std::unique_ptr<TempDir> dir_;
  static std::unique_ptr<TokenizerTrainReport> report_;
};
std::unique_ptr<TempDir> TokenizerTest::dir_;
std::unique_ptr<TokenizerTrainReport> TokenizerTest::report_;

std::string load_error(const std::string& path) {
  try {
    Tokenizer::load(path);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "no exception";
}

TEST_F(TokenizerTest, SpecialIdsAreFixed) {
  const Tokenizer tok = Tokenizer::load(report_->model_path);
  EXPECT_EQ(tok.vocab_size(), 200);
  EXPECT_EQ(tok.id_to_piece(0), "<pad>");
  EXPECT_EQ(tok.id_to_piece(1), "<unk>");
  EXPECT_EQ(tok.id_to_piece(2), "<s>");
  EXPECT_EQ(tok.id_to_piece(3), "</s>");
  EXPECT_EQ(tok.id_to_piece(4), "<mask>");
  EXPECT_EQ(tok.piece_to_id("<mask>"), Tokenizer::kMaskId);
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.unk_id(), 1);
  EXPECT_EQ(tok.cls_id(), 2);
  EXPECT_EQ(tok.sep_id(), 3);
  EXPECT_EQ(tok.mask_id(), 4);
  EXPECT_EQ(tok.path(), report_->model_path);
  // The text "<mask>" is the [MASK] token; encode never adds [CLS]/[SEP].
  const std::vector<int> ids = tok.encode("the cat <mask> on a mat.");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), Tokenizer::kMaskId), 1);
  for (int id : tok.encode("the cat sat on a mat.")) EXPECT_GE(id, Tokenizer::kNumSpecial);
  EXPECT_TRUE(tok.encode("").empty());
  // The .vocab file lists every piece, one per line, in id order.
  const std::string vocab = xmoe_test::read_file(report_->vocab_path);
  EXPECT_EQ(std::count(vocab.begin(), vocab.end(), '\n'), 200);
  EXPECT_EQ(vocab.rfind("<pad>\t", 0), 0u);
}

TEST_F(TokenizerTest, RoundTripsUnseenSentencesOfEveryLanguage) {
  const Tokenizer tok = Tokenizer::load(report_->model_path);
  for (const auto& item : kTrainCounts) {
    for (const std::string& line : xmoe_test::make_lines(item.first, 20, 777)) {
      const std::vector<int> ids = tok.encode(line);
      EXPECT_EQ(std::count(ids.begin(), ids.end(), Tokenizer::kUnkId), 0) << line;
      EXPECT_EQ(tok.decode(ids), line);
    }
  }
  // Pieces spell the text, "▁" marking the spaces.
  std::string joined;
  for (const auto& p : tok.encode_as_pieces("the cat")) joined += p;
  EXPECT_EQ(joined, "\xE2\x96\x81the\xE2\x96\x81" "cat");
}

TEST_F(TokenizerTest, TrainsOnAnEqualNumberOfLinesPerLanguage) {
  EXPECT_EQ(report_->languages, (std::vector<std::string>{"de", "en", "ru", "zh"}));
  EXPECT_EQ(report_->lines_available, (std::vector<int64_t>{150, 300, 120, 90}));
  EXPECT_EQ(report_->lines_used, (std::vector<int64_t>{90, 90, 90, 90}));  // the smallest
  EXPECT_EQ(report_->vocab_size, 200);
}

TEST_F(TokenizerTest, SampleLinesIsUniformWithoutReplacementInFileOrder) {
  std::string text;
  for (int i = 0; i < 40; ++i) text += (i % 5 == 4 ? "" : "line" + std::to_string(i)) + "\n";
  const std::string path = dir_->file("lines.txt");
  xmoe_test::write_file(path, text);  // 32 non-empty lines
  int64_t available = 0;
  const auto a = sample_lines(path, 10, 3, &available);
  EXPECT_EQ(available, 32);
  ASSERT_EQ(a.size(), 10u);
  EXPECT_EQ(std::set<std::string>(a.begin(), a.end()).size(), 10u);
  for (size_t i = 1; i < a.size(); ++i) {
    EXPECT_LT(std::stoi(a[i - 1].substr(4)), std::stoi(a[i].substr(4)));  // file order
  }
  EXPECT_EQ(sample_lines(path, 10, 3), a);  // deterministic
  EXPECT_NE(sample_lines(path, 10, 4), a);  // and seeded
  EXPECT_EQ(sample_lines(path, 100, 3).size(), 32u);
  EXPECT_TRUE(sample_lines(path, 0, 3).empty());
  // Every line is equally likely: 2000 samples of 8 from 32, each line expected 500 times.
  std::map<std::string, int> hits;
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    for (const auto& line : sample_lines(path, 8, seed)) ++hits[line];
  }
  ASSERT_EQ(hits.size(), 32u);
  double chi2 = 0;
  for (const auto& h : hits) chi2 += (h.second - 500.0) * (h.second - 500.0) / 500.0;
  EXPECT_LT(chi2, 61.1);  // df 31, p 0.001 (a slight overestimate: draws are without replacement)
}

TEST_F(TokenizerTest, TrainingIsDeterministic) {
  const auto again = train_tokenizer_from_corpus(dir_->path(), "train", dir_->file("again"),
                                                 xmoe_test::tiny_tokenizer_options());
  EXPECT_EQ(xmoe_test::read_file(again.model_path), xmoe_test::read_file(report_->model_path));
  EXPECT_EQ(Tokenizer::load(again.model_path).fingerprint(),
            Tokenizer::load(report_->model_path).fingerprint());
}

TEST_F(TokenizerTest, LoadErrorsNameTheFile) {
  const std::string missing = dir_->file("missing.model");
  EXPECT_TRUE(Contains(load_error(missing), missing));
  EXPECT_TRUE(Contains(load_error(missing), "cannot open"));

  const std::string garbage = dir_->file("garbage.model");
  xmoe_test::write_file(garbage, "this is not a sentencepiece model\n");
  EXPECT_TRUE(Contains(load_error(garbage), garbage));
  EXPECT_TRUE(Contains(load_error(garbage), "not a"));

  const std::string bytes = xmoe_test::read_file(report_->model_path);
  const std::string truncated = dir_->file("truncated.model");
  xmoe_test::write_file(truncated, bytes.substr(0, bytes.size() / 2));
  EXPECT_TRUE(Contains(load_error(truncated), truncated));

  const std::string empty = dir_->file("empty.model");
  xmoe_test::write_file(empty, "");
  EXPECT_TRUE(Contains(load_error(empty), "empty"));

  // A valid SentencePiece model with SentencePiece's default ids (unk 0, bos 1, eos 2, no pad).
  std::string plain, error;
  ASSERT_TRUE(spm::api().train({{"vocab_size", "40"}}, xmoe_test::make_lines("en", 100, 5), 0, 2,
                               &plain, &error))
      << error;
  xmoe_test::write_file(dir_->file("plain.model"), plain);
  const std::string message = load_error(dir_->file("plain.model"));
  EXPECT_TRUE(Contains(message, "plain.model"));
  EXPECT_TRUE(Contains(message, "not an xmoe tokenizer"));
}

TEST_F(TokenizerTest, DecodeRejectsIdsOutsideTheVocabulary) {
  const Tokenizer tok = Tokenizer::load(report_->model_path);
  EXPECT_THROW(tok.decode({5, 200}), std::invalid_argument);
  EXPECT_THROW(tok.decode({-1}), std::invalid_argument);
  EXPECT_THROW(tok.id_to_piece(200), std::invalid_argument);
  EXPECT_EQ(tok.decode({Tokenizer::kClsId, Tokenizer::kSepId, Tokenizer::kPadId}), "");
}

TEST_F(TokenizerTest, BadOptionsAndImpossibleVocabulariesAreReported) {
  auto invalid = [](const TokenizerTrainOptions& o) {
    try {
      o.validate();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_TRUE(Contains(invalid(TokenizerTrainOptions().vocab_size(5)), "vocab_size"));
  EXPECT_TRUE(Contains(invalid(TokenizerTrainOptions().lines_per_language(-1)), "lines_per_language"));
  EXPECT_TRUE(Contains(invalid(TokenizerTrainOptions().character_coverage(0)), "character_coverage"));
  EXPECT_TRUE(Contains(invalid(TokenizerTrainOptions().model_type("word")), "model_type"));
  EXPECT_TRUE(Contains(invalid(TokenizerTrainOptions().threads(0)), "threads"));
  EXPECT_EQ(invalid(TokenizerTrainOptions()), "no exception");

  // 40 lines cannot fill 5000 pieces: SentencePiece's message comes through, nothing written.
  try {
    train_tokenizer(xmoe_test::make_lines("en", 40, 9), dir_->file("huge"),
                    TokenizerTrainOptions().vocab_size(5000));
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), "huge.model"));
    EXPECT_TRUE(Contains(e.what(), "ocabulary size"));
    EXPECT_FALSE(Contains(e.what(), ".cc(")) << "SentencePiece's source location leaked";
  }
  EXPECT_TRUE(xmoe_test::read_file(dir_->file("huge.model")).empty());
  EXPECT_THROW(train_tokenizer({}, dir_->file("none"), TokenizerTrainOptions()),
               std::invalid_argument);
  EXPECT_THROW(train_tokenizer_from_corpus(dir_->path(), "valid", dir_->file("x"),
                                           TokenizerTrainOptions()),
               std::runtime_error);
}

// `xmoe tokenizer train` then `xmoe tokenizer encode` in one shell (each launch pays LibTorch's
// start-up, ~0.9 s; the error paths are tested in-process above).
TEST_F(TokenizerTest, CommandLineTrainsAndEncodes) {
  const std::string cli = std::string("'") + XMOE_CLI_PATH + "'";
  const std::string out = dir_->file("cli/spm");
  const std::string log = dir_->file("cli.log");
  const std::string cmd = cli + " --threads 1 tokenizer train --corpus '" + dir_->path() +
                          "' --out '" + out + "' --vocab-size 200 --seed 1 > '" + log +
                          "' 2>&1 && " + cli + " tokenizer encode --model '" + out +
                          ".model' the cat sat >> '" + log + "' 2>&1 && " +
                          // bad input, each with its exit status: invalid UTF-8, a hex "id"
                          "{ printf 'caf\\351\\n' | " + cli + " tokenizer encode --model '" + out +
                          ".model' >> '" + log + "' 2>&1; echo \"rc=$?\" >> '" + log + "'; " + cli +
                          " tokenizer decode --model '" + out + ".model' 0x10 >> '" + log +
                          "' 2>&1; echo \"rc=$?\" >> '" + log + "'; }";
  const int status = std::system(cmd.c_str());
  const std::string text = xmoe_test::read_file(log);
  ASSERT_TRUE(WIFEXITED(status)) << text;
  ASSERT_EQ(WEXITSTATUS(status), 0) << text;
  EXPECT_TRUE(Contains(text, "wrote " + out + ".model"));
  EXPECT_TRUE(Contains(text, "zh                   90           90"));
  // Same options as the suite's model: the same bytes, so the same ids.
  EXPECT_EQ(xmoe_test::read_file(out + ".model"), xmoe_test::read_file(report_->model_path));
  const Tokenizer tok = Tokenizer::load(report_->model_path);
  std::string ids;
  for (int id : tok.encode("the cat sat")) ids += (ids.empty() ? "" : " ") + std::to_string(id);
  EXPECT_TRUE(Contains(text, "\n" + ids + "\n"));
  EXPECT_TRUE(Contains(text, "xmoe: error: stdin line 1 is not valid UTF-8 (byte 3)\nrc=1\n"));
  EXPECT_TRUE(Contains(text, "xmoe: error: '0x10' is not a token id of " + out + ".model"));
  EXPECT_TRUE(Contains(text, "rc=1\n"));
}

}  // namespace
}  // namespace xmoe
