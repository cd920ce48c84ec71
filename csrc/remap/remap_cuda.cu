// CUDA remap_copy: one grid-stride pass over the elements of every target tensor of one dtype.
// Each thread finds its tensor by binary search over the jobs' start offsets, then gathers its
// source element through the per-dimension index maps.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "remap_cuda.h"

namespace fna_ext {
namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ double to_float(double v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(double v);
template <> __device__ __forceinline__ float from_float<float>(double v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ double from_float<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(double v) { return __float2half(static_cast<float>(v)); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(double v) {
  return __float2bfloat16(static_cast<float>(v));
}

template <typename T>
__global__ void remap_copy_kernel(const RemapJob* __restrict__ jobs, int32_t num_jobs, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    int32_t lo = 0, hi = num_jobs - 1;  // the last job whose start is <= e
    while (lo < hi) {
      const int32_t mid = (lo + hi + 1) / 2;
      if (jobs[mid].start <= e) lo = mid; else hi = mid - 1;
    }
    const RemapJob& job = jobs[lo];
    int64_t rest = e - job.start;
    const int64_t element = rest;
    int64_t offset = 0, scale_index = 0;
    bool filled = false;
    for (int32_t d = job.ndim - 1; d >= 0; --d) {
      const int64_t coord = rest % job.sizes[d];
      rest /= job.sizes[d];
      const int64_t index = job.maps[job.map_offsets[d] + coord];
      filled |= index < 0;
      offset += index * job.src_strides[d];
      if (d == job.scale_dim) scale_index = coord;
    }
    const T* src = static_cast<const T*>(job.src);
    T value = filled ? from_float<T>(job.fill) : src[offset];
    if (job.scale != nullptr) {
      value = from_float<T>(static_cast<double>(to_float(value)) *
                            to_float(static_cast<const T*>(job.scale)[scale_index]));
    }
    static_cast<T*>(job.dst)[element] = value;
  }
}

template <typename T>
cudaError_t launch(const RemapJob* jobs, int32_t num_jobs, int64_t total, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  remap_copy_kernel<T><<<grid, kThreads, 0, stream>>>(jobs, num_jobs, total);
  return cudaGetLastError();
}

}  // namespace

cudaError_t remap_copy_launch(const RemapJob* jobs, int32_t num_jobs, int64_t total, RemapDtype dtype,
                              cudaStream_t stream) {
  if (total == 0 || num_jobs == 0) return cudaSuccess;
  switch (dtype) {
    case RemapDtype::kFloat32: return launch<float>(jobs, num_jobs, total, stream);
    case RemapDtype::kFloat64: return launch<double>(jobs, num_jobs, total, stream);
    case RemapDtype::kFloat16: return launch<__half>(jobs, num_jobs, total, stream);
    case RemapDtype::kBFloat16: return launch<__nv_bfloat16>(jobs, num_jobs, total, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fna_ext
