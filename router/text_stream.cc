#include "router/text_stream.h"

#include <algorithm>

namespace shardserve {

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings,
                       bool follows_text)
    : decoder_(tokenizer, /*skip_special=*/true, /*continuation=*/follows_text),
      stops_(std::move(stop_strings)) {}

std::string TextStream::Add(int32_t id) {
  if (stopped_) return "";
  held_ += decoder_.Add(id);
  size_t first = std::string::npos;
  for (const std::string& stop : stops_) first = std::min(first, held_.find(stop));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the longest tail of held_ that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& stop : stops_) {
    for (size_t n = std::min(stop.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, stop, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string TextStream::Finish() {
  if (stopped_) return "";
  std::string out = held_ + decoder_.Flush();
  held_.clear();
  size_t first = std::string::npos;
  for (const std::string& stop : stops_) first = std::min(first, out.find(stop));
  if (first != std::string::npos) {
    stopped_ = true;
    out.resize(first);
  }
  return out;
}

}  // namespace shardserve
