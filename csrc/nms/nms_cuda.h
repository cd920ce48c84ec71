// Launch functions of the CUDA NMS kernels (nms_cuda.cu). This header and the .cu file need only
// the CUDA runtime, so the kernels compile with `nvcc -c` even where torch has no CUDA.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fna_ext {

// Bits per word of the suppression mask: block i of boxes against block j of boxes.
constexpr int kNmsBlock = 64;

inline int64_t nms_mask_words(int64_t n) { return (n + kNmsBlock - 1) / kNmsBlock; }

// For boxes already sorted by descending score, writes mask[i * words + w] (words =
// nms_mask_words(n)): bit b is set when box i and box w * 64 + b (> i) are of the same group and
// their IoU is above iou_threshold. groups may be null (one group). Words below i's own block are
// left unwritten; the greedy pass never reads them.
cudaError_t nms_mask_launch_f32(const float* boxes, const int64_t* groups, int64_t n,
                                float iou_threshold, unsigned long long* mask, cudaStream_t stream);
cudaError_t nms_mask_launch_f64(const double* boxes, const int64_t* groups, int64_t n,
                                double iou_threshold, unsigned long long* mask, cudaStream_t stream);

}  // namespace fna_ext
