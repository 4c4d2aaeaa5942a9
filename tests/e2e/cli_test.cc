// The shardserve command against real processes: `up` streams a completion and exits 0, `up`
// rejects a missing model in one line, fails fast with the tensor error on a truncated model and
// serves with 16 workers, `complete --json` prints the reference output as one object, and
// `chat` holds a conversation read from stdin.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

namespace fs = std::filesystem;

int LineCount(const std::string& s) {
  std::vector<std::string> lines = absl::StrSplit(s, '\n', absl::SkipEmpty());
  return static_cast<int>(lines.size());
}

// The build tree (BinPath is <build>/bin/<name>).
fs::path BuildDir() { return fs::path(BinPath("shardserve")).parent_path().parent_path(); }

// tiny-llama-8l's shape with 16 layers, written once per build tree.
std::string Synthetic16Layer() {
  const fs::path dir = BuildDir() / "test-models" / "tiny-llama-16l";
  if (fs::exists(dir / "config.json")) return dir.string();
  auto config = nlohmann::json::parse(
      std::ifstream(fs::path(SyntheticModel("tiny-llama-8l")) / "config.json"), nullptr, false);
  if (config.is_discarded()) return dir.string();
  config["num_hidden_layers"] = 16;
  const std::string tmp = absl::StrCat(dir.string(), ".tmp", getpid());
  const std::string config_path = tmp + ".json";
  std::ofstream(config_path) << config.dump(2);
  CommandResult r = RunCommand({BinPath("shardserve"), "synth", "--config", config_path, "--dtype",
                                "f32", "--seed", "7", "--out", tmp},
                               "", absl::Seconds(60));
  std::error_code ec;
  // Tests running in parallel may race to write it: the first rename wins.
  if (r.exit_code == 0) fs::rename(tmp, dir, ec);
  fs::remove_all(tmp, ec);
  fs::remove(config_path, ec);
  return dir.string();
}

// Held while a test starts many processes or times how fast `up` fails: the two must not overlap
// (16 workers starting at once would slow the other's start past its bound on a small machine).
// An exclusive flock on a file of the build tree, so it holds across test processes (ctest -j).
class StartupLock {
 public:
  StartupLock() {
    const fs::path path = BuildDir() / "test-tmp" / "up-startup.lock";
    fs::create_directories(path.parent_path());
    fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ >= 0) flock(fd_, LOCK_EX);
  }
  ~StartupLock() {
    if (fd_ >= 0) close(fd_);  // releases the lock
  }
  StartupLock(const StartupLock&) = delete;
  StartupLock& operator=(const StartupLock&) = delete;

 private:
  int fd_ = -1;
};

// The folder `up` printed as "logs:  DIR", or "".
// A "name: value" line of the banner `up` prints once the cluster serves.
std::string UpBannerField(const std::string& err, absl::string_view name) {
  for (absl::string_view line : absl::StrSplit(err, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, name) && absl::ConsumePrefix(&line, ":")) {
      return std::string(absl::StripAsciiWhitespace(line));
    }
  }
  return "";
}
std::string UpLogFolder(const std::string& err) { return UpBannerField(err, "logs"); }

TEST(Up, StreamsThePromptsCompletionAndExitsZero) {
  const std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "up", "--workers", "2", "--threads", "1", "--model", Stories260K(),
       "--listen", listen, "--prompt", "Once upon a time", "--max-tokens", "24"},
      "", absl::Seconds(90));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), std::string("Once upon a time").size() + 10) << r.out;
  EXPECT_NE(r.err.find(listen), std::string::npos) << r.err;
  // The cluster is gone: nothing answers on its address any more.
  EXPECT_FALSE(HealthServing(listen, absl::Milliseconds(500)));
}

// The banner shows every address (gRPC, HTTP, each worker and its /metrics); flags after `--`
// reach the router; --api-key keys it (and up's own prompt sends the key); the log folder goes at
// a clean stop unless --keep-logs.
TEST(Up, ShowsEveryAddressPassesRouterFlagsAndKeysTheRouter) {
  StartupLock lock;
  const std::string logs = (BuildDir() / "test-tmp" / absl::StrCat("up-logs-", getpid())).string();
  fs::remove_all(logs);
  CommandResult r = RunCommand({BinPath("shardserve"),
                                "up",
                                "--workers",
                                "2",
                                "--threads",
                                "1",
                                "--model",
                                Stories260K(),
                                "--listen",
                                "127.0.0.1:0",
                                "--http-listen",
                                "127.0.0.1:0",
                                "--api-key",
                                "k-123",
                                "--log-dir",
                                logs,
                                "--prompt",
                                "Once upon a time",
                                "--max-tokens",
                                "8",
                                "--",
                                "--max-seqs",
                                "3",
                                "--served-model-name",
                                "up-model"},
                               "", absl::Seconds(90));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string http = UpBannerField(r.err, "HTTP");
  EXPECT_TRUE(absl::StartsWith(http, "http://127.0.0.1:") && !absl::StrContains(http, ":0 "))
      << r.err;
  for (int i = 0; i < 2; ++i) {
    const std::string worker = UpBannerField(r.err, absl::StrCat("worker ", i));
    EXPECT_TRUE(absl::StartsWith(worker, "127.0.0.1:")) << r.err;
    EXPECT_TRUE(absl::StrContains(worker, "/metrics")) << r.err;
  }
  EXPECT_TRUE(absl::StrContains(r.err, "2 workers")) << r.err;
  // The named log folder stays; the router got the flags after `--` and the key.
  std::ifstream router_log(fs::path(logs) / "router.log");
  const std::string router_text((std::istreambuf_iterator<char>(router_log)),
                                std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(router_text, "up-model")) << router_text;
  EXPECT_FALSE(fs::exists(fs::path(logs) / "cluster-secret"));

  // Without --log-dir or --keep-logs, a clean stop removes the folder; one worker is "1 worker".
  CommandResult plain = RunCommand(
      {BinPath("shardserve"), "up", "--workers", "1", "--threads", "1", "--model", Stories260K(),
       "--listen", "127.0.0.1:0", "--prompt", "Once", "--max-tokens", "4"},
      "", absl::Seconds(90));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_TRUE(absl::StrContains(plain.err, "1 worker\n")) << plain.err;
  const std::string temp_logs = UpLogFolder(plain.err);
  ASSERT_FALSE(temp_logs.empty()) << plain.err;
  EXPECT_FALSE(fs::exists(temp_logs)) << temp_logs;
}

TEST(Up, MoreWorkersThanLayersIsUpsOwnError) {
  CommandResult r = RunCommand({BinPath("shardserve"), "up", "--workers", "6", "--model",
                                Stories260K(), "--listen", "127.0.0.1:0", "--prompt", "Hi"},
                               "", absl::Seconds(30));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(LineCount(r.err), 1) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "--workers 6")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "at most 5 workers")) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "--stages")) << r.err;
}

TEST(Up, MissingModelIsOneLineError) {
  const std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand({BinPath("shardserve"), "up", "--model", "/nonexistent/model",
                                "--listen", listen, "--prompt", "Hi"},
                               "", absl::Seconds(30));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(LineCount(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(Up, UpOnATruncatedModelFailsFastWithTheTensorError) {
  // A copy of a synthetic model whose model.safetensors keeps its header but loses its data.
  const fs::path model = BuildDir() / "test-tmp" / absl::StrCat("truncated-model-", getpid());
  std::error_code ec;
  fs::remove_all(model, ec);
  fs::create_directories(model.parent_path());
  fs::copy(SyntheticModel("tiny-llama-8l"), model, fs::copy_options::recursive);
  const fs::path weights = model / "model.safetensors";
  uint64_t header_bytes = 0;
  {
    std::ifstream in(weights, std::ios::binary);
    ASSERT_TRUE(in.read(reinterpret_cast<char*>(&header_bytes), 8)) << weights;  // little-endian
  }
  ASSERT_LT(8 + header_bytes + 64, fs::file_size(weights));
  fs::resize_file(weights, 8 + header_bytes + 64);

  const std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  StartupLock lock;
  // One worker: fewer processes to start on a busy machine, the same failure.
  const absl::Time start = absl::Now();
  CommandResult r =
      RunCommand({BinPath("shardserve"), "up", "--workers", "1", "--threads", "1", "--model",
                  model.string(), "--listen", listen, "--prompt", "hi", "--max-tokens", "4"},
                 "", absl::Seconds(20));
  const absl::Duration took = absl::Now() - start;
  fs::remove_all(model, ec);
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_NE(r.exit_code, -1) << "killed after 20 s: " << r.err;
  EXPECT_LT(took, absl::Seconds(10)) << r.err;
  // The router's report of the stage that cannot load, with the reader's error.
  EXPECT_TRUE(absl::StrContains(r.err, "cannot load its shard")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "model.safetensors")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "run past the end of the data")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "shardserve up: router: ")) << r.err;
  // Every child was stopped: nothing answers on the router's address.
  EXPECT_FALSE(HealthServing(listen, absl::Milliseconds(500)));
}

// Another shardserve server (here a worker, which answers health) already holds --listen: `up`
// reports that its router cannot listen there, and never takes the stranger for its cluster.
TEST(Up, ATakenListenPortIsTheRoutersErrorNotAnotherServer) {
  const std::string port_file = (BuildDir() / "test-logs" / "up-taken.port").string();
  fs::create_directories(fs::path(port_file).parent_path());
  fs::remove(port_file);
  Process holder({BinPath("shardserve-worker"), "--listen", "127.0.0.1:0", "--port-file", port_file,
                  "--cluster-secret-file", ClusterSecretFile()},
                 (BuildDir() / "test-logs" / "up-taken-worker.log").string());
  const int port = WaitPortFile(port_file, holder);
  ASSERT_GT(port, 0);
  const std::string listen = absl::StrCat("127.0.0.1:", port);
  // The holder answers health on the port, so a check on the address alone would pass.
  ASSERT_TRUE(HealthServing(listen, absl::Seconds(5)));
  StartupLock lock;
  CommandResult r =
      RunCommand({BinPath("shardserve"), "up", "--workers", "1", "--threads", "1", "--model",
                  Stories260K(), "--listen", listen, "--prompt", "hi", "--max-tokens", "4"},
                 "", absl::Seconds(60));
  EXPECT_GT(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, absl::StrCat("cannot listen on port ", port))) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "shardserve is up")) << r.err;
  EXPECT_TRUE(holder.alive());
}

TEST(Up, UpWithSixteenWorkersServes) {
  const std::string model = Synthetic16Layer();
  ASSERT_TRUE(fs::exists(fs::path(model) / "config.json")) << model;
  StartupLock lock;
  // Port 0: the router binds a free port and `up` learns it from the router's --port-file, so no
  // other process can hold the port between choosing it and binding it.
  CommandResult r = RunCommand({BinPath("shardserve"), "up", "--workers", "16", "--threads", "1",
                                "--model", model, "--listen", "127.0.0.1:0", "--prompt", "Once",
                                "--max-tokens", "8", "--temperature", "0", "--keep-logs"},
                               "", absl::Seconds(120));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), std::string("Once\n").size()) << r.out;
  EXPECT_TRUE(absl::StrContains(r.err, "16 workers")) << r.err;
  const std::string address = UpBannerField(r.err, "gRPC");
  EXPECT_TRUE(absl::StartsWith(address, "127.0.0.1:") && !absl::EndsWith(address, ":0")) << r.err;
  // Each worker, and the router, reported the port it bound; the cluster secret went with the
  // cluster.
  const std::string logs = UpLogFolder(r.err);
  ASSERT_FALSE(logs.empty()) << r.err;
  for (int i = 0; i < 16; ++i) {
    EXPECT_TRUE(fs::exists(fs::path(logs) / absl::StrCat("worker-", i, ".port"))) << logs;
  }
  EXPECT_TRUE(fs::exists(fs::path(logs) / "router.port")) << logs;
  // The workers load only the model folder `up` was started with.
  std::ifstream worker_log(fs::path(logs) / "worker-0.log");
  const std::string worker_text((std::istreambuf_iterator<char>(worker_log)),
                                std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(worker_text, "only from inside --model-root " + model))
      << worker_text;
  EXPECT_FALSE(fs::exists(fs::path(logs) / "cluster-secret")) << logs;
  EXPECT_FALSE(HealthServing(address, absl::Milliseconds(500)));
}

// The parameters of a safetensors file by dtype, read from its header here (8-byte length, then
// JSON), independently of the model loader.
std::map<std::string, int64_t> SafetensorsParams(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  std::map<std::string, int64_t> out;
  const nlohmann::json tensors = nlohmann::json::parse(header);
  for (const auto& [name, t] : tensors.items()) {
    if (name == "__metadata__") continue;
    int64_t numel = 1;
    for (int64_t d : t["shape"]) numel *= d;
    out[t["dtype"].get<std::string>()] += numel;
  }
  return out;
}

// `inspect` shows what config.json, the weights' headers and the tokenizer files say, for a
// folder and for the same model as GGUF; the chat template's family; and errors like every
// other command (one line, exit 2 for usage, 1 for an unreadable model). `inspect tokenize`
// has its own --help.
TEST(Inspect, MetadataOfAFolderAndOfTheSameModelAsGguf) {
  CommandResult r =
      RunCommand({BinPath("shardserve"), "inspect", "--model", Stories260K(), "--json"}, "",
                 absl::Seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto folder = nlohmann::json::parse(r.out);
  const auto config = nlohmann::json::parse(std::ifstream(fs::path(Stories260K()) / "config.json"));
  EXPECT_EQ(folder["format"], "safetensors");
  EXPECT_EQ(folder["architecture"], config["model_type"]);
  EXPECT_EQ(folder["layers"], config["num_hidden_layers"]);
  EXPECT_EQ(folder["hidden_size"], config["hidden_size"]);
  EXPECT_EQ(folder["attention_heads"], config["num_attention_heads"]);
  EXPECT_EQ(folder["kv_heads"], config["num_key_value_heads"]);
  EXPECT_EQ(folder["context"], config["max_position_embeddings"]);
  EXPECT_EQ(folder["vocab_size"], config["vocab_size"]);
  const auto params = SafetensorsParams((fs::path(Stories260K()) / "model.safetensors").string());
  const auto by_dtype = folder["parameters_by_dtype"].get<std::map<std::string, int64_t>>();
  EXPECT_EQ(by_dtype, params);
  int64_t total = 0;
  for (const auto& [_, n] : params) total += n;
  EXPECT_EQ(folder["parameters"], total);
  EXPECT_EQ(folder["tokenizer"]["vocab_size"], 512);
  EXPECT_EQ(folder["tokenizer"]["bos"], "<s>");
  EXPECT_EQ(folder["tokenizer"]["eos"], nlohmann::json::array({"</s>"}));
  EXPECT_TRUE(folder["chat_template"]["family"].is_null()) << folder.dump();

  const std::string gguf = (fs::path(Stories260K()) / "stories260K.gguf").string();
  r = RunCommand({BinPath("shardserve"), "inspect", "--model", gguf, "--json"}, "",
                 absl::Seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto file = nlohmann::json::parse(r.out);
  EXPECT_EQ(file["format"], "gguf");
  for (const char* key : {"architecture", "layers", "hidden_size", "attention_heads", "kv_heads",
                          "head_dim", "context", "vocab_size"}) {
    EXPECT_EQ(file[key], folder[key]) << key;
  }
  EXPECT_EQ(file["tokenizer"]["vocab_size"], 512);
  // The GGUF stores the output projection that the folder ties to the embedding.
  const int64_t untied =
      file["tie_word_embeddings"].get<bool>()
          ? 0
          : config["vocab_size"].get<int64_t>() * config["hidden_size"].get<int64_t>();
  EXPECT_EQ(file["parameters"].get<int64_t>(), total + untied);
  EXPECT_EQ(file["parameters_by_dtype"]["F32"].get<int64_t>(), total + untied);

  // Human output: one row per fact.
  r = RunCommand({BinPath("shardserve"), "inspect", "--model", Stories260K()}, "",
                 absl::Seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "layers         5\n")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, absl::StrCat("F32 ", "260,032"))) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "chat template  none")) << r.out;

  // The same folder with a ChatML template in tokenizer_config.json.
  const fs::path chat = BuildDir() / absl::StrCat("inspect-chatml-", getpid());
  fs::remove_all(chat);
  fs::create_directories(chat);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) {
    fs::copy_file(fs::path(Stories260K()) / f, chat / f);
  }
  auto tokenizer_config =
      nlohmann::json::parse(std::ifstream(fs::path(Stories260K()) / "tokenizer_config.json"));
  tokenizer_config["chat_template"] =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}";
  std::ofstream(chat / "tokenizer_config.json") << tokenizer_config.dump();
  r = RunCommand({BinPath("shardserve"), "inspect", "--model", chat.string(), "--json"}, "",
                 absl::Seconds(30));
  fs::remove_all(chat);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["chat_template"]["family"], "chatml") << r.out;

  struct Case {
    std::vector<std::string> argv;
    int code;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {{"inspect"}, 2, "--model is required"},
           {{"inspect", "--model", "/nonexistent"}, 1, "--model /nonexistent: not a model folder"},
           {{"inspect", "--model", "/tmp"}, 1, "no config.json"},
           {{"inspect", "--modle", Stories260K()}, 2, "did you mean --model?"},
           {{"inspect", "tokenize", "--model", Stories260K(), "--txt", "x"},
            2,
            "did you mean --text?"},
           {{"inspect", "tokenize", "--model", "/nonexistent", "--text", "x"},
            1,
            "cannot load a tokenizer"}}) {
    std::vector<std::string> argv = {BinPath("shardserve")};
    argv.insert(argv.end(), c.argv.begin(), c.argv.end());
    r = RunCommand(argv, "", absl::Seconds(30));
    EXPECT_EQ(r.exit_code, c.code) << c.argv.back() << ": " << r.err;
    EXPECT_EQ(LineCount(r.err), 1) << r.err;
    EXPECT_TRUE(absl::StartsWith(r.err, "error: ")) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.says)) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  r = RunCommand({BinPath("shardserve"), "inspect", "tokenize", "--help"}, "", absl::Seconds(30));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "--text")) << r.out;
  r = RunCommand({BinPath("shardserve"), "inspect", "--help"}, "", absl::Seconds(30));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "inspect tokenize")) << r.out;
}

// `inspect tokenize` against the tokenizers' own ids: a model folder with BOS, and a vocab-only
// GGUF without.
TEST(Inspect, TokenizeShowsIdsAndPieces) {
  CommandResult r = RunCommand({BinPath("shardserve"), "inspect", "tokenize", "--model",
                                Stories260K(), "--text", "Once upon a time", "--json"},
                               "", absl::Seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("ids").get<std::vector<int>>(), (std::vector<int>{1, 403, 407, 261, 378}));
  EXPECT_EQ(j.at("pieces")[0], "<s>");
  EXPECT_EQ(j.at("pieces")[1], "\xE2\x96\x81Once");
  const std::string vocab = (fs::path(Stories260K()).parent_path().parent_path() / "tokenizers" /
                             "ggml-vocab-llama-spm.gguf")
                                .string();
  r = RunCommand({BinPath("shardserve"), "inspect", "tokenize", "--model", vocab,
                  "--text=Hello world", "--no-bos", "--json"},
                 "", absl::Seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("ids").get<std::vector<int>>(), (std::vector<int>{15043, 3186}));
  EXPECT_EQ(j.at("pieces").size(), 2u);
}

// `shardserve status` against a 2-stage cluster: every stage with its worker, layers and health;
// after SIGKILL of a worker its stage reads unreachable and a failover event is listed, within
// a few seconds (the router polls its workers once a second).
TEST(Status, ShowsStagesAndAWorkersLossAsAFailover) {
  Cluster cluster({.model = Stories260K(), .stages = 2});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto status = [&](bool json) {
    std::vector<std::string> argv = {BinPath("shardserve"), "status", "--server",
                                     cluster.router_address()};
    if (json) argv.push_back("--json");
    return RunCommand(argv, "", absl::Seconds(30));
  };
  // The first poll after the pipeline became ready shows it whole.
  CommandResult r;
  nlohmann::json got;
  auto whole = [&] {
    return got["pipelines"].size() == 1 && got["pipelines"][0]["ready"] == true &&
           got["pipelines"][0]["stages"].size() == 2 &&
           got["pipelines"][0]["stages"][1]["healthy"] == true;
  };
  for (const absl::Time give_up = absl::Now() + absl::Seconds(30); absl::Now() < give_up;
       absl::SleepFor(absl::Milliseconds(200))) {
    r = status(true);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    got = nlohmann::json::parse(r.out);
    if (whole()) break;
  }
  ASSERT_EQ(got["pipelines"].size(), 1u) << r.out;
  const auto& stages = got["pipelines"][0]["stages"];
  ASSERT_EQ(stages.size(), 2u) << r.out;
  EXPECT_EQ(stages[0]["layers"], "0-2");
  EXPECT_EQ(stages[1]["layers"], "3-4");
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(stages[i]["address"], cluster.worker_addresses()[i]);
    EXPECT_EQ(stages[i]["health"], "serving") << r.out;
    EXPECT_EQ(stages[i]["backend"], "cpu") << r.out;
    EXPECT_EQ(stages[i]["lease_owner"], "this router") << r.out;
  }
  EXPECT_TRUE(std::any_of(got["events"].begin(), got["events"].end(), [](const nlohmann::json& e) {
    return e["kind"] == "pipeline_ready";
  })) << r.out;

  r = status(false);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "pipeline 0: ready")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, cluster.worker_addresses()[1])) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, " 3-4 ")) << r.out;

  cluster.KillWorker(1);
  const absl::Time killed = absl::Now();
  bool lost = false, failover = false;
  while (!(lost && failover) && absl::Now() < killed + absl::Seconds(30)) {
    absl::SleepFor(absl::Milliseconds(200));
    r = status(false);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    lost = absl::StrContains(r.out, "unreachable");
    failover = absl::StrContains(r.out, " failover ");
  }
  const absl::Duration took = absl::Now() - killed;
  EXPECT_TRUE(lost) << r.out;
  EXPECT_TRUE(failover) << r.out;
  EXPECT_LT(took, absl::Seconds(5)) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "pipeline 0: down")) << r.out;

  // A router that is not there, and the HTTP port given for the gRPC one, are named.
  r = RunCommand({BinPath("shardserve"), "status", "--server", "127.0.0.1:1"}, "",
                 absl::Seconds(30));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(LineCount(r.err), 1) << r.err;
  EXPECT_TRUE(absl::StartsWith(r.err, "error: ")) << r.err;
}

// Every binary prints its version and build with --version, and a misspelt flag is one line
// naming it with the closest real flag, exit status 2, in every command.
TEST(Cli, VersionAndMisspeltFlagsAreAnsweredAlikeEverywhere) {
  for (const std::vector<std::string>& argv :
       {std::vector<std::string>{BinPath("shardserve"), "--version"},
        {BinPath("shardserve"), "complete", "--version"},
        {BinPath("shardserve-router"), "--version"},
        {BinPath("shardserve-worker"), "--version"}}) {
    CommandResult r = RunCommand(argv, "", absl::Seconds(30));
    EXPECT_EQ(r.exit_code, 0) << argv[0] << r.err;
    EXPECT_TRUE(absl::StartsWith(r.out, "shardserve ")) << r.out;
    EXPECT_TRUE(absl::StrContains(r.out, "commit ")) << r.out;
    EXPECT_TRUE(absl::StrContains(r.out, "CUDA ")) << r.out;
  }
  struct Case {
    std::vector<std::string> argv;
    std::string want;
  };
  for (const Case& c : std::vector<Case>{
           {{BinPath("shardserve"), "complete", "--server", "x:1", "--promt", "hi"}, "--prompt"},
           {{BinPath("shardserve"), "generate", "--model", Stories260K(), "--max-token", "3"},
            "--max-tokens"},
           {{BinPath("shardserve"), "bench", "--server", "x:1", "--concurency", "2"},
            "--concurrency"},
           {{BinPath("shardserve-router"), "--workerz", "a", "--model", "m"}, "--workers"},
           {{BinPath("shardserve-worker"), "--lisen", "x:1"}, "--listen"}}) {
    CommandResult r = RunCommand(c.argv, "", absl::Seconds(30));
    EXPECT_EQ(r.exit_code, 2) << c.argv[1] << ": " << r.err;
    EXPECT_EQ(LineCount(r.err), 1) << r.err;
    EXPECT_TRUE(absl::StartsWith(r.err, "error: unknown flag ")) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "did you mean " + c.want + "?")) << r.err;
  }
}

class Client : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    http_port_ = FreePort();
    cluster_ = new Cluster({.model = Stories260K(),
                            .stages = 2,
                            .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http_port_),
                                            "--served-model-name", "tiny-stories"}});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() { delete cluster_; }
  static Cluster* cluster_;
  static int http_port_;

  static CommandResult Complete(std::vector<std::string> args) {
    std::vector<std::string> argv = {
        BinPath("shardserve"), "complete",     "--server", cluster_->router_address(), "--prompt",
        "Once upon a time",    "--max-tokens", "24"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, "", absl::Seconds(60));
  }
};
Cluster* Client::cluster_ = nullptr;
int Client::http_port_ = 0;

TEST_F(Client, UnseededCompletionsDifferAndTheSeedShownReplaysOne) {
  auto run = [](std::vector<std::string> args) {
    args.insert(args.end(), {"--temperature", "1", "--json"});
    CommandResult r = Complete(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out, nullptr, false);
  };
  const nlohmann::json a = run({}), b = run({});
  ASSERT_TRUE(a.contains("seed") && b.contains("seed")) << a << b;
  EXPECT_NE(a["seed"], b["seed"]);
  EXPECT_NE(a["text"], b["text"]);
  const nlohmann::json replay = run({"--seed", std::to_string(a["seed"].get<uint64_t>())});
  EXPECT_EQ(replay["text"], a["text"]);
  EXPECT_EQ(replay["seed"], a["seed"]);
}

TEST_F(Client, ServedModelNameIsTheNameInTheApi) {
  CommandResult ok = Complete({"--model", "tiny-stories", "--temperature", "0"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  CommandResult folder = Complete({"--model", "stories260K"});
  EXPECT_EQ(folder.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(folder.err, "this router serves 'tiny-stories'")) << folder.err;
  grpc::ClientContext context;
  v1::ListModelsResponse models;
  ASSERT_TRUE(cluster_->Stub()->ListModels(&context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).name(), "tiny-stories");
}

TEST_F(Client, CompleteAtTheHttpPortOrAUrlSaysWhatToGive) {
  const std::string http = absl::StrCat("127.0.0.1:", http_port_);
  for (const std::string& server : {http, "http://" + http}) {
    CommandResult r = RunCommand({BinPath("shardserve"), "complete", "--server", server, "--prompt",
                                  "Hi", "--timeout-s", "10"},
                                 "", absl::Seconds(30));
    EXPECT_EQ(r.exit_code, 2) << server;
    EXPECT_EQ(LineCount(r.err), 1) << r.err;
    EXPECT_TRUE(absl::StartsWith(r.err, "error: ")) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "--listen")) << "names the gRPC port's flag: " << r.err;
    EXPECT_EQ(r.out, "") << "no empty line before the error";
  }
}

TEST_F(Client, CompleteJsonMatchesGenerate) {
  auto ref = RunGenerate(Stories260K(), "The little dog", 20, 0.0f, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "complete", "--server", cluster_->router_address(), "--prompt",
       "The little dog", "--max-tokens", "20", "--temperature", "0", "--json"},
      "", absl::Seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(LineCount(r.out), 1) << r.out;
  auto json = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << r.out;
  EXPECT_EQ(json["ids"].get<std::vector<int32_t>>(), ref->ids);
  EXPECT_EQ(json["text"].get<std::string>(), ref->text);
  const std::string finish = json["finish_reason"].get<std::string>();
  EXPECT_TRUE(finish == "length" || finish == "stop") << finish;
  EXPECT_EQ(json["usage"]["completion_tokens"].get<int64_t>(),
            static_cast<int64_t>(ref->ids.size()));
  EXPECT_GT(json["usage"]["prompt_tokens"].get<int64_t>(), 0);
}

TEST_F(Client, CompleteAgainstNothingIsOneLineError) {
  const std::string dead = "127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "complete", "--server", dead, "--prompt", "Hi", "--timeout-s", "3"},
      "", absl::Seconds(30));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(LineCount(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
}

TEST_F(Client, ChatAnswersEachLineFromStdin) {
  CommandResult r =
      RunCommand({BinPath("shardserve"), "chat", "--server", cluster_->router_address(),
                  "--max-tokens", "12", "--temperature", "0", "--system", "You tell stories."},
                 "Tell me about a cat.\nAnd a dog?\n/exit\n", absl::Seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Three prompts: one per turn and one before /exit; each answer ends its own line.
  std::vector<std::string> turns = absl::StrSplit(r.out, "> ");
  ASSERT_EQ(turns.size(), 4u) << r.out;
  EXPECT_TRUE(turns[0].empty()) << r.out;
  for (int i = 1; i <= 2; ++i) {
    EXPECT_GT(turns[i].size(), 1u) << "turn " << i << ": " << r.out;
    EXPECT_EQ(turns[i].back(), '\n') << "turn " << i << ": " << r.out;
  }
  EXPECT_TRUE(turns[3].empty()) << r.out;
}

TEST_F(Client, ChatEndsAtEndOfInput) {
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "chat", "--server", cluster_->router_address(), "--max-tokens", "4"},
      "Hello\n", absl::Seconds(60));
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace shardserve::e2e
