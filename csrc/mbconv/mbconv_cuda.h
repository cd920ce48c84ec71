// Launch functions of the CUDA kernels of the fused sampled MBConv (mbconv_cuda.cu); the steps
// that call them are in mbconv_driver.h, and mbconv_cuda_glue.cpp turns tensors into these
// arguments. Needs only the CUDA runtime, so the kernels compile with `nvcc -c` even where torch
// has no CUDA.
//
// Conventions (the same as the CPU backend, mbconv_cpu.cpp):
//  - data is channels-last rows: element (row r, channel j) of a matrix with row stride `ld` is
//    at r * ld + j;
//  - `T` is the data dtype; the per-channel coefficients (scale, shift, ms, mb, a, b, c) are in
//    its opmath type: float for float32, float16 and bfloat16, double for float64;
//  - sums are float64, one per channel, and must be ZERO on entry: every block adds its partial
//    sums into them with atomics.
// All pointers are device pointers; optional ones are null when absent.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "activation.h"
#include "bn_coefficients.h"

namespace fna_ext {
namespace mbconv {

enum class MbconvDtype : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// sum[j] = sum_r rows[r][j], sumsq[j] = sum_r rows[r][j]^2 over m rows of c channels.
struct RowStatsArgs {
  const void* rows;
  int64_t m, c, ld;
  double* sum;
  double* sumsq;
};

// out = activate(h * scale + shift, act) (activation.h); with act == kIdentity, + residual when
// that is not null.
struct AffineActArgs {
  const void* h;
  int64_t h_ld;
  int64_t m, c;
  const void* scale;
  const void* shift;
  int32_t act;
  const void* residual;  // null, or m x c with row stride res_ld (only used when act == kIdentity)
  int64_t res_ld;
  void* out;
  int64_t out_ld;
};

// gz = g through the activation `act_kind` at pre = h * ms + mb (when ms is not null);
// sum_g = sum gz, sum_gh = sum gz * h per channel; act = activate(pre) when act is not null.
struct GradSumsArgs {
  const void* g;
  int64_t g_ld;
  const void* h;
  int64_t h_ld;
  int64_t m, c;
  const void* ms;  // null: no activation (then mb, act_kind and act are unused)
  const void* mb;
  int32_t act_kind;
  double* sum_g;
  double* sum_gh;
  void* act;
  int64_t act_ld;
};

// out = gz * a + h * b + c with gz as in GradSumsArgs; out may be g itself.
struct GradApplyArgs {
  const void* g;
  int64_t g_ld;
  const void* h;
  int64_t h_ld;
  int64_t m, c;
  const void* ms;
  const void* mb;
  int32_t act_kind;
  const void* a;
  const void* b;
  const void* cc;
  void* out;
  int64_t out_ld;
};

// The depthwise convolution's shape: input (n, h, w) pixels, output (n, ho, wo), e channels, a
// k x k window (odd, at most 7) centred in the k_max x k_max weight, stride 1 or 2, padding pad,
// taps `dilation` pixels apart (dilation > 1 only with stride 1); act_expand is applied to the
// input on load (with scale), act_depthwise is the one after BN2 (the output gradient's).
struct DwShape {
  int64_t n, h, w, ho, wo, e;
  int64_t k, k_max, stride, pad, dilation;
  int32_t act_expand, act_depthwise;
};

// out[(n*ho+oh)*wo+ow][j] = sum_{kh,kw} in'(n, oh*stride-pad+kh*dilation, ow*stride-pad+kw*dilation, j) * w(j,kh,kw),
// with in' = activate(in * scale + shift, act_expand) (or in, when scale is null) inside the image and 0 in
// the padding; out is contiguous (rows_out, e). Also sum and sumsq of out per channel.
struct DwForwardArgs {
  DwShape s;
  const void* in;  // pixel (n, ih, iw) channel j at ((n*h+ih)*w+iw)*ld + j
  int64_t ld;
  const void* scale;  // null: the input is already activated
  const void* shift;
  const void* weight;  // (e_max, 1, k_max, k_max) contiguous, dtype T
  void* out;
  double* sum;
  double* sumsq;
};

// The depthwise convs of a mixture's kernel sizes (3, 5 and 7, centred in one K_max x K_max
// weight, each padded "same" so that their output pixels coincide) in one pass over the input:
// `s` is the widest kernel's shape; out[i], sum[i] and sumsq[i] belong to kernel size 2 * i + 3,
// null where the mixture has no such kernel. Each out[i] is as DwForwardArgs' out.
struct DwNestedForwardArgs {
  DwShape s;
  const void* in;
  int64_t ld;
  const void* scale;
  const void* shift;
  const void* weight;
  void* out[3];
  double* sum[3];
  double* sumsq[3];
};

// One kernel size's output gradient in a nested input gradient, as DwBackwardArgs gives it:
// G = activation_grad(h2 * scale2 + shift2, ga2, act_depthwise) * a + h2 * b + c.
struct DwOutputGradArgs {
  const void* ga2;  // contiguous (rows_out, e); null: the mixture has no such kernel size
  const void* h2;
  const void* scale2;
  const void* shift2;
  const void* a;
  const void* b;
  const void* c;
};

// The input gradient of stride-1 depthwise convs summed over their kernel sizes (one, or a
// mixture's), in one pass: `s` is the widest kernel's shape, go[i] kernel size 2 * i + 3's output
// gradient. grad_in is contiguous (rows_in, e). With scale1 not null, BN1's activation gradient
// is applied on store and sum_g / sum_gh get its sums against the raw input, as in
// DwBackwardArgs; a mixture passes null (its driver applies BN1 after).
struct DwNestedBackwardArgs {
  DwShape s;
  const void* weight;
  DwOutputGradArgs go[3];
  void* grad_in;
  const void* in;  // read only with scale1
  int64_t ld;
  const void* scale1;
  const void* shift1;
  double* sum_g;
  double* sum_gh;
};

// Both gradients of the depthwise conv. The output gradient is
// G = activation_grad(h2 * scale2 + shift2, ga2, act_depthwise) * a + h2 * b + c.
// grad_weight (float64, contiguous (e, k, k), ZERO on entry; null when not wanted) gets
// sum G * in' per tap. grad_in (contiguous (rows_in, e)) gets the input gradient, through BN1's
// activation when scale1 is not null, in which case sum_g / sum_gh get its sums against the raw input
// (else they are untouched).
struct DwBackwardArgs {
  DwShape s;
  const void* ga2;  // contiguous (rows_out, e)
  const void* h2;   // contiguous (rows_out, e)
  const void* scale2;
  const void* shift2;
  const void* a;
  const void* b;
  const void* c;
  const void* in;
  int64_t ld;
  const void* scale1;  // null: the input is already activated
  const void* shift1;
  const void* weight;
  void* grad_in;
  double* grad_weight;
  double* sum_g;
  double* sum_gh;
};

// One BN's per-channel coefficients (bn_coefficients.h), a thread per channel. With sum not null,
// mean and invstd are computed from sum and sumsq over `count` rows and written; else they are
// read. scale and shift (opmath) follow from them and gamma, beta (of param_dtype; null: 1, 0).
struct BnCoefficientsArgs {
  int64_t c;
  const double* sum;
  const double* sumsq;
  double count, eps;
  double* mean;
  double* invstd;
  const void* gamma;
  const void* beta;
  void* scale;
  void* shift;
};

// A BN's backward coefficients a, b, c (opmath) and dgamma (float64) from sum_g, sum_gh, its
// statistics and gamma (of param_dtype; null: 1).
struct BnBackwardArgs {
  int64_t c;
  const double* sum_g;
  const double* sum_gh;
  const double* mean;
  const double* invstd;
  const void* gamma;
  double count;
  void* a;
  void* b;
  void* cc;
  double* dgamma;
};

// double_opmath: the coefficients are float64 (else float32), whatever param_dtype is.
cudaError_t bn_coefficients_launch(const BnCoefficientsArgs& args, MbconvDtype param_dtype, bool double_opmath,
                                   cudaStream_t stream);
cudaError_t bn_backward_launch(const BnBackwardArgs& args, MbconvDtype param_dtype, bool double_opmath,
                               cudaStream_t stream);
cudaError_t row_stats_launch(const RowStatsArgs& args, MbconvDtype dtype, cudaStream_t stream);
cudaError_t affine_act_launch(const AffineActArgs& args, MbconvDtype dtype, cudaStream_t stream);
cudaError_t grad_sums_launch(const GradSumsArgs& args, MbconvDtype dtype, cudaStream_t stream);
cudaError_t grad_apply_launch(const GradApplyArgs& args, MbconvDtype dtype, cudaStream_t stream);
cudaError_t depthwise_forward_launch(const DwForwardArgs& args, MbconvDtype dtype, cudaStream_t stream);
// Whether depthwise_backward_nested_launch takes this shape (stride 1, tiled kernels wanted, and
// the window fits in shared memory); the driver runs one input gradient per size otherwise.
bool depthwise_backward_nested_fits(const DwShape& s, MbconvDtype dtype);
cudaError_t depthwise_backward_nested_launch(const DwNestedBackwardArgs& args, MbconvDtype dtype,
                                             cudaStream_t stream);
// One tiled pass where the widest kernel's window fits in shared memory, else one launch per size.
cudaError_t depthwise_forward_nested_launch(const DwNestedForwardArgs& args, MbconvDtype dtype, cudaStream_t stream);
// Launches the input-gradient and the weight-gradient kernels.
cudaError_t depthwise_backward_launch(const DwBackwardArgs& args, MbconvDtype dtype, cudaStream_t stream);

}  // namespace mbconv
}  // namespace fna_ext
