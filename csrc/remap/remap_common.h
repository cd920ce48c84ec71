// What the CPU and CUDA remap_copy kernels share: argument checks and the per-tensor geometry.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace fna_ext {

constexpr int kRemapMaxDims = 8;

inline int64_t remap_map_length(const at::Tensor& target) {
  int64_t n = 0;
  for (int64_t size : target.sizes()) n += size;
  return n;
}

// Checks every tensor of a remap_copy call; the messages name the tensor's position.
inline void check_remap_args(at::TensorList sources, at::TensorList targets,
                             at::TensorList index_maps, c10::ArrayRef<double> fills,
                             at::TensorList scales, c10::IntArrayRef scale_dims) {
  const size_t n = targets.size();
  TORCH_CHECK(sources.size() == n && index_maps.size() == n && fills.size() == n &&
                  scales.size() == n && scale_dims.size() == n,
              "fna_ext::remap_copy: sources, targets, index_maps, fills, scales and scale_dims "
              "must have one entry per target");
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& dst = targets[t];
    const at::Tensor& src = sources[t];
    TORCH_CHECK(dst.dim() == src.dim() && dst.dim() <= kRemapMaxDims, "fna_ext::remap_copy: tensor ",
                t, ": target ", dst.sizes(), " and source ", src.sizes(),
                " must have the same number of dimensions (at most 8)");
    TORCH_CHECK(dst.is_contiguous() && src.is_contiguous(), "fna_ext::remap_copy: tensor ", t,
                ": target and source must be contiguous");
    TORCH_CHECK(dst.scalar_type() == src.scalar_type() && dst.device() == src.device(),
                "fna_ext::remap_copy: tensor ", t, ": source and target differ in dtype or device");
    TORCH_CHECK(index_maps[t].scalar_type() == at::kLong && index_maps[t].dim() == 1 &&
                    index_maps[t].numel() == remap_map_length(dst) &&
                    index_maps[t].device() == dst.device(),
                "fna_ext::remap_copy: tensor ", t, ": index_maps must be int64 of length sum(target.shape) = ",
                remap_map_length(dst), " on the target's device");
    if (scale_dims[t] >= 0) {
      TORCH_CHECK(scale_dims[t] < dst.dim() && scales[t].dim() == 1 &&
                      scales[t].numel() == dst.size(scale_dims[t]) &&
                      scales[t].scalar_type() == dst.scalar_type() && scales[t].device() == dst.device(),
                  "fna_ext::remap_copy: tensor ", t, ": scales must be a 1-d tensor of the target's dtype "
                  "with one entry per index of dimension ", scale_dims[t]);
    }
  }
}

}  // namespace fna_ext
