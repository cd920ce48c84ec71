// CPU kernels of the fused sampled-path MBConv (the steps are in mbconv_driver.h).
//
// Depthwise work is split into tasks of one image and 16 channels: a task loads its input once
// into a zero-padded channels-innermost tile (applying BN1 + ReLU6 there, so every tap of the
// k x k window reads a ready value) and convolves with the centre k x k of its 16 channels'
// weights, 4 output pixels at a time in registers. Backward computes the input gradient as the
// same correlation over the zero-dilated output gradient with the kernel flipped, and the weight
// gradient one kernel row at a time. Per-task partial sums are reduced in a fixed order, so
// results do not depend on the thread count. A dilated conv runs as d x d undilated ones over
// interleaved sub-images (see "dilation" below), so none of this changes for it.
//
// The hot functions are compiled for AVX-512, AVX2 and baseline x86-64 (GCC's target_clones
// picks one at load time); elsewhere they are built once for the compiler's target.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "../host_cache.h"
#include "mbconv_driver.h"
#include "mixture_driver.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FNA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FNA_CLONES
#endif
#if defined(__GNUC__)
#define FNA_INLINE inline __attribute__((always_inline))
// Lambdas too: one left out of line would hold its vectors in memory, compiled for the baseline
// instruction set rather than the caller's target_clones target.
#define FNA_LAMBDA_INLINE __attribute__((always_inline))
// The vector helpers are always inlined, so no vector ever crosses a call boundary whose ABI
// the note is about.
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define FNA_INLINE inline
#define FNA_LAMBDA_INLINE
#endif

namespace fna_ext {
namespace mbconv {
#include "mbconv_cpu_kernels.inc"

TORCH_LIBRARY_IMPL(fna_ext, CPU, m) {
  register_kernels<CpuBackend>(m);
  register_mixture_kernels<CpuBackend>(m);
}

}  // namespace mbconv
}  // namespace fna_ext
