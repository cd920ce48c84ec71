// Argument checks shared by the CPU and CUDA NMS kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace fna_ext {

inline void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor* idxs) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "fna_ext::nms: boxes must have shape (N, 4), got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "fna_ext::nms: scores must have shape (N,) with N = ", boxes.size(0), ", got ",
              scores.sizes());
  TORCH_CHECK(scores.device() == boxes.device(),
              "fna_ext::nms: boxes and scores must be on the same device");
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()),
              "fna_ext::nms: boxes must be floating point, got ", boxes.scalar_type());
  if (idxs != nullptr) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0),
                "fna_ext::batched_nms: idxs must have shape (N,) with N = ", boxes.size(0),
                ", got ", idxs->sizes());
    TORCH_CHECK(idxs->device() == boxes.device(),
                "fna_ext::batched_nms: idxs must be on the same device as boxes");
    TORCH_CHECK(!at::isFloatingType(idxs->scalar_type()) && !at::isComplexType(idxs->scalar_type()),
                "fna_ext::batched_nms: idxs must be an integer tensor, got ", idxs->scalar_type());
  }
}

}  // namespace fna_ext
