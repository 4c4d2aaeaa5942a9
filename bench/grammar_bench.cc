// Structured-output costs on one thread: schema compile time (JSON Schema -> GBNF -> grammar)
// and the per-token mask computation, over a real vocabulary.
//
//   build/bin/grammar_bench [--tokenizer DIR] [--schemas FILE] [--tokens N] [--seed S]
//
// DIR defaults to build/testdata/tokenizers/llama3 (128k tokens, fetched by the tokenizer test
// setup); FILE to tests/structured/schemas.json (the 30 schemas the e2e test validates with
// ajv). For each schema, a generation of up to N tokens (default 128) picks uniformly among the
// allowed tokens (a worst case for the cache: a model repeats itself far more), with the
// max_tokens budget on; every Mask() call is timed. Each schema is generated three ways:
//   walk   masks of new states by a walk of the whole vocabulary trie (no token table);
//   cold   the same generation (same seed, same tokens) with a fresh token table, whose entries
//          are built as they are met: a schema's first request;
//   warm   another generation (another seed) on that table: a later request with the same
//          schema, as the router shares a compiled grammar's table between requests.
// Prints per-schema compile times and, per way, the p50/p90/p99/max mask time over all calls.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "model/grammar/grammar.h"
#include "model/grammar/json_schema.h"
#include "model/grammar/matcher.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_dir = "build/testdata/tokenizers/llama3";
  std::string schemas_file = "tests/structured/schemas.json";
  int tokens = 128;
  unsigned seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokenizer" && i + 1 < argc) {
      tokenizer_dir = argv[++i];
    } else if (a == "--schemas" && i + 1 < argc) {
      schemas_file = argv[++i];
    } else if (a == "--tokens" && i + 1 < argc) {
      tokens = std::atoi(argv[++i]);
    } else if (a == "--seed" && i + 1 < argc) {
      seed = static_cast<unsigned>(std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: grammar_bench [--tokenizer DIR] [--schemas FILE] [--tokens N] "
                   "[--seed S]\n");
      return 2;
    }
  }
  auto tok = shardserve::Tokenizer::Load(tokenizer_dir);
  if (!tok.ok()) {
    std::fprintf(stderr, "grammar_bench: %s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  std::ifstream in(schemas_file);
  std::stringstream text;
  text << in.rdbuf();
  const auto schemas = nlohmann::ordered_json::parse(text.str(), nullptr, false);
  if (!in || schemas.is_discarded() || !schemas.is_object()) {
    std::fprintf(stderr, "grammar_bench: cannot read a JSON object of schemas from %s\n",
                 schemas_file.c_str());
    return 1;
  }
  const auto vocab_start = Clock::now();
  auto vocab = shardserve::grammar::Vocabulary::FromTokenizer(**tok);
  std::printf("vocabulary: %d tokens, trie built in %.1f ms\n", vocab->size(),
              Micros(Clock::now() - vocab_start) / 1000);

  std::vector<double> compiles;
  struct Way {
    explicit Way(const char* n) : name(n) {}
    const char* name;
    std::vector<double> masks;
    int64_t hits = 0, misses = 0;
  };
  Way ways[3] = {Way("walk"), Way("cold"), Way("warm")};
  int64_t entries = 0;
  std::vector<double> table_bytes;
  // One generation: every Mask() timed; false (after saying why) when something is wrong.
  auto generate = [&](const std::string& name, shardserve::grammar::Matcher& m, unsigned s,
                      Way& way) {
    std::mt19937 rng(s);
    for (int used = 0; used < tokens && !m.Finished(); ++used) {
      const auto t0 = Clock::now();
      auto mask = m.Mask(tokens - used - 1);
      way.masks.push_back(Micros(Clock::now() - t0));
      if (!mask.ok()) {
        std::fprintf(stderr, "%s: %s\n", name.c_str(),
                     std::string(mask.status().message()).c_str());
        return false;
      }
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < vocab->size(); ++id) {
        if (((*mask)[id >> 3] >> (id & 7)) & 1) allowed.push_back(id);
      }
      if (allowed.empty()) break;
      if (!m.Accept(allowed[rng() % allowed.size()]).ok()) {
        std::fprintf(stderr, "%s: an allowed token was refused\n", name.c_str());
        return false;
      }
    }
    way.hits += m.cache_hits();
    way.misses += m.cache_misses();
    return true;
  };
  std::printf("%-20s %12s %8s %8s %8s %8s\n", "schema", "compile_us", "walk_p50", "walk_max",
              "cold_max", "warm_max");
  unsigned schema_seed = seed;
  for (const auto& [name, schema] : schemas.items()) {
    // Compile: the best of 5 (the router caches compiled grammars by text).
    double best = 1e30;
    std::shared_ptr<const shardserve::grammar::Grammar> grammar;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = Clock::now();
      auto gbnf = shardserve::grammar::JsonSchemaToGbnf(schema.dump());
      if (!gbnf.ok()) {
        std::fprintf(stderr, "%s: %s\n", name.c_str(),
                     std::string(gbnf.status().message()).c_str());
        return 1;
      }
      auto g = shardserve::grammar::Grammar::Parse(*gbnf);
      if (!g.ok()) {
        std::fprintf(stderr, "%s: %s\n", name.c_str(), std::string(g.status().message()).c_str());
        return 1;
      }
      best = std::min(best, Micros(Clock::now() - t0));
      grammar = *g;
    }
    compiles.push_back(best);
    const unsigned s = schema_seed++;
    size_t first[3];
    for (int w = 0; w < 3; ++w) first[w] = ways[w].masks.size();
    shardserve::grammar::Matcher walk(grammar, vocab);
    if (!generate(name, walk, s, ways[0])) return 1;
    auto table = std::make_shared<shardserve::grammar::TokenTable>(grammar, vocab);
    shardserve::grammar::Matcher cold(table);
    if (!generate(name, cold, s, ways[1])) return 1;
    shardserve::grammar::Matcher warm(table);
    if (!generate(name, warm, s + 1000, ways[2])) return 1;
    entries += table->entries_built();
    table_bytes.push_back(static_cast<double>(table->bytes()));
    auto max_of = [&](int w) {
      return *std::max_element(ways[w].masks.begin() + first[w], ways[w].masks.end());
    };
    std::printf("%-20s %12.0f %8.1f %8.1f %8.1f %8.1f\n", name.c_str(), best,
                Quantile({ways[0].masks.begin() + first[0], ways[0].masks.end()}, 0.5), max_of(0),
                max_of(1), max_of(2));
  }
  std::printf("\ncompile (%zu schemas): median %.0f us, max %.0f us\n", compiles.size(),
              Quantile(compiles, 0.5), Quantile(compiles, 1.0));
  std::printf("token table entries built: %lld in all; table size median %.0f KiB, max %.0f KiB\n",
              static_cast<long long>(entries), Quantile(table_bytes, 0.5) / 1024,
              Quantile(table_bytes, 1.0) / 1024);
  for (const Way& w : ways) {
    std::printf(
        "mask per token, %-4s (%zu calls): p50 %.1f us, p90 %.1f us, p99 %.1f us, max %.1f us; "
        "state cache hits %.0f%%\n",
        w.name, w.masks.size(), Quantile(w.masks, 0.5), Quantile(w.masks, 0.9),
        Quantile(w.masks, 0.99), Quantile(w.masks, 1.0),
        100.0 * w.hits / std::max<int64_t>(1, w.hits + w.misses));
  }
  return 0;
}
