// remap_copy on the CPU: one pass over all elements of all target tensors, split across threads
// by element ranges so that one huge tensor and many small ones balance the same way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "remap_common.h"

namespace fna_ext {
namespace {

// Copies elements [begin, end) of one target: each takes the source element its per-dimension
// index maps name, or the fill where any map says -1.
template <typename scalar_t>
void remap_range(const at::Tensor& src, const at::Tensor& dst, const int64_t* maps, double fill,
                 const scalar_t* scale, int64_t scale_dim, int64_t begin, int64_t end) {
  const int64_t ndim = dst.dim();
  scalar_t* out = dst.data_ptr<scalar_t>();
  const scalar_t* in = src.data_ptr<scalar_t>();
  if (ndim == 0) {
    if (begin < end) out[0] = in[0];
    return;
  }
  int64_t sizes[kRemapMaxDims], strides[kRemapMaxDims], offsets[kRemapMaxDims], coord[kRemapMaxDims];
  int64_t map_start = 0;
  for (int64_t d = 0; d < ndim; ++d) {
    sizes[d] = dst.size(d);
    strides[d] = src.stride(d);
    offsets[d] = map_start;
    map_start += sizes[d];
  }
  for (int64_t d = ndim - 1, rest = begin; d >= 0; --d) {
    coord[d] = rest % sizes[d];
    rest /= sizes[d];
  }
  const scalar_t fill_value = static_cast<scalar_t>(fill);
  for (int64_t e = begin; e < end; ++e) {
    int64_t offset = 0;
    bool filled = false;
    for (int64_t d = 0; d < ndim; ++d) {
      const int64_t index = maps[offsets[d] + coord[d]];
      filled |= index < 0;
      offset += index * strides[d];
    }
    scalar_t value = filled ? fill_value : in[offset];
    if (scale != nullptr) value = value * scale[coord[scale_dim]];
    out[e] = value;
    for (int64_t d = ndim - 1; d >= 0 && ++coord[d] == sizes[d]; --d) coord[d] = 0;  // odometer
  }
}

void remap_copy_cpu(at::TensorList sources, at::TensorList targets, at::TensorList index_maps,
                    c10::ArrayRef<double> fills, at::TensorList scales, c10::IntArrayRef scale_dims) {
  check_remap_args(sources, targets, index_maps, fills, scales, scale_dims);
  const size_t n = targets.size();
  std::vector<int64_t> starts(n + 1, 0);  // element offset of each target in the flat pass
  for (size_t t = 0; t < n; ++t) starts[t + 1] = starts[t] + targets[t].numel();
  at::parallel_for(0, starts[n], /*grain_size=*/1 << 15, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (; t < n && starts[t] < end; ++t) {
      const int64_t lo = std::max(begin, starts[t]) - starts[t];
      const int64_t hi = std::min(end, starts[t + 1]) - starts[t];
      if (lo >= hi) continue;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, targets[t].scalar_type(), "fna_ext_remap_copy", [&] {
        const scalar_t* scale = scale_dims[t] >= 0 ? scales[t].data_ptr<scalar_t>() : nullptr;
        remap_range<scalar_t>(sources[t], targets[t], index_maps[t].data_ptr<int64_t>(), fills[t],
                              scale, scale_dims[t], lo, hi);
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fna_ext, CPU, m) { m.impl("remap_copy", &remap_copy_cpu); }

}  // namespace fna_ext
