#include "model/tokenizer/bpe_model.h"

#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/tokenizer/utf8.h"

namespace shardserve::tokenizer_internal {
namespace {

struct ByteTables {
  char32_t byte_to_cp[256];
  absl::flat_hash_map<char32_t, uint8_t> cp_to_byte;
  ByteTables() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      byte_to_cp[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables* t = new ByteTables();
  return *t;
}

char32_t DecodeOne(absl::string_view s, size_t n) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (n == 1) return b0;
  char32_t cp = b0 & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (size_t i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<uint8_t>(s[i]) & 0x3F);
  return cp;
}

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

char32_t ByteToUnicode(uint8_t b) { return Tables().byte_to_cp[b]; }

bool ByteLevelToBytes(absl::string_view piece, std::string* bytes) {
  const ByteTables& t = Tables();
  bytes->clear();
  size_t i = 0;
  while (i < piece.size()) {
    const size_t n = utf8::ValidSequenceLength(piece.substr(i));
    if (n == 0) return false;
    auto it = t.cp_to_byte.find(DecodeOne(piece.substr(i), n));
    if (it == t.cp_to_byte.end()) return false;
    bytes->push_back(static_cast<char>(it->second));
    i += n;
  }
  return true;
}

std::string BytesToByteLevel(absl::string_view bytes) {
  std::string out;
  for (char c : bytes) utf8::Append(ByteToUnicode(static_cast<uint8_t>(c)), &out);
  return out;
}

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    BpeOptions options, std::vector<std::string> pieces,
    const std::vector<std::pair<std::string, std::string>>& merges, std::vector<float> scores) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->options_ = options;
  m->pieces_ = std::move(pieces);
  if (options.use_scores && scores.size() != m->pieces_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("scores has ", scores.size(), " entries for ", m->pieces_.size(), " pieces"));
  }
  m->scores_ = std::move(scores);
  m->piece_to_id_.reserve(m->pieces_.size());
  for (size_t id = 0; id < m->pieces_.size(); ++id) {
    if (m->pieces_[id].empty()) continue;
    // The first id wins for duplicated pieces, as in the reference implementations.
    m->piece_to_id_.emplace(m->pieces_[id], static_cast<int32_t>(id));
  }
  m->byte_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    const std::string key =
        options.byte_level ? std::string(1, static_cast<char>(b)) : absl::StrFormat("<0x%02X>", b);
    m->byte_ids_[b] = m->Find(key);
  }
  if (!options.use_scores) {
    m->merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const int32_t a = m->Find(merges[rank].first);
      const int32_t b = m->Find(merges[rank].second);
      const int32_t r = m->Find(absl::StrCat(merges[rank].first, merges[rank].second));
      if (a < 0 || b < 0 || r < 0) {
        return absl::InvalidArgumentError(absl::StrCat("merge ", rank, " (\"", merges[rank].first,
                                                       "\", \"", merges[rank].second,
                                                       "\") uses a piece missing from the vocab"));
      }
      m->merges_.emplace(PairKey(a, b), Merge{static_cast<int32_t>(rank), r});
    }
  }
  return m;
}

int32_t BpeModel::Find(absl::string_view piece) const {
  auto it = piece_to_id_.find(piece);
  return it == piece_to_id_.end() ? -1 : it->second;
}

void BpeModel::EncodeWord(absl::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    const int32_t id = Find(word);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  if (word.size() > kMaxCachedWordBytes) {
    EncodeUncached(word, out);
    return;
  }
  {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  EncodeUncached(word, &ids);
  out->insert(out->end(), ids.begin(), ids.end());
  absl::WriterMutexLock lock(&cache_mu_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(std::string(word), std::move(ids));
}

void BpeModel::InitialSymbols(absl::string_view word, std::vector<Symbol>* syms) const {
  auto push = [&](int32_t id, size_t begin, size_t len) {
    const auto idx = static_cast<int32_t>(syms->size());
    syms->push_back(
        Symbol{id, static_cast<uint32_t>(begin), static_cast<uint32_t>(len), idx - 1, idx + 1});
  };
  if (options_.byte_level) {
    for (size_t i = 0; i < word.size(); ++i) {
      push(byte_ids_[static_cast<uint8_t>(word[i])], i, 1);
    }
  } else {
    utf8::ForEachChar(word, [&](size_t begin, size_t len) {
      if (options_.use_scores) {
        push(Find(word.substr(begin, len)), begin, len);  // resolved after merging
        return;
      }
      const int32_t id = Find(word.substr(begin, len));
      if (id >= 0) {
        push(id, begin, len);
        return;
      }
      bool all_bytes = options_.byte_fallback;
      for (size_t k = 0; all_bytes && k < len; ++k) {
        all_bytes = byte_ids_[static_cast<uint8_t>(word[begin + k])] >= 0;
      }
      if (all_bytes) {
        for (size_t k = 0; k < len; ++k) {
          push(byte_ids_[static_cast<uint8_t>(word[begin + k])], begin + k, 1);
        }
      } else {
        push(options_.unk_id, begin, len);
      }
    });
  }
  if (!syms->empty()) syms->back().next = -1;
}

void BpeModel::MergeByRank(std::vector<Symbol>* syms_ptr) const {
  std::vector<Symbol>& syms = *syms_ptr;
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left, right, result;
    bool operator<(const Candidate& o) const {  // priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t nx = syms[pos].next;
    if (nx < 0 || syms[pos].id < 0 || syms[nx].id < 0) return;
    auto it = merges_.find(PairKey(syms[pos].id, syms[nx].id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, pos, syms[pos].id, syms[nx].id, it->second.result});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = syms[c.pos];
    if (left.len == 0 || left.id != c.left || left.next < 0) continue;
    Symbol& right = syms[left.next];
    if (right.id != c.right) continue;
    JoinWithNext(syms, c.pos, c.result);
    consider(left.prev);
    consider(c.pos);
  }
}

void BpeModel::JoinWithNext(std::vector<Symbol>& syms, int32_t pos, int32_t id) {
  Symbol& left = syms[pos];
  Symbol& right = syms[left.next];
  left.id = id;
  left.len += right.len;
  right.len = 0;
  left.next = right.next;
  if (left.next >= 0) syms[left.next].prev = pos;
}

void BpeModel::MergeByScore(absl::string_view word, std::vector<Symbol>* syms_ptr) const {
  std::vector<Symbol>& syms = *syms_ptr;
  struct Candidate {
    float score;
    int32_t pos;
    uint32_t size;
    int32_t result;
    bool operator<(const Candidate& o) const {
      return score != o.score ? score < o.score : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t nx = syms[pos].next;
    if (nx < 0) return;
    const uint32_t size = syms[pos].len + syms[nx].len;
    const int32_t id = Find(word.substr(syms[pos].begin, size));
    if (id < 0) return;
    queue.push({scores_[id], pos, size, id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = syms[c.pos];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = syms[left.next];
    if (right.len == 0 || left.len + right.len != c.size) continue;
    JoinWithNext(syms, c.pos, c.result);
    consider(left.prev);
    consider(c.pos);
  }
}

void BpeModel::EmitSymbols(absl::string_view word, const std::vector<Symbol>& syms,
                           std::vector<int32_t>* out) const {
  bool last_unk = false;
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
    const Symbol& s = syms[i];
    int32_t id = s.id;
    if (id < 0 && options_.use_scores) {
      // A character missing from the vocabulary: its bytes, else unk.
      bool all_bytes = true;
      for (uint32_t k = 0; all_bytes && k < s.len; ++k) {
        all_bytes = byte_ids_[static_cast<uint8_t>(word[s.begin + k])] >= 0;
      }
      if (all_bytes) {
        for (uint32_t k = 0; k < s.len; ++k) {
          out->push_back(byte_ids_[static_cast<uint8_t>(word[s.begin + k])]);
        }
        last_unk = false;
        continue;
      }
      id = options_.unk_id;
    }
    if (id < 0) continue;  // no unk token configured: the character is dropped
    const bool is_unk = id == options_.unk_id;
    if (is_unk && last_unk && options_.fuse_unk) continue;
    last_unk = is_unk;
    out->push_back(id);
  }
}

void BpeModel::EncodeUncached(absl::string_view word, std::vector<int32_t>* out) const {
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  InitialSymbols(word, &syms);
  if (options_.use_scores) {
    MergeByScore(word, &syms);
  } else {
    MergeByRank(&syms);
  }
  EmitSymbols(word, syms, out);
}

}  // namespace shardserve::tokenizer_internal
