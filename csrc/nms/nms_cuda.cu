// CUDA kernel of the NMS suppression mask. One thread block compares 64 "row" boxes with 64
// "column" boxes staged in shared memory and writes one 64-bit word per row box.
#include <cuda_runtime.h>

#include "nms_cuda.h"

namespace fna_ext {
namespace {

template <typename T>
__device__ __forceinline__ bool iou_above(const T* a, const T* b, T threshold) {
  const T w = max(min(a[2], b[2]) - max(a[0], b[0]), T(0));
  const T h = max(min(a[3], b[3]) - max(a[1], b[1]), T(0));
  const T inter = w * h;
  const T area_a = (a[2] - a[0]) * (a[3] - a[1]);
  const T area_b = (b[2] - b[0]) * (b[3] - b[1]);
  // inter / union > t without the division, as the CPU kernel does.
  return inter > threshold * (area_a + area_b - inter);
}

template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ groups,
                                int64_t n, T threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block) return;  // only boxes after i can be suppressed by i

  __shared__ T col_boxes[kNmsBlock * 4];
  __shared__ int64_t col_groups[kNmsBlock];
  const int64_t col_start = col_block * kNmsBlock;
  const int col_count = static_cast<int>(n - col_start < kNmsBlock ? n - col_start : kNmsBlock);
  if (threadIdx.x < col_count) {
    for (int c = 0; c < 4; ++c) {
      col_boxes[threadIdx.x * 4 + c] = boxes[(col_start + threadIdx.x) * 4 + c];
    }
    col_groups[threadIdx.x] = groups ? groups[col_start + threadIdx.x] : 0;
  }
  __syncthreads();

  const int64_t i = row_block * kNmsBlock + threadIdx.x;
  if (i >= n) return;
  const T* box = boxes + i * 4;
  const int64_t group = groups ? groups[i] : 0;
  unsigned long long bits = 0;
  const int first = (row_block == col_block) ? static_cast<int>(threadIdx.x) + 1 : 0;
  for (int j = first; j < col_count; ++j) {
    if (col_groups[j] == group && iou_above(box, col_boxes + j * 4, threshold)) {
      bits |= 1ULL << j;
    }
  }
  mask[i * gridDim.x + col_block] = bits;  // gridDim.x == words
}

template <typename T>
cudaError_t launch(const T* boxes, const int64_t* groups, int64_t n, T threshold,
                   unsigned long long* mask, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t words = nms_mask_words(n);
  if (words > 65535) return cudaErrorInvalidValue;  // gridDim.y limit: over 4M boxes
  const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>(words));
  nms_mask_kernel<T><<<grid, kNmsBlock, 0, stream>>>(boxes, groups, n, threshold, mask);
  return cudaGetLastError();
}

}  // namespace

cudaError_t nms_mask_launch_f32(const float* boxes, const int64_t* groups, int64_t n,
                                float iou_threshold, unsigned long long* mask, cudaStream_t stream) {
  return launch<float>(boxes, groups, n, iou_threshold, mask, stream);
}

cudaError_t nms_mask_launch_f64(const double* boxes, const int64_t* groups, int64_t n,
                                double iou_threshold, unsigned long long* mask, cudaStream_t stream) {
  return launch<double>(boxes, groups, n, iou_threshold, mask, stream);
}

}  // namespace fna_ext
