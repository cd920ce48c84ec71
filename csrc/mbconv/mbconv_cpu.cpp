// CPU kernels of the fused sampled-path MBConv (the steps are in mbconv_driver.h).
//
// Depthwise work is split into tasks of one image and 16 channels (a backward task: up to two
// cache lines of channels, two blocks of 16 or four of 8, see kTaskBlocks): a task loads its input once
// into a zero-padded channels-innermost tile (applying BN1 + ReLU6 there, so every tap of the
// k x k window reads a ready value) and convolves with the centre k x k of its 16 channels'
// weights, 4 output pixels at a time in registers. Backward computes the input gradient as the
// same correlation over the zero-dilated output gradient with the kernel flipped, and the weight
// gradient one kernel row at a time. Per-task partial sums are reduced in a fixed order, so
// results do not depend on the thread count. A dilated conv runs as d x d undilated ones over
// interleaved sub-images (see "dilation" below), so none of this changes for it.
//
// The whole of mbconv_cpu_kernels.inc is compiled once per instruction set (AVX-512, AVX2 and
// baseline x86-64 where GCC targets x86-64 Linux; once for the compiler's target elsewhere), and
// the copy cpu_isa::selected() names is registered when the library loads (see cpu_isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>  // std::unique_ptr (PartialTotals)
#include <unistd.h>  // sysconf: the L2 size (worth_asking_ahead)
#include <type_traits>
#include <utility>
#include <vector>

#include "../cpu_isa.h"
#if FNA_MULTI_ISA
#include <immintrin.h>  // the masked loads and stores of a partial channel block (vload_first)
#endif
#include "../host_cache.h"
#include "mbconv_driver.h"
#include "mixture_driver.h"

#if defined(__GNUC__)
#define FNA_INLINE inline __attribute__((always_inline))
// Lambdas too: one left out of line would hold its vectors in memory, compiled for the baseline
// instruction set rather than the instruction set of its copy.
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

#if FNA_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define FNA_BLOCK 16
#define FNA_ROW_PIXELS 8
namespace isa_avx512 {
#include "mbconv_cpu_kernels.inc"
}  // namespace isa_avx512
#undef FNA_BLOCK
#undef FNA_ROW_PIXELS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define FNA_BLOCK 8
#define FNA_ROW_PIXELS 4
namespace isa_avx2 {
#include "mbconv_cpu_kernels.inc"
}  // namespace isa_avx2
#undef FNA_BLOCK
#undef FNA_ROW_PIXELS
#pragma GCC pop_options
#endif

// baseline x86-64 (SSE2: 16 registers of 4 floats), or the compiler's target without FNA_MULTI_ISA
#if FNA_MULTI_ISA
#define FNA_BLOCK 4
#define FNA_ROW_PIXELS 4
#else
#define FNA_BLOCK 16
#define FNA_ROW_PIXELS 8
#endif
namespace isa_default {
#include "mbconv_cpu_kernels.inc"
}  // namespace isa_default
#undef FNA_BLOCK
#undef FNA_ROW_PIXELS

template <typename Backend>
void register_cpu(torch::Library& m) {
  register_kernels<Backend>(m);
  register_mixture_kernels<Backend>(m);
}

TORCH_LIBRARY_IMPL(fna_ext, CPU, m) {
  switch (cpu_isa::selected()) {
#if FNA_MULTI_ISA
    case cpu_isa::Level::avx512: register_cpu<isa_avx512::CpuBackend>(m); break;
    case cpu_isa::Level::avx2: register_cpu<isa_avx2::CpuBackend>(m); break;
#endif
    default: register_cpu<isa_default::CpuBackend>(m); break;
  }
}

}  // namespace mbconv
}  // namespace fna_ext
