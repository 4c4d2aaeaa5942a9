#include "common/grpc_util.h"

#include <grpcpp/support/server_interceptor.h>

#include <atomic>
#include <mutex>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/tls.h"
#include "common/wire.h"
#include "google/protobuf/stubs/logging.h"

namespace shardserve {
namespace {

// The field protobuf last refused as not UTF-8 on this thread (the sync server parses a request
// on the thread that then runs its interceptors).
thread_local std::string last_bad_utf8_field;

google::protobuf::LogHandler* default_protobuf_log = nullptr;

void ProtobufLog(google::protobuf::LogLevel level, const char* file, int line,
                 const std::string& message) {
  // "String field 'pkg.Message.field' contains invalid UTF-8 data when parsing a protocol
  // buffer. ..."
  constexpr absl::string_view kParsing = "invalid UTF-8 data when parsing";
  if (absl::StrContains(message, kParsing)) {
    const size_t open = message.find('\'');
    const size_t close = open == std::string::npos ? open : message.find('\'', open + 1);
    last_bad_utf8_field =
        close == std::string::npos ? "a string field" : message.substr(open + 1, close - open - 1);
    return;
  }
  if (default_protobuf_log != nullptr) default_protobuf_log(level, file, line, message);
}

// gRPC may build an RPC's interceptor on one of its threads and destroy it on another; the
// handoff happens inside gRPC, which ThreadSanitizer cannot see (Debian's gRPC is not
// instrumented). The release store and acquire load on `built_` make that order visible.
class UnparsableRequest : public grpc::experimental::Interceptor {
 public:
  explicit UnparsableRequest(grpc::experimental::ServerRpcInfo* info) : info_(info) {
    built_.store(true, std::memory_order_release);
  }
  ~UnparsableRequest() override { (void)built_.load(std::memory_order_acquire); }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_RECV_MESSAGE)) {
      last_bad_utf8_field.clear();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsable_ = true;
      field_ = std::move(last_bad_utf8_field);
      last_bad_utf8_field.clear();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        unparsable_ && methods->GetSendStatus().error_code() == grpc::StatusCode::INTERNAL) {
      methods->ModifySendStatus(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          field_.empty() ? absl::StrCat("the request to ", info_->method(),
                                        " is not a valid protobuf message of its type")
                         : absl::StrCat(field_,
                                        " is not valid UTF-8 (string fields must be UTF-8; "
                                        "send raw bytes as token ids)")));
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  bool unparsable_ = false;
  std::string field_;
  std::atomic<bool> built_{false};
};

class UnparsableRequestFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new UnparsableRequest(info);
  }
};

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::ChannelArguments ClusterChannelArguments() {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return args;
}

std::shared_ptr<grpc::Channel> NewClusterChannel(const std::string& address) {
  return grpc::CreateCustomChannel(address, ProcessChannelCredentials(), ClusterChannelArguments());
}

void ReportUnparsableRequests(grpc::ServerBuilder* builder) {
  static std::once_flag once;
  std::call_once(once,
                 [] { default_protobuf_log = google::protobuf::SetLogHandler(&ProtobufLog); });
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<UnparsableRequestFactory>());
  builder->experimental().SetInterceptorCreators(std::move(factories));
}

}  // namespace shardserve
