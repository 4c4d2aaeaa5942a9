// `shardserve inspect tokenize` (InspectMain) output and errors.
#include "cli/inspect.h"

#include <iostream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

struct Result {
  int code;
  std::string out, err;
};

Result RunInspect(std::vector<std::string> args) {
  args.insert(args.begin(), "inspect");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  std::ostringstream out, err;
  std::streambuf* old_out = std::cout.rdbuf(out.rdbuf());
  std::streambuf* old_err = std::cerr.rdbuf(err.rdbuf());
  const int code = InspectMain(static_cast<int>(argv.size()), argv.data());
  std::cout.rdbuf(old_out);
  std::cerr.rdbuf(old_err);
  return {code, out.str(), err.str()};
}

TEST(InspectTest, TokenizeJsonFromModelFolder) {
  Result r = RunInspect({"tokenize", "--model", "../shared/models/stories260K", "--text",
                         "Once upon a time", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("ids").get<std::vector<int>>(), (std::vector<int>{1, 403, 407, 261, 378}));
  EXPECT_EQ(j.at("pieces")[0], "<s>");
  EXPECT_EQ(j.at("pieces")[1], "\xE2\x96\x81Once");
}

TEST(InspectTest, NoBosAndGguf) {
  Result r = RunInspect({"tokenize", "--model", "../shared/tokenizers/ggml-vocab-llama-spm.gguf",
                         "--text=Hello world", "--no-bos", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("ids").get<std::vector<int>>(), (std::vector<int>{15043, 3186}));
  EXPECT_EQ(j.at("pieces").size(), 2u);
}

TEST(InspectTest, ErrorsAreOneLine) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"tokenize", "--text", "x", "--json"},
           {"tokenize", "--model", "/nonexistent", "--text", "x", "--json"},
           {"tokenize", "--model", "../shared/models/stories260K", "--bogus"},
           {"frobnicate"}}) {
    Result r = RunInspect(args);
    EXPECT_NE(r.code, 0);
    EXPECT_TRUE(r.out.empty());
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  }
}

}  // namespace
}  // namespace shardserve
