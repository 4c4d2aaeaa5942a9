// TextStream: a sequence's generated ids -> the text deltas a client sees.
//
// Decodes incrementally (a delta never ends inside a UTF-8 character) and applies stop strings:
// text that could be the start of a stop string is held back until it is known not to be, and
// when one matches, the text before it is the last delta and stopped() turns true. Special
// tokens are not shown. One instance per sequence; not thread-safe; the tokenizer must outlive
// it.
#ifndef SHARDSERVE_ROUTER_TEXT_STREAM_H_
#define SHARDSERVE_ROUTER_TEXT_STREAM_H_

#include <string>
#include <vector>

#include "model/tokenizer/tokenizer.h"

namespace shardserve {

class TextStream {
 public:
  // follows_text: the output continues a text prompt (completions), so its first token keeps
  // its leading space ("Once" + " upon"); a chat answer starts its own text.
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings,
             bool follows_text = false);

  // The text that may be shown after `id`.
  std::string Add(int32_t id);
  // What is still held back, at the end of generation (empty once stopped).
  std::string Finish();
  bool stopped() const { return stopped_; }

 private:
  StreamingDecoder decoder_;
  const std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_TEXT_STREAM_H_
