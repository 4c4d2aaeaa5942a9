# Optional CUDA support. Included once from the top-level CMakeLists.txt. Where a CUDA compiler,
# cuBLASLt and NCCL are found this enables the CUDA language and sets
#   SHARDSERVE_CUDA      ON
#   SHARDSERVE_NCCL_LIB  path of libnccl
#   SHARDSERVE_NCCL_INCLUDE_DIR
# and every target linking shardserve_kernels_cuda sees the compile definition SHARDSERVE_HAS_CUDA.
# Without a toolkit the CPU build is complete and nothing here fails the configure.
include_guard(GLOBAL)
include(CheckLanguage)

option(SHARDSERVE_ENABLE_CUDA "Build the CUDA backend and NCCL link where a toolkit is found" ON)
set(SHARDSERVE_CUDA OFF)

if(SHARDSERVE_ENABLE_CUDA)
  # Pinned architectures keep nvcc builds short: Hopper (H100/H200) only by default.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)
  endif()
  check_language(CUDA)
endif()

if(SHARDSERVE_ENABLE_CUDA AND CMAKE_CUDA_COMPILER)
  enable_language(CUDA)
  # Device files need no C++20, and CMake 3.25 knows no nvcc flag for it.
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit)
  if(CUDAToolkit_FOUND)
    find_library(SHARDSERVE_NCCL_LIB NAMES nccl
                 HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib
                       ${CUDAToolkit_LIBRARY_ROOT}/lib64)
    find_path(SHARDSERVE_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    set(SHARDSERVE_CUDA ON)
  endif()
endif()

if(SHARDSERVE_CUDA)
  if(SHARDSERVE_NCCL_LIB AND SHARDSERVE_NCCL_INCLUDE_DIR)
    set(nccl_note "NCCL ${SHARDSERVE_NCCL_LIB}")
  else()
    set(nccl_note "NCCL not found: no NCCL activation link")
  endif()
  message(STATUS "shardserve: CUDA ${CUDAToolkit_VERSION} found (architectures "
                 "${CMAKE_CUDA_ARCHITECTURES}; ${nccl_note}): building the CUDA backend")
else()
  message(STATUS "shardserve: CUDA not found or disabled: CPU build only (complete without it)")
endif()
