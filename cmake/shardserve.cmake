# Target helpers: one library per module, thin binaries, one test helper with labels.
include_guard(GLOBAL)

# shardserve_cc_library(NAME name SRCS ... [HDRS ...] [DEPS ...] [COPTS ...])
function(shardserve_cc_library)
  cmake_parse_arguments(A "" "NAME" "SRCS;HDRS;DEPS;COPTS" ${ARGN})
  add_library(${A_NAME} STATIC ${A_SRCS} ${A_HDRS})
  target_include_directories(${A_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${A_NAME} PUBLIC ${A_DEPS})
  target_compile_options(${A_NAME} PRIVATE ${SHARDSERVE_WARNINGS} ${A_COPTS})
endfunction()

# ThreadSanitizer builds (scripts/tsan.sh) link every executable with the Abseil Mutex shim that
# makes absl::Mutex visible to TSan (common/tsan_absl_shim.cc).
option(SHARDSERVE_TSAN "Executables for a -fsanitize=thread build" OFF)
function(shardserve_tsan_shim target)
  if(SHARDSERVE_TSAN)
    target_sources(${target} PRIVATE ${PROJECT_SOURCE_DIR}/common/tsan_absl_shim.cc)
    target_link_libraries(${target} PRIVATE ${CMAKE_DL_LIBS})
  endif()
endfunction()

# shardserve_cc_binary(NAME name SRCS ... [DEPS ...])
function(shardserve_cc_binary)
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_include_directories(${A_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS})
  target_compile_options(${A_NAME} PRIVATE ${SHARDSERVE_WARNINGS})
  set_target_properties(${A_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
  shardserve_tsan_shim(${A_NAME})
endfunction()

# shardserve_cc_test(NAME name SRCS ... [DEPS ...] [LABELS ...])
# Tests run from the source tree root so that ../shared resolves as it does for users.
function(shardserve_cc_test)
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_include_directories(${A_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  target_compile_options(${A_NAME} PRIVATE ${SHARDSERVE_WARNINGS})
  target_compile_definitions(${A_NAME} PRIVATE
    SHARDSERVE_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    SHARDSERVE_BINARY_DIR="${PROJECT_BINARY_DIR}")
  set_target_properties(${A_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  shardserve_tsan_shim(${A_NAME})
  set(labels ${A_LABELS})
  if(NOT labels)
    set(labels unit)
  endif()
  # gtest_discover_tests takes the property value as one word: escape the list separators.
  string(REPLACE ";" "\\;" labels "${labels}")
  gtest_discover_tests(${A_NAME}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    PROPERTIES LABELS "${labels}"
    DISCOVERY_TIMEOUT 60)
endfunction()
