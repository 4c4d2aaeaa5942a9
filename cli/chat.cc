// `shardserve chat`: a conversation with a router, one line per user turn.
//
// On a terminal, lines are read with libedit: arrow keys edit and recall earlier lines. Ctrl-C
// stops the reply being streamed (the conversation keeps what came) and, at the prompt, clears
// the line; Ctrl-D or /exit ends the session. When the conversation outgrows the model's context
// the oldest turns are dropped, and the user is told so.
#include <editline/readline.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/complete.h"
#include "common/cli_flags.h"

namespace shardserve {
namespace {

std::atomic<bool> interrupted{false};

void OnInterrupt(int) { interrupted.store(true); }

constexpr char kHelp[] =
    "  /help          this list\n"
    "  /reset         forget the conversation (the system prompt stays)\n"
    "  /system TEXT   set the system prompt (and forget the conversation)\n"
    "  /exit, /quit   end the session (so do Ctrl-D, `exit` and `quit`)\n"
    "  Ctrl-C         stop the reply being written\n";

// A line from the user: libedit on a terminal, plain stdin otherwise. nullopt at end of input.
class LineReader {
 public:
  LineReader() : tty_(isatty(STDIN_FILENO) && isatty(STDOUT_FILENO)) {}

  std::optional<std::string> Read(const char* prompt) {
    if (!tty_) {
      std::fputs(prompt, stdout);
      std::fflush(stdout);
      std::string line;
      if (!std::getline(std::cin, line)) return std::nullopt;
      return line;
    }
    while (true) {
      interrupted = false;
      char* raw = readline(prompt);
      if (raw == nullptr) {
        // Ctrl-C at the prompt interrupts the read: a fresh prompt, as in a shell.
        if (interrupted.exchange(false)) {
          std::fputc('\n', stdout);
          continue;
        }
        std::fputc('\n', stdout);
        return std::nullopt;
      }
      std::string line(raw);
      std::free(raw);
      if (!absl::StripAsciiWhitespace(line).empty()) add_history(line.c_str());
      return line;
    }
  }

 private:
  const bool tty_;
};

bool IsContextFull(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument &&
         (absl::StrContains(s.message(), "longer than the context") ||
          absl::StrContains(s.message(), "past the context"));
}

// The conversation sent with each turn: the system prompt, then user/assistant turns.
class Conversation {
 public:
  explicit Conversation(std::string system) : system_(std::move(system)) {}
  void set_system(std::string system) {
    system_ = std::move(system);
    Reset();
  }
  void Reset() { turns_.Clear(); }
  void Add(const std::string& role, const std::string& content) {
    v1::ChatMessage* m = turns_.add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  // Drops the oldest user turn and the reply to it; false when only the newest turn is left.
  bool DropOldestTurn() {
    if (turns_.messages_size() <= 1) return false;
    const int n = turns_.messages_size() >= 2 && turns_.messages(1).role() == "assistant" ? 2 : 1;
    turns_.mutable_messages()->DeleteSubrange(0, n);
    return true;
  }
  void DropNewest() {
    if (turns_.messages_size() > 0) turns_.mutable_messages()->RemoveLast();
  }
  void Fill(v1::GenerateRequest* r) const {
    r->clear_chat();
    if (!system_.empty()) {
      v1::ChatMessage* m = r->mutable_chat()->add_messages();
      m->set_role("system");
      m->set_content(system_);
    }
    r->mutable_chat()->mutable_messages()->MergeFrom(turns_.messages());
  }

 private:
  std::string system_;
  v1::ChatPrompt turns_;
};

struct ChatSession {
  std::string server;
  const SamplingFlags* sampling;
  v1::GenerateRequest request;
  Conversation conversation;

  // One user turn: streams the reply, dropping the oldest turns while the context is full.
  // Errors are printed; the session goes on.
  void Turn(const std::string& line) {
    conversation.Add("user", line);
    while (true) {
      conversation.Fill(&request);
      CompletionResult reply;
      interrupted = false;
      const absl::Status s = StreamCompletion(server, request,
                                              {.timeout = absl::Seconds(sampling->timeout_s),
                                               .out = stdout,
                                               .reasoning_out = stderr,
                                               .api_key = sampling->Key(),
                                               .interrupt = &interrupted},
                                              &reply);
      if (!reply.reasoning.empty()) std::fputc('\n', stderr);
      if (IsContextFull(s) && conversation.DropOldestTurn()) {
        std::fprintf(stderr, "(the conversation outgrew the context: dropped the oldest turn)\n");
        continue;
      }
      const bool stopped = s.code() == absl::StatusCode::kCancelled && interrupted.load();
      if (!reply.text.empty() || stopped) std::fputc('\n', stdout);
      if (stopped) std::fputs("[stopped]\n", stdout);
      if (s.ok() || stopped) {
        conversation.Add("assistant", reply.text);
      } else {
        PrintError(s);
        conversation.DropNewest();
      }
      return;
    }
  }

  // Returns false when the command ends the session.
  bool Command(const std::string& line) {
    if (line == "/exit" || line == "/quit" || line == "exit" || line == "quit") return false;
    if (line == "/help") {
      std::fputs(kHelp, stdout);
    } else if (line == "/reset") {
      conversation.Reset();
      std::fputs("(conversation cleared)\n", stdout);
    } else if (absl::StartsWith(line, "/system")) {
      conversation.set_system(std::string(absl::StripAsciiWhitespace(line.substr(7))));
      std::fputs("(system prompt set; conversation cleared)\n", stdout);
    } else {
      std::fprintf(stdout, "unknown command %s; /help lists them\n", line.c_str());
    }
    return true;
  }
};

bool IsCommand(const std::string& line) {
  return absl::StartsWith(line, "/") || line == "exit" || line == "quit";
}

}  // namespace

int ChatMain(int argc, char** argv) {
  CLI::App app{
      "Chats with a model served by a shardserve router, one line per turn (/help lists the "
      "commands; Ctrl-C stops a reply, Ctrl-D or /exit ends).",
      "shardserve chat"};
  std::string server, system, model;
  SamplingFlags sampling;
  sampling.max_tokens = 0;
  sampling.max_tokens_help = "tokens per reply (0: the room left in the context)";
  app.add_option("--server", server, "router gRPC address host:port")->required();
  app.add_option("--system", system, "system prompt");
  app.add_option("--model", model, "model name (default: the router's)");
  sampling.Add(app);
  if (auto rc = ParseCommandLine(app, argc, argv)) return *rc;
  if (!UseClientTls(sampling.tls)) return 2;
  if (absl::Status s = CheckServerAddress(server); !s.ok()) return FailWith(s);
  ChatSession session{server, &sampling, {}, Conversation(system)};
  session.request.set_model(model);
  sampling.Fill(&session.request);

  struct sigaction action {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);  // no SA_RESTART: a read at the prompt returns

  LineReader reader;
  while (std::optional<std::string> line = reader.Read("> ")) {
    const std::string text(absl::StripAsciiWhitespace(*line));
    if (text.empty()) continue;
    if (IsCommand(text)) {
      if (!session.Command(text)) break;
      continue;
    }
    session.Turn(text);
  }
  return 0;
}

}  // namespace shardserve
