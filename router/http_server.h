// HttpServer: the router's OpenAI-compatible HTTP API and its Prometheus /metrics, on one port.
//
//   GET  /v1/models, /v1/models/{id}
//   POST /v1/completions, /v1/chat/completions   (stream: true -> text/event-stream)
//   GET  /metrics                                 (Prometheus text, no key needed)
//   GET  /health                                  (200 while serving, 503 otherwise)
//
// Requests go through InferenceServiceImpl::Start/Next/Cancel, the path the gRPC Generate
// handler takes, so validation, routing, limits and metrics are the same for both APIs. A
// client that disconnects is noticed at the next write (a token or, when idle, a keep-alive
// every second) and its sequence is cancelled. Errors are OpenAI-style JSON bodies; a known
// route asked with another method is answered 405 with an `Allow` header (before the body is
// read or the key checked), an unknown path 404.
//
// Thread-safe. `service` and `tokenizer` must outlive the server.
#ifndef SHARDSERVE_ROUTER_HTTP_SERVER_H_
#define SHARDSERVE_ROUTER_HTTP_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "model/tokenizer/tokenizer.h"
#include "router/inference_service.h"
#include "router/metrics.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace shardserve {

struct HttpServerOptions {
  // When set, /v1/* needs "Authorization: Bearer <api_key>" (401 otherwise). The scheme is
  // case-insensitive (RFC 7235); the key is compared in constant time.
  std::string api_key;
  // Generations in flight over HTTP; more are answered 429.
  int max_in_flight = 256;
  // Connections served at once, one thread each (threads are started as connections arrive);
  // more wait, accepted, until one closes.
  int max_connections = 2048;
  // Largest request body read (413 past it); the router derives it from its prompt limits.
  int64_t max_body_bytes = int64_t{64} << 20;
};

class HttpServer {
 public:
  HttpServer(InferenceServiceImpl* service, const Tokenizer* tokenizer, RouterMetrics* metrics,
             HttpServerOptions options);
  ~HttpServer();

  // Listens on host:port (port 0 picks one) and serves on background threads.
  absl::Status Start(const std::string& address);
  void Stop();
  int port() const { return port_; }

 private:
  void Models(const httplib::Request& req, httplib::Response& res);
  // GET /v1/cluster[?history=1]: GetClusterStatus as JSON (proto field names).
  void Cluster(const httplib::Request& req, httplib::Response& res);
  void Generate(bool chat, const httplib::Request& req, httplib::Response& res);
  bool Authorized(const httplib::Request& req, httplib::Response& res) const;
  std::string RenderMetrics() const;

  InferenceServiceImpl* const service_;
  const Tokenizer* const tokenizer_;
  RouterMetrics* const metrics_;
  const HttpServerOptions options_;
  const int64_t created_;     // Unix seconds the server started: /v1/models' `created`
  std::string console_html_;  // the /console page, with whether a key is required
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  std::shared_ptr<std::atomic<int>> in_flight_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_HTTP_SERVER_H_
