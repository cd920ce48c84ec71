// Torch glue of the CUDA remap_copy: builds the job table of each dtype on the host, copies it to
// the device and launches the kernel (remap_cuda.cu) once per dtype present.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <vector>

#include "remap_common.h"
#include "remap_cuda.h"

namespace fna_ext {
namespace {

RemapDtype to_remap_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return RemapDtype::kFloat32;
    case at::kDouble: return RemapDtype::kFloat64;
    case at::kHalf: return RemapDtype::kFloat16;
    case at::kBFloat16: return RemapDtype::kBFloat16;
    default: TORCH_CHECK(false, "fna_ext::remap_copy: unsupported dtype ", type);
  }
}

void remap_copy_cuda(at::TensorList sources, at::TensorList targets, at::TensorList index_maps,
                     c10::ArrayRef<double> fills, at::TensorList scales, c10::IntArrayRef scale_dims) {
  check_remap_args(sources, targets, index_maps, fills, scales, scale_dims);
  if (targets.empty()) return;
  static_assert(kRemapCudaMaxDims == kRemapMaxDims, "the CPU and CUDA limits must agree");
  const c10::cuda::CUDAGuard guard(targets[0].device());
  std::map<RemapDtype, std::pair<std::vector<RemapJob>, int64_t>> groups;  // jobs, total elements
  for (size_t t = 0; t < targets.size(); ++t) {
    const at::Tensor& dst = targets[t];
    if (dst.numel() == 0) continue;
    auto& [jobs, total] = groups[to_remap_dtype(dst.scalar_type())];
    RemapJob job{};
    job.dst = dst.data_ptr();
    job.src = sources[t].data_ptr();
    job.maps = index_maps[t].data_ptr<int64_t>();
    job.scale = scale_dims[t] >= 0 ? scales[t].data_ptr() : nullptr;
    job.start = total;
    job.fill = fills[t];
    job.ndim = static_cast<int32_t>(dst.dim());
    job.scale_dim = static_cast<int32_t>(scale_dims[t]);
    int64_t map_offset = 0;
    for (int64_t d = 0; d < dst.dim(); ++d) {
      job.sizes[d] = dst.size(d);
      job.src_strides[d] = sources[t].stride(d);
      job.map_offsets[d] = map_offset;
      map_offset += dst.size(d);
    }
    if (dst.dim() == 0) {  // a scalar: one element, no maps
      job.ndim = 0;
    }
    jobs.push_back(job);
    total += dst.numel();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (auto& [dtype, group] : groups) {
    auto& [jobs, total] = group;
    const int64_t bytes = static_cast<int64_t>(jobs.size() * sizeof(RemapJob));
    const at::Tensor table = at::from_blob(jobs.data(), {bytes}, at::TensorOptions().dtype(at::kByte))
                                 .to(targets[0].device());
    const cudaError_t err = remap_copy_launch(reinterpret_cast<const RemapJob*>(table.data_ptr()),
                                              static_cast<int32_t>(jobs.size()), total, dtype, stream);
    TORCH_CHECK(err == cudaSuccess, "fna_ext::remap_copy: CUDA kernel launch failed: ",
                cudaGetErrorString(err));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fna_ext, CUDA, m) { m.impl("remap_copy", &remap_copy_cuda); }

}  // namespace fna_ext
