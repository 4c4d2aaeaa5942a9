#include "router/http_server.h"

#include <google/protobuf/util/json_util.h>
#include <httplib.h>

#include <sys/socket.h>

#include <csignal>
#include <deque>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/cluster_auth.h"
#include "common/listen.h"
#include "common/logging.h"
#include "router/console_html.h"
#include "router/http_openai.h"

namespace shardserve {
namespace {

using json = nlohmann::json;

constexpr char kJson[] = "application/json";

void SendError(httplib::Response& res, const absl::Status& status) {
  res.status = HttpStatusFor(status);
  res.set_content(ErrorBody(status).dump(), kJson);
}

std::string SseEvent(const json& j) { return absl::StrCat("data: ", j.dump(), "\n\n"); }

// The methods a known route takes ("GET, HEAD" or "POST"), or "" for a path that is no route
// here. HEAD is answered by httplib from the GET handler.
std::string AllowedMethods(const std::string& path) {
  if (path == "/v1/models" || path == "/metrics" || path == "/health") return "GET, HEAD";
  if (absl::StartsWith(path, "/v1/models/") && path.size() > 11) return "GET, HEAD";
  if (path == "/v1/completions" || path == "/v1/chat/completions") return "POST";
  return "";
}

bool MethodAllowed(const std::string& method, const std::string& allowed) {
  if (allowed == "POST") return method == "POST";
  return method == "GET" || method == "HEAD";
}

// 405 with Allow and an OpenAI-style error body.
void SendMethodNotAllowed(const httplib::Request& req, httplib::Response& res,
                          const std::string& allowed) {
  res.status = 405;
  res.set_header("Allow", allowed);
  res.set_content(ErrorBody(absl::StrCat("method ", req.method, " is not allowed on ", req.path,
                                         "; use ", allowed),
                            "invalid_request_error", "", "method_not_allowed")
                      .dump(),
                  kJson);
}

// Before routing: a known route asked, without a body, with a method it does not take. httplib
// would otherwise wait for a POST/PUT/PATCH/DELETE body that has no Content-Length until the
// read times out (400, empty body), and has no handlers for methods such as TRACE. A request
// with a body goes on to the routes' own 405 handlers, after httplib has read the body, so
// that the connection stays usable.
httplib::Server::HandlerResponse MethodNotAllowedWithoutBody(const httplib::Request& req,
                                                             httplib::Response& res) {
  const std::string allowed = AllowedMethods(req.path);
  if (allowed.empty() || MethodAllowed(req.method, allowed)) {
    return httplib::Server::HandlerResponse::Unhandled;
  }
  const bool has_body =
      req.has_header("Transfer-Encoding") ||
      (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0");
  if (has_body) return httplib::Server::HandlerResponse::Unhandled;
  SendMethodNotAllowed(req, res, allowed);
  return httplib::Server::HandlerResponse::Handled;
}

// The credentials of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
// (RFC 7235 section 2.1) and one or more spaces may follow it. nullopt for another scheme.
std::optional<absl::string_view> BearerToken(absl::string_view header) {
  const size_t space = header.find(' ');
  if (space == absl::string_view::npos) return std::nullopt;
  if (!absl::EqualsIgnoreCase(header.substr(0, space), "bearer")) return std::nullopt;
  absl::string_view token = header.substr(space);
  while (absl::ConsumePrefix(&token, " ")) {
  }
  return token;
}

// httplib serves a connection on one pool thread for its whole keep-alive life, and its own
// ThreadPool has a fixed size, so a crowd larger than the pool waits unanswered in a queue. This
// pool starts a thread whenever a connection waits and none is idle, up to `max_threads`;
// threads stay for the next crowd (an idle one costs only its stack) and are joined at shutdown.
class ElasticThreadPool : public httplib::TaskQueue {
 public:
  explicit ElasticThreadPool(size_t max_threads) : max_threads_(max_threads) {}
  ~ElasticThreadPool() override = default;

  void enqueue(std::function<void()> fn) override {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(std::move(fn));
    if (idle_ < jobs_.size() && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { Work(); });
    }
  }

  void shutdown() override {
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      shutdown_ = true;
      threads.swap(threads_);
    }
    for (std::thread& t : threads) t.join();
  }

 private:
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !jobs_.empty() || shutdown_; }

  void Work() {
    while (true) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        ++idle_;
        mu_.Await(absl::Condition(this, &ElasticThreadPool::HasWork));
        --idle_;
        if (jobs_.empty()) return;  // shutting down with nothing left
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }

  const size_t max_threads_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

// The accept queue httplib's listen() asks for is 5, so a crowd connecting at once loses SYNs
// and waits out TCP's retransmit (1 s, 3 s, ...). Linux lets listen() be called again on a
// listening socket to change it; the kernel caps it at net.core.somaxconn.
constexpr int kListenBacklog = 4096;
// Requests one keep-alive connection may carry (httplib's default is 5, after which every
// client reconnects).
constexpr size_t kKeepAliveMaxRequests = 10000;

// Counts one HTTP generation in flight for as long as it lives.
class InFlight {
 public:
  explicit InFlight(std::shared_ptr<std::atomic<int>> counter) : counter_(std::move(counter)) {
    ++*counter_;
  }
  ~InFlight() { --*counter_; }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  std::shared_ptr<std::atomic<int>> counter_;
};

// One HTTP generation: lives in the content provider until the response is written or the
// client goes away.
struct HttpGeneration {
  InferenceServiceImpl* service;
  InferenceServiceImpl::Generation generation;
  OpenAiRequest request;
  OpenAiResponseBuilder builder;
  std::unique_ptr<InFlight> in_flight;
  bool finished = false;

  // Streams SSE events (or, non-streamed, whitespace while waiting and the JSON at the end).
  // Returns false when the client went away.
  bool Run(httplib::DataSink& sink) {
    bool first = true;
    absl::Time last_write = absl::Now();
    while (true) {
      v1::GenerateResponse delta;
      bool done = false;
      absl::Status error;
      std::string out;
      if (service->Next(generation, absl::Milliseconds(50), &delta, &done, &error) &&
          (delta.ByteSizeLong() > 0)) {
        if (request.stream) {
          out += SseEvent(builder.Chunk(delta, first));
          first = false;
          if (done && request.include_usage) out += SseEvent(builder.UsageChunk(delta.usage()));
        } else {
          builder.Add(delta);
        }
      }
      if (done) {
        finished = true;
        if (!error.ok()) {
          out += request.stream ? SseEvent(ErrorBody(error)) : ErrorBody(error).dump();
        } else if (!request.stream) {
          out += builder.Final().dump();
        }
        if (request.stream) out += "data: [DONE]\n\n";
        if (!sink.write(out.data(), out.size())) return false;
        sink.done();
        return true;
      }
      // When nothing else is written for a second, a keep-alive finds out whether the client
      // is still there: an SSE comment, or whitespace before the JSON body.
      if (out.empty() && absl::Now() - last_write > absl::Seconds(1)) {
        out = request.stream ? ": keep-alive\n\n" : " ";
      }
      if (!out.empty()) {
        if (!sink.write(out.data(), out.size())) return false;
        last_write = absl::Now();
      }
    }
  }
};

}  // namespace

HttpServer::HttpServer(InferenceServiceImpl* service, const Tokenizer* tokenizer,
                       RouterMetrics* metrics, HttpServerOptions options)
    : service_(service),
      tokenizer_(tokenizer),
      metrics_(metrics),
      options_(std::move(options)),
      created_(absl::ToUnixSeconds(absl::Now())) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start(const std::string& address) {
  auto hp = SplitHostPort(address, "--http-listen");
  if (!hp.ok()) return hp.status();
  // A client that hangs up must not kill the process on the next write.
  std::signal(SIGPIPE, SIG_IGN);
  server_ = std::make_unique<httplib::Server>();
  int listen_fd = -1;
  server_->set_socket_options([&listen_fd](int fd) {
    ExclusiveSocketOptions(fd);
    listen_fd = fd;
  });
  const size_t threads = static_cast<size_t>(options_.max_connections);
  server_->new_task_queue = [threads] { return new ElasticThreadPool(threads); };
  server_->set_keep_alive_max_count(kKeepAliveMaxRequests);
  server_->set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  server_->set_pre_routing_handler(MethodNotAllowedWithoutBody);
  server_->Get("/v1/models",
               [this](const httplib::Request& q, httplib::Response& r) { Models(q, r); });
  server_->Get(R"(/v1/models/(.+))",
               [this](const httplib::Request& q, httplib::Response& r) { Models(q, r); });
  server_->Post("/v1/completions",
                [this](const httplib::Request& q, httplib::Response& r) { Generate(false, q, r); });
  server_->Post("/v1/chat/completions",
                [this](const httplib::Request& q, httplib::Response& r) { Generate(true, q, r); });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
    r.set_content(RenderMetrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    r.status = service_->serving() ? 200 : 503;
  });
  server_->Get("/v1/cluster",
               [this](const httplib::Request& q, httplib::Response& r) { Cluster(q, r); });
  // The console page holds no data: it asks /v1/cluster, with the key the user types.
  // It says whether a key is needed, so that it asks for one before its first request.
  console_html_ = absl::StrReplaceAll(
      kConsoleHtml, {{"content=\"KEY_REQUIRED\"",
                      options_.api_key.empty() ? "content=\"false\"" : "content=\"true\""}});
  server_->Get("/console", [this](const httplib::Request&, httplib::Response& r) {
    r.set_header("Cache-Control", "no-cache");
    r.set_header("Content-Security-Policy",
                 "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                 "img-src data:");
    r.set_content(console_html_, "text/html; charset=utf-8");
  });
  // Every other method httplib routes, on every route above: 405 with Allow.
  for (const char* path :
       {"/v1/models", R"(/v1/models/(.+))", "/metrics", "/health", "/v1/cluster", "/console"}) {
    const auto not_allowed = [](const httplib::Request& q, httplib::Response& r) {
      SendMethodNotAllowed(q, r, "GET, HEAD");
    };
    server_->Post(path, not_allowed)
        .Put(path, not_allowed)
        .Patch(path, not_allowed)
        .Delete(path, not_allowed)
        .Options(path, not_allowed);
  }
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    const auto not_allowed = [](const httplib::Request& q, httplib::Response& r) {
      SendMethodNotAllowed(q, r, "POST");
    };
    // GET handlers also answer HEAD.
    server_->Get(path, not_allowed)
        .Put(path, not_allowed)
        .Patch(path, not_allowed)
        .Delete(path, not_allowed)
        .Options(path, not_allowed);
  }
  server_->set_error_handler([](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    if (r.status == 404) {
      SendError(r, absl::NotFoundError(absl::StrCat("no route for ", q.method, " ", q.path)));
    }
  });
  if (hp->second == 0) {
    port_ = server_->bind_to_any_port(hp->first);
  } else {
    port_ = server_->bind_to_port(hp->first, hp->second) ? hp->second : -1;
  }
  if (port_ <= 0) return CannotListen("--http-listen", address);
  if (listen_fd < 0 || ::listen(listen_fd, kListenBacklog) != 0) {
    LOG(WARNING) << "--http-listen: could not raise the accept queue to " << kListenBacklog
                 << "; a crowd of new connections may wait for TCP retransmits";
  }
  server_->set_socket_options(ExclusiveSocketOptions);
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (server_ == nullptr) return;
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

std::string HttpServer::RenderMetrics() const {
  std::vector<ReplicaGauges> gauges;
  for (Replica* r : service_->replicas()) gauges.push_back(r->Gauges());
  return metrics_ == nullptr ? "" : metrics_->Render(service_->model_name(), gauges);
}

bool HttpServer::Authorized(const httplib::Request& req, httplib::Response& res) const {
  if (options_.api_key.empty()) return true;
  const std::string header = req.get_header_value("Authorization");
  const std::optional<absl::string_view> token = BearerToken(header);
  if (token.has_value() && ConstantTimeEquals(*token, options_.api_key)) return true;
  SendError(res, absl::UnauthenticatedError(
                     header.empty() ? "missing API key: send Authorization: Bearer <key>"
                                    : "invalid API key"));
  return false;
}

void HttpServer::Cluster(const httplib::Request& req, httplib::Response& res) {
  if (!Authorized(req, res)) return;
  v1::GetClusterStatusRequest request;
  const std::string history = req.get_param_value("history");
  request.set_history(history == "1" || history == "true");
  v1::GetClusterStatusResponse status;
  const grpc::Status s = service_->GetClusterStatus(nullptr, &request, &status);
  if (!s.ok()) {
    SendError(res, absl::UnavailableError(s.error_message()));
    return;
  }
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string body;
  if (!google::protobuf::util::MessageToJsonString(status, &body, options).ok()) {
    SendError(res, absl::InternalError("cannot write the cluster status as JSON"));
    return;
  }
  res.set_header("Cache-Control", "no-store");
  res.set_content(body, kJson);
}

void HttpServer::Models(const httplib::Request& req, httplib::Response& res) {
  if (!Authorized(req, res)) return;
  v1::ListModelsResponse models;
  service_->ListModels(nullptr, nullptr, &models);
  json data = json::array();
  for (const v1::ModelSummary& m : models.models()) {
    json model = {{"id", m.name()},
                  {"object", "model"},
                  {"created", created_},
                  {"owned_by", "shardserve"},
                  {"max_model_len", m.context_length()}};
    if (req.matches.size() > 1) {
      if (req.matches[1] != m.name()) continue;
      res.set_content(model.dump(), kJson);
      return;
    }
    data.push_back(model);
  }
  if (req.matches.size() > 1) {
    SendError(res, absl::NotFoundError(
                       absl::StrCat("model: '", req.matches[1].str(), "' is not served here")));
    return;
  }
  res.set_content(json{{"object", "list"}, {"data", data}}.dump(), kJson);
}

void HttpServer::Generate(bool chat, const httplib::Request& req, httplib::Response& res) {
  if (!Authorized(req, res)) return;
  auto in_flight = std::make_unique<InFlight>(in_flight_);
  if (*in_flight_ > options_.max_in_flight) {
    SendError(res, absl::ResourceExhaustedError(
                       absl::StrCat("more than ", options_.max_in_flight,
                                    " requests in flight over HTTP; retry later")));
    return;
  }
  auto parsed =
      ParseOpenAiRequest(chat ? OpenAiEndpoint::kChat : OpenAiEndpoint::kCompletions, req.body);
  if (!parsed.ok()) return SendError(res, parsed.status());
  auto started = service_->Start(parsed->generate);
  if (!started.ok()) return SendError(res, started.status());

  const std::string id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", started->request_id);
  auto state = std::make_shared<HttpGeneration>(
      HttpGeneration{service_, std::move(*started), *parsed,
                     OpenAiResponseBuilder(*parsed, id, service_->model_name(),
                                           absl::ToUnixSeconds(absl::Now()), tokenizer_),
                     std::move(in_flight)});
  const bool stream = parsed->stream;
  if (stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
  }
  res.set_chunked_content_provider(
      stream ? "text/event-stream" : kJson,
      [state](size_t, httplib::DataSink& sink) { return state->Run(sink); },
      [state](bool) {
        if (!state->finished) {
          state->service->Cancel(state->generation);
          state->finished = true;
        }
        state->in_flight.reset();
      });
}

}  // namespace shardserve
