// Packing, batching and resumable sampling of the masked-LM data (SPEC §6) on a small generated
// corpus: sequence layout, the max_tokens bound, language frequencies ~ q_l, epochs, the token
// cache, bit-identical resume from a saved state, and the evaluation iterator.
#include "xmoe/data/mlm_dataset.h"

#include "test_data_util.h"
#include "test_util.h"
#include "xmoe/data/corpus_files.h"
#include "xmoe/data/packing.h"
#include "xmoe/data/sampling.h"
#include "xmoe/data/tokenizer_trainer.h"
#include "xmoe/io/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace xmoe {
namespace {

namespace fs = std::filesystem;
using xmoe_test::Contains;
using xmoe_test::TempDir;

// ---- packing (no tokenizer) -------------------------------------------------------------------

TEST(DataPacking, HandComputed) {
  // max_len 8. Lines: a (3), b (2), empty, c (7), d (1).
  //   [CLS] a1 a2 a3 [SEP] b1 b2 [SEP]   b fits exactly (5 + 2 + 1 = 8)
  //   [CLS] c1 … c6 [SEP]                 c is longer than 8 − 2: cut after 6
  //   [CLS] c7 [SEP] d1 [SEP]
  EncodedLines lines;
  lines.append_line({11, 12, 13});
  lines.append_line({21, 22});
  lines.append_line({});
  lines.append_line({31, 32, 33, 34, 35, 36, 37});
  lines.append_line({41});
  EXPECT_EQ(lines.n_lines(), 5);
  EXPECT_EQ(lines.n_nonempty_lines(), 4);
  const PackedSequences p = pack_lines(lines, 8, 2, 3);
  ASSERT_EQ(p.size(), 3);
  auto seq = [&](int64_t i) { return std::vector<int32_t>(p.data(i), p.data(i) + p.length(i)); };
  EXPECT_EQ(seq(0), (std::vector<int32_t>{2, 11, 12, 13, 3, 21, 22, 3}));
  EXPECT_EQ(seq(1), (std::vector<int32_t>{2, 31, 32, 33, 34, 35, 36, 3}));
  EXPECT_EQ(seq(2), (std::vector<int32_t>{2, 37, 3, 41, 3}));
  EXPECT_EQ(p.n_tokens(), 21);
  // A line that does not fit the rest of a sequence starts the next one.
  EncodedLines two;
  two.append_line({11, 12, 13});
  two.append_line({21, 22, 23});
  const PackedSequences q = pack_lines(two, 8, 2, 3);
  ASSERT_EQ(q.size(), 2);
  EXPECT_EQ(q.length(0), 5);
  EXPECT_EQ(q.length(1), 5);
  EXPECT_EQ(pack_lines(EncodedLines(), 8, 2, 3).size(), 0);
  // kFill: the same two lines, the second split to fill the first sequence.
  //   [CLS] a1 a2 a3 [SEP] b1 b2 [SEP]   [CLS] b3 [SEP]
  const PackedSequences f = pack_lines(two, 8, 2, 3, LinePacking::kFill);
  ASSERT_EQ(f.size(), 2);
  EXPECT_EQ(std::vector<int32_t>(f.data(0), f.data(0) + f.length(0)),
            (std::vector<int32_t>{2, 11, 12, 13, 3, 21, 22, 3}));
  EXPECT_EQ(std::vector<int32_t>(f.data(1), f.data(1) + f.length(1)), (std::vector<int32_t>{2, 23, 3}));
  EXPECT_EQ(parse_line_packing("fill"), LinePacking::kFill);
  EXPECT_EQ(parse_line_packing("whole"), LinePacking::kWhole);
  EXPECT_TRUE(Contains(xmoe_test::error_message<std::invalid_argument>([] { parse_line_packing("dense"); }),
                       "unknown line packing 'dense' (known: whole, fill)"));
}

TEST(DataPacking, KeepsEveryTokenOnceInOrder) {
  EncodedLines lines;
  std::vector<int32_t> all;
  uint64_t state = 42;
  for (int i = 0; i < 300; ++i) {
    state = state * 6364136223846793005ULL + 1;
    const int n = static_cast<int>((state >> 33) % 40);  // 0..39, some longer than max_len
    std::vector<int> line;
    for (int j = 0; j < n; ++j) line.push_back(5 + (i * 7 + j) % 90);
    all.insert(all.end(), line.begin(), line.end());
    lines.append_line(line);
  }
  for (LinePacking packing : {LinePacking::kWhole, LinePacking::kFill}) {
    for (int64_t max_len : {3, 4, 16, 37, 100}) {
      const PackedSequences p = pack_lines(lines, max_len, 2, 3, packing);
      std::vector<int32_t> content;
      for (int64_t i = 0; i < p.size(); ++i) {
        ASSERT_LE(p.length(i), max_len);
        ASSERT_GE(p.length(i), 3);
        // kFill leaves at most one slot free (no room for a token and its [SEP]), but in the last.
        if (packing == LinePacking::kFill && i + 1 < p.size()) {
          ASSERT_GE(p.length(i), max_len - 1);
        }
        EXPECT_EQ(p.data(i)[0], 2);
        EXPECT_EQ(p.data(i)[p.length(i) - 1], 3);
        EXPECT_NE(p.data(i)[1], 3);  // at least one regular token before the first [SEP]
        for (int64_t j = 1; j < p.length(i); ++j) {
          if (p.data(i)[j] != 3) content.push_back(p.data(i)[j]);
        }
      }
      EXPECT_EQ(content, all) << "max_len " << max_len;
    }
  }
  // Filling packs the same tokens into fewer sequences.
  EXPECT_LT(pack_lines(lines, 37, 2, 3, LinePacking::kFill).size(), pack_lines(lines, 37, 2, 3).size());
  EXPECT_THROW(pack_lines(lines, 2, 2, 3), std::invalid_argument);
}

// ---- the dataset ------------------------------------------------------------------------------

const std::map<std::string, int64_t> kTrain = {{"de", 150}, {"en", 300}, {"ru", 60}, {"zh", 30}};
const std::map<std::string, int64_t> kValid = {{"de", 30}, {"en", 40}, {"ru", 20}, {"zh", 10}};

class DataDatasetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>("xmoe_dataset");
    xmoe_test::write_corpus(corpus(), "train", kTrain, 2);
    xmoe_test::write_corpus(corpus(), "valid", kValid, 3);
    train_tokenizer_from_corpus(corpus(), "train", dir_->file("tok/spm"),
                                xmoe_test::tiny_tokenizer_options());
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(dir_->file("tok/spm.model")));
  }
  static void TearDownTestSuite() {
    tokenizer_.reset();
    dir_.reset();
  }
  static std::string corpus() { return dir_->file("corpus"); }
  static MlmDatasetOptions options(const std::string& split = "train") {
    return MlmDatasetOptions(corpus(), split).max_len(32).max_tokens(128).seed(5).use_cache(false);
  }
  static std::unique_ptr<TempDir> dir_;
  static std::unique_ptr<Tokenizer> tokenizer_;
};
std::unique_ptr<TempDir> DataDatasetTest::dir_;
std::unique_ptr<Tokenizer> DataDatasetTest::tokenizer_;

void expect_same_batch(const MlmBatch& a, const MlmBatch& b, const std::string& what) {
  EXPECT_EQ(a.language, b.language) << what;
  EXPECT_EQ(a.sequence_index, b.sequence_index) << what;
  EXPECT_TRUE(a.input_ids.equal(b.input_ids)) << what;
  EXPECT_TRUE(a.labels.equal(b.labels)) << what;
  EXPECT_TRUE(a.tokens.equal(b.tokens)) << what;
  EXPECT_TRUE(a.mask.equal(b.mask)) << what;
}

TEST_F(DataDatasetTest, PacksEveryLanguageIntoClsSepSequences) {
  const MlmDataset data(*tokenizer_, options());
  EXPECT_EQ(data.languages(), (std::vector<std::string>{"de", "en", "ru", "zh"}));
  EXPECT_EQ(data.line_counts(), (std::vector<int64_t>{150, 300, 60, 30}));
  EXPECT_EQ(data.sampling_probs(), language_sampling_probs({150, 300, 60, 30}, 0.7));
  for (int64_t l = 0; l < data.n_languages(); ++l) {
    const PackedSequences& s = data.sequences(l);
    ASSERT_GT(s.size(), 0);
    int64_t regular = 0;
    for (int64_t i = 0; i < s.size(); ++i) {
      ASSERT_LE(s.length(i), 32);
      EXPECT_EQ(s.data(i)[0], Tokenizer::kClsId);
      EXPECT_EQ(s.data(i)[s.length(i) - 1], Tokenizer::kSepId);
      for (int64_t j = 1; j < s.length(i); ++j) {
        EXPECT_NE(s.data(i)[j], Tokenizer::kPadId);
        regular += s.data(i)[j] >= Tokenizer::kNumSpecial ? 1 : 0;
      }
    }
    // Every token of every line, once.
    int64_t expected = 0;
    for_each_line(corpus_file(corpus(), "train", data.languages()[l]),
                  [&](int64_t, const std::string& line) {
                    expected += static_cast<int64_t>(tokenizer_->encode(line).size());
                  });
    EXPECT_EQ(regular, expected) << data.languages()[l];
  }
}

TEST_F(DataDatasetTest, BatchesRespectMaxTokensAndCarryConsistentTensors) {
  MlmDataset data(*tokenizer_, options().max_tokens(100));
  int64_t chosen = 0, real = 0;
  for (int step = 0; step < 200; ++step) {
    const MlmBatch b = data.next_batch();
    ASSERT_EQ(b.tokens.dim(), 2);
    const int64_t rows = b.tokens.size(0), cols = b.tokens.size(1);
    ASSERT_GE(rows, 1);
    EXPECT_LE(rows * cols, 100);
    EXPECT_LE(cols, 32);
    EXPECT_EQ(static_cast<int64_t>(b.sequence_index.size()), rows);
    EXPECT_EQ(b.input_ids.sizes(), b.tokens.sizes());
    EXPECT_EQ(b.labels.sizes(), b.tokens.sizes());
    EXPECT_EQ(b.input_ids.scalar_type(), at::kLong);
    EXPECT_TRUE(b.mask.equal(b.tokens.ne(Tokenizer::kPadId)));
    EXPECT_TRUE(b.tokens.select(1, 0).eq(Tokenizer::kClsId).all().item<bool>());
    // The longest sequence sets L: some row is full.
    EXPECT_TRUE(b.mask.select(1, cols - 1).any().item<bool>());
    const at::Tensor picked = b.labels.ne(-100);
    EXPECT_TRUE(b.labels.masked_select(picked).equal(b.tokens.masked_select(picked)));
    EXPECT_TRUE(
        b.input_ids.masked_select(picked.logical_not()).equal(b.tokens.masked_select(picked.logical_not())));
    EXPECT_FALSE(picked.logical_and(b.mask.logical_not()).any().item<bool>());
    chosen += picked.sum().item<int64_t>();
    real += b.tokens.ge(Tokenizer::kNumSpecial).sum().item<int64_t>();
  }
  EXPECT_NEAR(static_cast<double>(chosen) / static_cast<double>(real), 0.15, 0.01);
  EXPECT_EQ(data.state().step, 200);
}

TEST_F(DataDatasetTest, LanguagesAreDrawnWithProbabilityQ) {
  MlmDataset data(*tokenizer_, options().max_tokens(32));  // one sequence per batch
  const int n = 3000;
  std::vector<double> hits(4, 0.0);
  for (int step = 0; step < n; ++step) hits[static_cast<size_t>(data.next_batch().language)] += 1;
  double chi2 = 0;
  for (size_t l = 0; l < 4; ++l) {
    const double e = data.sampling_probs()[l] * n;
    chi2 += (hits[l] - e) * (hits[l] - e) / e;
  }
  EXPECT_LT(chi2, 16.27) << hits[0] << " " << hits[1] << " " << hits[2] << " " << hits[3];
  // a = 1 would follow p: the low-resource language is up-sampled.
  EXPECT_GT(data.sampling_probs()[3], 30.0 / 540.0);
}

TEST_F(DataDatasetTest, EachEpochVisitsEverySequenceOnceInAFreshOrder) {
  for (bool shuffle : {true, false}) {
    MlmDataset data(*tokenizer_, options().languages({"ru"}).shuffle(shuffle));
    const int64_t n = data.sequences(0).size();
    ASSERT_GE(n, 8);
    std::vector<int64_t> visits;
    while (static_cast<int64_t>(visits.size()) < 3 * n) {
      const MlmBatch b = data.next_batch();
      EXPECT_EQ(b.language, 0);
      visits.insert(visits.end(), b.sequence_index.begin(), b.sequence_index.end());
    }
    std::vector<std::vector<int64_t>> epochs;
    for (int e = 0; e < 3; ++e) {
      std::vector<int64_t> order(visits.begin() + e * n, visits.begin() + (e + 1) * n);
      std::vector<int64_t> sorted = order;
      std::sort(sorted.begin(), sorted.end());
      std::vector<int64_t> all(static_cast<size_t>(n));
      std::iota(all.begin(), all.end(), 0);
      EXPECT_EQ(sorted, all) << "epoch " << e;
      epochs.push_back(order);
    }
    if (shuffle) {
      EXPECT_NE(epochs[0], epochs[1]);
      EXPECT_NE(epochs[1], epochs[2]);
    } else {
      EXPECT_EQ(epochs[0], epochs[1]);
      EXPECT_EQ(epochs[0][1], 1);
    }
    EXPECT_GE(data.state().epoch[0], 2);
  }
}

TEST_F(DataDatasetTest, SavedStateContinuesBitIdentically) {
  // Save in the middle of a later epoch of some language, so that the restored stream must
  // rebuild a shuffled order other than the first.
  MlmDataset a(*tokenizer_, options());
  auto wrapped = [&] {
    const auto& e = a.state().epoch;
    return std::any_of(e.begin(), e.end(), [](int64_t v) { return v > 0; });
  };
  while (!wrapped() && a.state().step < 1000) a.next_batch();
  ASSERT_TRUE(wrapped());
  for (int i = 0; i < 3; ++i) a.next_batch();
  const std::string path = dir_->file("state.safetensors");
  save_safetensors(path, a.state_dict());
  std::vector<MlmBatch> expected;
  for (int i = 0; i < 40; ++i) expected.push_back(a.next_batch());  // crosses epoch boundaries

  MlmDataset b(*tokenizer_, options());
  b.next_batch();  // whatever it did before is overwritten
  b.load_state_dict(load_safetensors(path));
  for (int i = 0; i < 40; ++i) {
    expect_same_batch(b.next_batch(), expected[static_cast<size_t>(i)], "batch " + std::to_string(i));
  }
  EXPECT_EQ(b.state().step, a.state().step);
  EXPECT_EQ(b.state().epoch, a.state().epoch);
  EXPECT_EQ(b.state().cursor, a.state().cursor);

  // The plain struct does the same.
  MlmDataset c(*tokenizer_, options());
  MlmDataset d(*tokenizer_, options());
  for (int i = 0; i < 5; ++i) c.next_batch();
  d.set_state(c.state());
  expect_same_batch(c.next_batch(), d.next_batch(), "set_state");
}

TEST_F(DataDatasetTest, MismatchedStatesAreRejected) {
  MlmDataset data(*tokenizer_, options());
  data.next_batch();
  const TensorMap state = data.state_dict();
  EXPECT_EQ(state.size(), 5u);

  auto error = [&](MlmDataset& target, const TensorMap& tensors) {
    try {
      target.load_state_dict(tensors);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  MlmDataset other_seed(*tokenizer_, options().seed(6));
  EXPECT_TRUE(Contains(error(other_seed, state), "seed"));
  MlmDataset other_len(*tokenizer_, options().max_len(24));
  EXPECT_TRUE(Contains(error(other_len, state), "sequences"));
  MlmDataset fewer(*tokenizer_, options().languages({"en", "de"}));
  EXPECT_TRUE(Contains(error(fewer, state), "languages"));
  TensorMap missing = state;
  missing.erase("data.cursor");
  EXPECT_TRUE(Contains(error(data, missing), "data.cursor"));
  EXPECT_THROW(data.load_state_dict(missing), FileFormatError);
  TensorMap bad_cursor = state;
  bad_cursor["data.cursor"] = at::full({4}, 100000, at::kLong);
  EXPECT_TRUE(Contains(error(data, bad_cursor), "cursor"));
  TensorMap prefixed;
  for (const auto& item : data.state_dict("loader.")) prefixed[item.first] = item.second;
  EXPECT_NO_THROW(data.load_state_dict(prefixed, "loader."));
}

TEST_F(DataDatasetTest, TokenCacheIsWrittenReusedAndInvalidated) {
  // A private copy of the corpus: this test edits it.
  const std::string copy = dir_->file("corpus_copy");
  fs::copy(corpus(), copy, fs::copy_options::recursive);
  const std::string cache_dir = dir_->file("cache");
  auto opts = MlmDatasetOptions(copy, "valid").max_len(32).max_tokens(128).cache_dir(cache_dir);

  const MlmDataset first(*tokenizer_, opts);
  EXPECT_EQ(first.loaded_from_cache(), (std::vector<bool>{false, false, false, false}));
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(cache_dir)) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  ASSERT_EQ(files.size(), 4u);
  EXPECT_TRUE(Contains(files[0], "valid.de."));

  const MlmDataset second(*tokenizer_, opts);
  EXPECT_EQ(second.loaded_from_cache(), (std::vector<bool>{true, true, true, true}));
  for (int64_t l = 0; l < 4; ++l) {
    EXPECT_EQ(second.sequences(l).ids, first.sequences(l).ids);
    EXPECT_EQ(second.sequences(l).offsets, first.sequences(l).offsets);
  }

  // A corrupted cache (one id flipped) is detected by its checksum and rebuilt.
  std::string bytes = xmoe_test::read_file(files[0]);
  bytes[bytes.size() - 12] ^= 0x5A;
  xmoe_test::write_file(files[0], bytes);
  const MlmDataset third(*tokenizer_, opts);
  EXPECT_EQ(third.loaded_from_cache(), (std::vector<bool>{false, true, true, true}));
  EXPECT_EQ(third.sequences(0).ids, first.sequences(0).ids);

  // A changed corpus file (size and mtime) is re-encoded.
  const std::string en = corpus_file(copy, "valid", "en");
  xmoe_test::write_file(en, xmoe_test::read_file(en) + "the cat sat on a mat.\n");
  const MlmDataset fourth(*tokenizer_, opts);
  EXPECT_EQ(fourth.loaded_from_cache(), (std::vector<bool>{true, false, true, true}));
  EXPECT_EQ(fourth.line_counts()[1], 41);

  // Other text of the same size and modification time (as cp -p or rsync -a leave it): the
  // content hash sees it, and it is re-encoded.
  const std::string de = corpus_file(copy, "valid", "de");
  const auto mtime = fs::last_write_time(de);
  std::string text = xmoe_test::read_file(de);
  text[0] = text[0] == 'X' ? 'Y' : 'X';
  xmoe_test::write_file(de, text);
  fs::last_write_time(de, mtime);
  const MlmDataset fifth(*tokenizer_, opts);
  EXPECT_EQ(fifth.loaded_from_cache(), (std::vector<bool>{false, true, true, true}));

  // A cache that cannot be written (its folder is a file) costs the speed-up, with a warning.
  const std::string blocked = dir_->file("blocked_cache");
  xmoe_test::write_file(blocked, "a file, not a folder");
  ::testing::internal::CaptureStderr();
  const MlmDataset uncached(*tokenizer_, MlmDatasetOptions(opts).cache_dir(blocked));
  const std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(uncached.sequences(1).ids, fifth.sequences(1).ids);
  EXPECT_TRUE(Contains(warning, "warning: cannot write the token cache")) << warning;

  // By default the cache lives beside the tokenizer model: <model minus .model>.cache/.
  const MlmDataset beside(*tokenizer_, opts.cache_dir(""));
  EXPECT_TRUE(fs::is_directory(dir_->file("tok/spm.cache")));
  EXPECT_EQ(MlmDataset(*tokenizer_, opts).loaded_from_cache(),
            (std::vector<bool>{true, true, true, true}));
}

TEST_F(DataDatasetTest, EvalIteratorCoversEverySequenceOnceWithFixedMasks) {
  const MlmDataset data(*tokenizer_, options("valid").max_tokens(96));
  EXPECT_EQ(data.line_counts(), (std::vector<int64_t>{30, 40, 20, 10}));
  for (int64_t l = 0; l < data.n_languages(); ++l) {
    MlmEvalIterator it = data.eval_iterator(l);
    std::vector<MlmBatch> first;
    std::vector<int64_t> seen;
    MlmBatch b;
    while (it.next(&b)) {
      EXPECT_EQ(b.language, l);
      EXPECT_LE(b.tokens.size(0) * b.tokens.size(1), 96);
      seen.insert(seen.end(), b.sequence_index.begin(), b.sequence_index.end());
      first.push_back(b);
    }
    std::vector<int64_t> all(static_cast<size_t>(data.sequences(l).size()));
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(seen, all);  // every sequence once, in file order
    it.reset();
    MlmEvalIterator fresh = data.eval_iterator(l);
    for (size_t i = 0; i < first.size(); ++i) {
      MlmBatch again, other;
      ASSERT_TRUE(it.next(&again));
      ASSERT_TRUE(fresh.next(&other));
      expect_same_batch(again, first[i], "reset, batch " + std::to_string(i));
      expect_same_batch(other, first[i], "fresh iterator, batch " + std::to_string(i));
    }
    EXPECT_FALSE(it.next(&b));
  }
  EXPECT_THROW(data.eval_iterator(4), std::invalid_argument);
  EXPECT_EQ(data.language_index("ru"), 2);
  EXPECT_THROW(data.language_index("fr"), std::invalid_argument);
}

TEST_F(DataDatasetTest, BadOptionsAndMissingFilesAreReported) {
  auto error = [&](const MlmDatasetOptions& o) {
    try {
      MlmDataset data(*tokenizer_, o);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_TRUE(Contains(error(options().max_len(2)), "max_len"));
  EXPECT_TRUE(Contains(error(options().max_tokens(31)), "max_tokens"));
  EXPECT_TRUE(Contains(error(options().alpha(0)), "alpha"));
  EXPECT_TRUE(Contains(error(options().mask_prob(1.5)), "mask_prob"));
  EXPECT_TRUE(Contains(error(options().random_token_prob(0.5)), "random_token_prob"));
  EXPECT_TRUE(Contains(error(options().languages({"en", "en"})), "twice"));
  EXPECT_TRUE(Contains(error(options("dev")), corpus() + "/dev"));
  EXPECT_TRUE(Contains(error(options().languages({"en", "fr"})), "fr.txt"));

  const std::string empty = dir_->file("empty_corpus");
  xmoe_test::write_corpus(empty, "train", {{"en", 0}, {"de", 0}}, 1);
  EXPECT_TRUE(Contains(error(MlmDatasetOptions(empty).use_cache(false)), "no language has any text"));

  // A <lang>.txt that is a dangling link is named, not skipped (the language would vanish).
  const std::string dangling = dir_->file("dangling_corpus");
  xmoe_test::write_corpus(dangling, "train", {{"en", 3}}, 1);
  fs::create_symlink(dir_->file("nowhere.txt"), dangling + "/train/de.txt");
  EXPECT_TRUE(Contains(error(MlmDatasetOptions(dangling).use_cache(false)),
                       dangling + "/train/de.txt: not a readable corpus file"));

  // A line beyond 1 MiB (SentencePiece would need ~200× its size in memory) is named.
  const std::string long_line = dir_->file("long_line_corpus");
  xmoe_test::write_corpus(long_line, "train", {{"en", 3}}, 1);
  std::ofstream(long_line + "/train/en.txt", std::ios::app)
      << std::string((1 << 20) + 1, 'a') << "\n";
  EXPECT_TRUE(Contains(error(MlmDatasetOptions(long_line).use_cache(false)),
                       long_line + "/train/en.txt: line 4 is 1048577 bytes"));
}

}  // namespace
}  // namespace xmoe
