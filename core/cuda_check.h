#pragma once
// CUDA / cuBLAS / NCCL status checks that throw natsl::Error with the call, the status text and place.
#include "core/error.h"

// Fails with "<LIB> error in `<text>`: <details>" when `expr` (a status of type TYPE, spelled `text`) is not
// OK; the details may name the status as natsl_st_.
#define NATSL_STATUS_CHECK_(TYPE, expr, text, OK, LIB, ...)                                     \
  do {                                                                                          \
    TYPE natsl_st_ = (expr);                                                                    \
    if (natsl_st_ != OK) [[unlikely]]                                                           \
      NATSL_FAIL(LIB " error in `", text, "`: ", __VA_ARGS__);                                  \
  } while (0)

#ifdef NATSL_WITH_CUDA
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define NATSL_CUDA_CHECK(expr)                                                                  \
  NATSL_STATUS_CHECK_(cudaError_t, expr, #expr, cudaSuccess, "CUDA", cudaGetErrorName(natsl_st_), " (",       \
                      cudaGetErrorString(natsl_st_), ")")

#define NATSL_CUBLAS_CHECK(expr)                                                                \
  NATSL_STATUS_CHECK_(cublasStatus_t, expr, #expr, CUBLAS_STATUS_SUCCESS, "cuBLAS",                       \
                      cublasGetStatusName(natsl_st_), " (", cublasGetStatusString(natsl_st_), ")")

// Checks the last kernel launch (launch configuration errors); asynchronous faults surface at the
// next synchronising call.
#define NATSL_CUDA_CHECK_LAUNCH() NATSL_CUDA_CHECK(cudaGetLastError())
#endif

#ifdef NATSL_WITH_NCCL
#include <nccl.h>
#define NATSL_NCCL_CHECK(expr) \
  NATSL_STATUS_CHECK_(ncclResult_t, expr, #expr, ncclSuccess, "NCCL", ncclGetErrorString(natsl_st_))
#endif
