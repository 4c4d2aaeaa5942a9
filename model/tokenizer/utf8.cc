#include "model/tokenizer/utf8.h"

namespace shardserve::utf8 {

void Append(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t ValidSequenceLength(absl::string_view s, bool* incomplete) {
  if (incomplete != nullptr) *incomplete = false;
  if (s.empty()) return 0;
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return 1;
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= s.size()) {
      if (incomplete != nullptr) *incomplete = true;
      return 0;
    }
    const auto b = static_cast<uint8_t>(s[i]);
    const uint8_t l = i == 1 ? lo : 0x80;
    const uint8_t h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return 0;
  }
  return need;
}

bool IsValid(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = ValidSequenceLength(s.substr(i));
    if (n == 0) return false;
    i += n;
  }
  return true;
}

size_t DecodeLossy(absl::string_view bytes, bool final, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto b = static_cast<uint8_t>(bytes[i]);
    if (b < 0x80) {
      out->push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    bool incomplete = false;
    const size_t n = ValidSequenceLength(bytes.substr(i), &incomplete);
    if (n > 0) {
      out->append(bytes.data() + i, n);
      i += n;
      continue;
    }
    if (incomplete) {
      if (!final) return i;
      out->append(kReplacement.data(), kReplacement.size());
      return bytes.size();
    }
    // Maximal subpart: the lead byte plus any continuation bytes that were still valid.
    size_t j = i + 1;
    while (j < bytes.size() && j - i < 4) {
      bool inc = false;
      // The prefix bytes[i, j+1) is still a valid prefix iff checking it reports incomplete.
      ValidSequenceLength(bytes.substr(i, j + 1 - i), &inc);
      if (!inc) break;
      ++j;
    }
    out->append(kReplacement.data(), kReplacement.size());
    i = j;
  }
  return i;
}

std::string Sanitize(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  DecodeLossy(s, /*final=*/true, &out);
  return out;
}

}  // namespace shardserve::utf8
