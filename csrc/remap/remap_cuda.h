// Launch function of the CUDA remap_copy kernel (remap_cuda.cu). Needs only the CUDA runtime, so
// the kernel compiles with `nvcc -c` even where torch has no CUDA.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fna_ext {

constexpr int kRemapCudaMaxDims = 8;

// One target tensor of the flat pass. Pointers are device pointers.
struct RemapJob {
  void* dst;
  const void* src;
  const int64_t* maps;  // per-dimension index maps, concatenated; -1 takes `fill`
  const void* scale;    // null, or one factor per index of dimension scale_dim
  int64_t start;        // index of this tensor's first element in the flat pass
  double fill;
  int32_t ndim;
  int32_t scale_dim;
  int64_t sizes[kRemapCudaMaxDims];
  int64_t src_strides[kRemapCudaMaxDims];
  int64_t map_offsets[kRemapCudaMaxDims];
};

enum class RemapDtype : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Runs every job (all of dtype `dtype`; `jobs` in device memory, sorted by start, none empty)
// over `total` elements in one launch.
cudaError_t remap_copy_launch(const RemapJob* jobs, int32_t num_jobs, int64_t total, RemapDtype dtype,
                              cudaStream_t stream);

}  // namespace fna_ext
