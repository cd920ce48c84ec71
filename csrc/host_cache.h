// Large CPU tensors from a cache of freed blocks, like CUDA's caching allocator.
//
// Why: the default CPU allocator hands large blocks back to the kernel when they are freed, so
// every training step touches its multi-megabyte activations as fresh pages, one page fault per
// 4 KiB; on the 2-core machine this project is measured on that cost as much as the kernels
// that fill them (about 2 ms for a 10 MB tensor). The fused ops allocate their big outputs
// here: a step's blocks are reused by the next step. A request takes the smallest free block
// that holds it (up to 1.5 times its size); a miss first frees as many idle bytes of other sizes. Free blocks are kept up to
// FNA_EXT_HOST_CACHE_MB megabytes (0 disables the cache); by default an eighth of the memory the
// process may use (the machine's, or its cgroup's limit), at most 4096.
#pragma once

#include <ATen/ATen.h>

namespace fna_ext {
namespace host_cache {

// An uninitialised tensor; from the cache when it is on the CPU and at least 1 MiB.
at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees every cached block (the tensors still alive keep theirs).
void release_cached_blocks();

// Bytes held in the cache, free for reuse.
int64_t cached_bytes();

// The most free bytes the cache keeps (FNA_EXT_HOST_CACHE_MB, or its default).
int64_t limit_bytes();

}  // namespace host_cache
}  // namespace fna_ext
