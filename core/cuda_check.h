#pragma once
// CUDA / cuBLAS / NCCL status checks that throw natsl::Error with the call, the status text and place.
#include "core/error.h"

#ifdef NATSL_WITH_CUDA
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define NATSL_CUDA_CHECK(expr)                                                                  \
  do {                                                                                          \
    cudaError_t natsl_err_ = (expr);                                                            \
    if (natsl_err_ != cudaSuccess) [[unlikely]]                                                 \
      NATSL_FAIL("CUDA error in `", #expr, "`: ", cudaGetErrorName(natsl_err_), " (",           \
                 cudaGetErrorString(natsl_err_), ")");                                          \
  } while (0)

#define NATSL_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                          \
    cublasStatus_t natsl_st_ = (expr);                                                          \
    if (natsl_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                                        \
      NATSL_FAIL("cuBLAS error in `", #expr, "`: ", cublasGetStatusName(natsl_st_), " (",       \
                 cublasGetStatusString(natsl_st_), ")");                                        \
  } while (0)

// Checks the last kernel launch (launch configuration errors); asynchronous faults surface at the
// next synchronising call.
#define NATSL_CUDA_CHECK_LAUNCH() NATSL_CUDA_CHECK(cudaGetLastError())
#endif

#ifdef NATSL_WITH_NCCL
#include <nccl.h>
#define NATSL_NCCL_CHECK(expr)                                                                  \
  do {                                                                                          \
    ncclResult_t natsl_nr_ = (expr);                                                            \
    if (natsl_nr_ != ncclSuccess) [[unlikely]]                                                  \
      NATSL_FAIL("NCCL error in `", #expr, "`: ", ncclGetErrorString(natsl_nr_));               \
  } while (0)
#endif
