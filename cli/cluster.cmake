# The cluster subcommands of `shardserve` (up, complete, chat, bench), included from
# router/CMakeLists.txt so that cli/CMakeLists.txt only has to link shardserve_cli_cluster.
shardserve_cc_library(
  NAME shardserve_cli_cluster
  SRCS ${PROJECT_SOURCE_DIR}/cli/complete.cc ${PROJECT_SOURCE_DIR}/cli/up.cc
       ${PROJECT_SOURCE_DIR}/cli/bench.cc
  HDRS ${PROJECT_SOURCE_DIR}/cli/complete.h ${PROJECT_SOURCE_DIR}/cli/up.h
       ${PROJECT_SOURCE_DIR}/cli/bench.h
  DEPS shardserve_proto shardserve_common shardserve_tls shardserve_net nlohmann_json::nlohmann_json
       absl::time
       absl::strings gRPC::grpc++
)
