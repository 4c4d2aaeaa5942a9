// GGUF reader: metadata types, tensor directory, and rejection of malformed files.
#include "model/gguf.h"

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/tokenizer/gguf_writer.h"

namespace shardserve {
namespace {

using testing::GgufWriter;

absl::StatusOr<std::unique_ptr<GgufFile>> ParseBytes(const std::string& bytes) {
  return GgufFile::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "test");
}

GgufWriter SampleWriter() {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddUint32("llama.block_count", 2);
  w.AddInt32("neg", -5);
  w.AddFloat32("llama.rope.freq_base", 10000.0f);
  w.AddBool("flag", true);
  w.AddStringArray("names", {"a", "bc", ""});
  w.AddInt32Array("ints", {1, -2, 3});
  w.AddFloat32Array("floats", {0.5f, -1.0f});
  std::string f32(4 * 6, '\0');
  const float vals[6] = {1, 2, 3, 4, 5, 6};
  std::memcpy(f32.data(), vals, sizeof(vals));
  w.AddTensor("w", 0, {3, 2}, f32);
  w.AddTensor("q", 8, {32}, std::string(34, '\x01'));  // one q8_0 block
  return w;
}

TEST(GgufTest, ParsesMetadataAndTensors) {
  const std::string bytes = SampleWriter().Serialize();
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 3u);
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
  EXPECT_EQ(*(*f)->GetInt("llama.block_count"), 2);
  EXPECT_EQ(*(*f)->GetUint("llama.block_count"), 2u);
  EXPECT_EQ(*(*f)->GetInt("neg"), -5);
  EXPECT_FALSE((*f)->GetUint("neg").ok());
  EXPECT_FLOAT_EQ(*(*f)->GetFloat("llama.rope.freq_base"), 10000.0);
  EXPECT_TRUE(*(*f)->GetBool("flag"));
  EXPECT_THAT(*(*f)->GetStringArray("names"), ::testing::ElementsAre("a", "bc", ""));
  EXPECT_THAT(*(*f)->GetIntArray("ints"), ::testing::ElementsAre(1, -2, 3));
  EXPECT_THAT(*(*f)->GetFloatArray("floats"), ::testing::ElementsAre(0.5f, -1.0f));
  EXPECT_EQ((*f)->GetString("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*f)->GetString("flag").status().code(), absl::StatusCode::kInvalidArgument);

  ASSERT_EQ((*f)->tensors().size(), 2u);
  const GgufTensorInfo* w = (*f)->tensor("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->ggml_type, 0u);
  EXPECT_THAT(w->dims, ::testing::ElementsAre(3, 2));
  EXPECT_EQ(w->size_bytes, 24u);
  EXPECT_EQ(w->num_elements, 6);
  float got[6];
  std::memcpy(got, w->data, sizeof(got));
  EXPECT_EQ(got[5], 6.0f);
  EXPECT_EQ((w->data - reinterpret_cast<const uint8_t*>(bytes.data())) % 32, 0);
  const GgufTensorInfo* q = (*f)->tensor("q");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->size_bytes, 34u);
  EXPECT_EQ(q->offset, 32u);
  EXPECT_EQ(std::string(GgmlType(q->ggml_type)->name), "q8_0");
  EXPECT_EQ((*f)->tensor("nope"), nullptr);
}

TEST(GgufTest, VocabOnlyFileLoads) {
  GgufWriter w;
  w.AddString("tokenizer.ggml.model", "llama");
  auto f = ParseBytes(w.Serialize());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->tensors().empty());
}

TEST(GgufTest, OpensRealFile) {
  auto f = GgufFile::Open("../shared/tokenizers/ggml-vocab-llama-spm.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ((*f)->GetStringArray("tokenizer.ggml.tokens")->size(), 32000u);
  EXPECT_EQ(GgufFile::Open("/nonexistent.gguf").status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufTest, RejectsEveryTruncation) {
  const std::string bytes = SampleWriter().Serialize();
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto f = ParseBytes(bytes.substr(0, n));
    EXPECT_FALSE(f.ok()) << "prefix of " << n << " bytes accepted";
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(GgufTest, RejectsMalformedHeaders) {
  std::string bytes = SampleWriter().Serialize();
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  EXPECT_THAT(std::string(ParseBytes(bad_magic).status().message()),
              ::testing::HasSubstr("bad magic"));
  std::string bad_version = bytes;
  bad_version[4] = 7;
  EXPECT_THAT(std::string(ParseBytes(bad_version).status().message()),
              ::testing::HasSubstr("version 7"));
  std::string huge_count = bytes;
  std::memset(&huge_count[16], 0xFF, 8);  // metadata count
  EXPECT_FALSE(ParseBytes(huge_count).ok());
}

TEST(GgufTest, RejectsBadValues) {
  {
    GgufWriter w;  // string length past the end
    std::string kv;
    const uint64_t key_len = 1;
    kv.append(reinterpret_cast<const char*>(&key_len), 8);
    kv += "k";
    const uint32_t type = 8;
    kv.append(reinterpret_cast<const char*>(&type), 4);
    const uint64_t len = 1ull << 40;
    kv.append(reinterpret_cast<const char*>(&len), 8);
    w.AddRawKeyValue(kv);
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("past the end"));
  }
  {
    GgufWriter w;  // unknown value type
    std::string kv;
    const uint64_t key_len = 1;
    kv.append(reinterpret_cast<const char*>(&key_len), 8);
    kv += "k";
    const uint32_t type = 99;
    kv.append(reinterpret_cast<const char*>(&type), 4);
    w.AddRawKeyValue(kv);
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("unknown type 99"));
  }
  {
    GgufWriter w;  // duplicate key
    w.AddUint32("a", 1);
    w.AddUint32("a", 2);
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("duplicate"));
  }
  {
    GgufWriter w;  // bad alignment
    w.AddUint32("general.alignment", 3);
    EXPECT_FALSE(ParseBytes(w.Serialize()).ok());
  }
}

TEST(GgufTest, RejectsBadTensors) {
  {
    GgufWriter w;  // tensor data past the end of the file
    w.AddTensor("t", 0, {1000}, std::string(16, '\0'));
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("past the end"));
  }
  {
    GgufWriter w;  // unknown ggml type
    w.AddTensor("t", 77, {4}, std::string(16, '\0'));
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("unknown ggml type"));
  }
  {
    GgufWriter w;  // element count overflow
    w.AddTensor("t", 0, {1ll << 40, 1ll << 40}, "");
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("overflows"));
  }
  {
    GgufWriter w;  // row not a multiple of the block size
    w.AddTensor("t", 8, {31}, std::string(34, '\0'));
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("block size"));
  }
  {
    GgufWriter w;  // duplicate tensor names
    w.AddTensor("t", 0, {1}, std::string(4, '\0'));
    w.AddTensor("t", 0, {1}, std::string(4, '\0'));
    EXPECT_THAT(std::string(ParseBytes(w.Serialize()).status().message()),
                ::testing::HasSubstr("duplicate tensor"));
  }
}

}  // namespace
}  // namespace shardserve
