// Torch glue of the CUDA sampled MBConv: CudaBackend turns the driver's tensors
// (mbconv_driver.h) into the plain arguments of the kernels in mbconv_cuda.cu, and the ops are
// the driver's templates instantiated with it, as the CPU ones are with CpuBackend.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "mbconv_cuda.h"
#include "mbconv_driver.h"
#include "mixture_driver.h"

namespace fna_ext {
namespace mbconv {
namespace {

MbconvDtype to_mbconv_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return MbconvDtype::kFloat32;
    case at::kDouble: return MbconvDtype::kFloat64;
    case at::kHalf: return MbconvDtype::kFloat16;
    case at::kBFloat16: return MbconvDtype::kBFloat16;
    default: TORCH_CHECK(false, "fna_ext::sampled_mbconv: unsupported dtype ", type, " on CUDA");
  }
}

void check_launch(cudaError_t err, const char* step) {
  TORCH_CHECK(err == cudaSuccess, "fna_ext::mbconv::", step, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// A (rows, C) matrix the kernels read as r * stride(0) + j.
void check_rows(const at::Tensor& t, const at::Tensor& like, const char* step, const char* name) {
  TORCH_CHECK(t.dim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1), "fna_ext::mbconv::", step, ": ", name,
              " must be (rows, C) with unit channel stride, got sizes ", t.sizes(), " strides ", t.strides());
  TORCH_CHECK(t.is_cuda() && t.device() == like.device() && t.scalar_type() == like.scalar_type(),
              "fna_ext::mbconv::", step, ": ", name, " must be on ", like.device(), " with dtype ",
              like.scalar_type());
}

// Per-channel coefficients: at least `channels` values of `opmath` on the data's device, read
// contiguously (a copy when they are not; it lives until the caller's launch is queued, and
// the caching allocator keeps it for this stream's work).
at::Tensor coefficients(const at::Tensor& t, int64_t channels, at::ScalarType opmath, const at::Tensor& like,
                        const char* step) {
  TORCH_CHECK(t.defined() && t.numel() >= channels && t.scalar_type() == opmath && t.device() == like.device(),
              "fna_ext::mbconv::", step, ": per-channel coefficients must hold ", channels, " ", opmath,
              " values on ", like.device());
  return t.contiguous();
}

at::Tensor optional_coefficients(const at::Tensor& t, int64_t channels, at::ScalarType opmath,
                                 const at::Tensor& like, const char* step) {
  return t.defined() ? coefficients(t, channels, opmath, like, step) : at::Tensor();
}

// The per-channel float64 sums the kernels add into (zero on entry, as the driver makes them).
void check_sums(const at::Tensor& t, int64_t channels, const at::Tensor& like, const char* step) {
  TORCH_CHECK(t.scalar_type() == at::kDouble && t.is_contiguous() && t.numel() == channels &&
                  t.device() == like.device(),
              "fna_ext::mbconv::", step, ": sums must be ", channels, " contiguous float64 values on ",
              like.device());
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

DwShape dw_shape(const Geometry& g) {
  return DwShape{g.n, g.h, g.w, g.ho, g.wo, g.e, g.k, g.k_max, g.stride, g.pad, g.dilation,
                 g.act_expand, g.act_depthwise};
}

// The depthwise input (N, H, W, e) as the kernels address it: pixel (n, ih, iw) at
// ((n * H + ih) * W + iw) * ld with unit channel stride. The driver's views have that layout; the
// strides of size-1 dimensions are free in torch, so they are ignored, and anything else is
// read from a copy with the canonical layout.
at::Tensor dw_input(const Geometry& g, const at::Tensor& in, const char* step, int64_t* ld) {
  TORCH_CHECK(in.is_cuda() && in.dim() == 4 && in.size(0) == g.n && in.size(1) == g.h && in.size(2) == g.w &&
                  in.size(3) == g.e,
              "fna_ext::mbconv::", step, ": the depthwise input must be (N, H, W, e) = (", g.n, ", ", g.h, ", ",
              g.w, ", ", g.e, "), got ", in.sizes());
  // the pixel stride, from the innermost spatial dimension that has more than one index
  int64_t pixel = g.e;
  if (g.w > 1) {
    pixel = in.stride(2);
  } else if (g.h > 1) {
    pixel = in.stride(1);
  } else if (g.n > 1) {
    pixel = in.stride(0);
  }
  const bool ok = (g.e <= 1 || in.stride(3) == 1) && pixel >= g.e && (g.w <= 1 || in.stride(2) == pixel) &&
                  (g.h <= 1 || in.stride(1) == g.w * pixel) && (g.n <= 1 || in.stride(0) == g.h * g.w * pixel);
  if (ok) {
    *ld = pixel;
    return in;
  }
  *ld = g.e;
  return at::empty(in.sizes(), in.options()).copy_(in);  // at::empty: canonical contiguous strides
}

void check_dw_weight(const Geometry& g, const at::Tensor& weight, const at::Tensor& in, const char* step) {
  TORCH_CHECK(weight.is_contiguous() && weight.dim() == 4 && weight.size(0) == g.e_max && weight.size(1) == 1 &&
                  weight.size(2) == g.k_max && weight.size(3) == g.k_max &&
                  weight.scalar_type() == in.scalar_type() && weight.device() == in.device(),
              "fna_ext::mbconv::", step, ": the depthwise weight must be a contiguous (E_max, 1, K, K) tensor ",
              "like the input");
}

// A contiguous (rows, e) tensor of the data dtype.
void check_dense(const at::Tensor& t, int64_t rows, int64_t e, const at::Tensor& like, const char* step,
                 const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.dim() == 2 && t.size(0) == rows && t.size(1) == e &&
                  t.scalar_type() == like.scalar_type() && t.device() == like.device(),
              "fna_ext::mbconv::", step, ": ", name, " must be a contiguous (", rows, ", ", e, ") tensor like the ",
              "input, got ", t.sizes());
}

// A BN's gamma and beta as the per-channel kernels read them: contiguous, one dtype, on the
// statistics' device; absent ones are null (gamma 1, beta 0).
struct BnParameters {
  at::Tensor gamma, beta;
  MbconvDtype dtype = MbconvDtype::kFloat32;  // any, when both are absent
  BnParameters(const at::Tensor& g, const at::Tensor& b, int64_t channels, const at::Tensor& like, const char* step) {
    for (const at::Tensor* t : {&g, &b}) {
      if (!t->defined()) continue;
      TORCH_CHECK(t->numel() >= channels && t->device() == like.device(), "fna_ext::mbconv::", step,
                  ": a BN parameter must hold ", channels, " values on ", like.device());
      TORCH_CHECK(!g.defined() || !b.defined() || g.scalar_type() == b.scalar_type(), "fna_ext::mbconv::", step,
                  ": the BN's weight and bias must have one dtype");
      dtype = to_mbconv_dtype(t->scalar_type());
    }
    gamma = g.defined() ? g.contiguous() : at::Tensor();
    beta = b.defined() ? b.contiguous() : at::Tensor();
  }
};

// Coefficients a per-channel kernel writes: contiguous float32 or float64 on the data's device.
void check_coefficients_out(const at::Tensor& t, int64_t channels, const at::Tensor& like, const char* step) {
  TORCH_CHECK(t.is_contiguous() && t.numel() == channels && t.device() == like.device() &&
                  (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              "fna_ext::mbconv::", step, ": per-channel coefficients must be ", channels,
              " contiguous float32 or float64 values on ", like.device());
}

// The input side of a depthwise forward, checked: the input as the kernels address it (a copy
// when its layout is not theirs) and BN1's coefficients, kept alive until the launch is queued.
struct DwForwardInput {
  at::Tensor src, scale, shift;
  int64_t ld = 0;
  DwForwardInput(const Geometry& g, const at::Tensor& in, const at::Tensor& scale1, const at::Tensor& shift1,
                 const at::Tensor& weight, const char* step) {
    src = dw_input(g, in, step, &ld);
    check_dw_weight(g, weight, in, step);
    const auto opmath = opmath_type(in.scalar_type());
    scale = optional_coefficients(scale1, g.e, opmath, in, step);
    shift = scale.defined() ? coefficients(shift1, g.e, opmath, in, step) : at::Tensor();
  }
  // the fields DwForwardArgs and DwNestedForwardArgs share
  template <class Args>
  void fill(Args& args, const Geometry& g, const at::Tensor& weight) const {
    args.s = dw_shape(g);
    args.in = src.data_ptr();
    args.ld = ld;
    args.scale = ptr_or_null(scale);
    args.shift = ptr_or_null(shift);
    args.weight = weight.data_ptr();
  }
};

// Every step sets the data's device first (the coefficient copies and scratch tensors below are
// made on it), launches on the current stream, and reports a failed launch as a torch error.
struct CudaBackend {
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);  // the CUDA caching allocator already reuses blocks
  }

  static void matmul(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

  static void row_stats(const at::Tensor& rows, at::Tensor sum, at::Tensor sumsq) {
    FNA_MBCONV_STEP("row_stats");
    const char* step = "row_stats";
    const c10::cuda::CUDAGuard device_guard(rows.device());
    check_rows(rows, rows, step, "rows");
    const int64_t c = rows.size(1);
    check_sums(sum, c, rows, step);
    check_sums(sumsq, c, rows, step);
    const RowStatsArgs args{rows.data_ptr(), rows.size(0), c, rows.stride(0), sum.data_ptr<double>(),
                            sumsq.data_ptr<double>()};
    check_launch(row_stats_launch(args, to_mbconv_dtype(rows.scalar_type()), c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  static void bn_coefficients(const at::Tensor& sum, const at::Tensor& sumsq, double count, double eps,
                              const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& gamma,
                              const at::Tensor& beta, const at::Tensor& scale, const at::Tensor& shift) {
    FNA_MBCONV_STEP("bn_coefficients");
    const char* step = "bn_coefficients";
    const c10::cuda::CUDAGuard device_guard(mean.device());
    const int64_t c = mean.numel();
    const bool computed = sum.defined();
    if (computed) {
      check_sums(sum, c, mean, step);
      check_sums(sumsq, c, mean, step);
    }
    check_sums(mean, c, mean, step);
    check_sums(invstd, c, mean, step);
    const BnParameters params(gamma, beta, c, mean, step);
    const at::ScalarType opmath = scale.scalar_type();
    check_coefficients_out(scale, c, mean, step);
    check_coefficients_out(shift, c, mean, step);
    const BnCoefficientsArgs args{c, computed ? sum.data_ptr<double>() : nullptr,
                                  computed ? sumsq.data_ptr<double>() : nullptr, count, eps, mean.data_ptr<double>(),
                                  invstd.data_ptr<double>(), ptr_or_null(params.gamma), ptr_or_null(params.beta),
                                  scale.data_ptr(), shift.data_ptr()};
    check_launch(bn_coefficients_launch(args, params.dtype, opmath == at::kDouble, c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  static void bn_backward_coefficients(const at::Tensor& sum_g, const at::Tensor& sum_gh, const at::Tensor& mean,
                                       const at::Tensor& invstd, const at::Tensor& gamma, double count,
                                       const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                                       const at::Tensor& dgamma) {
    FNA_MBCONV_STEP("bn_backward_coefficients");
    const char* step = "bn_backward_coefficients";
    const c10::cuda::CUDAGuard device_guard(sum_g.device());
    const int64_t channels = sum_g.numel();
    for (const at::Tensor* t : {&sum_g, &sum_gh, &mean, &invstd, &dgamma}) check_sums(*t, channels, sum_g, step);
    const BnParameters params(gamma, at::Tensor(), channels, sum_g, step);
    for (const at::Tensor* t : {&a, &b, &c}) check_coefficients_out(*t, channels, sum_g, step);
    const BnBackwardArgs args{channels, sum_g.data_ptr<double>(), sum_gh.data_ptr<double>(), mean.data_ptr<double>(),
                              invstd.data_ptr<double>(), ptr_or_null(params.gamma), count, a.data_ptr(), b.data_ptr(),
                              c.data_ptr(), dgamma.data_ptr<double>()};
    check_launch(bn_backward_launch(args, params.dtype, a.scalar_type() == at::kDouble,
                                    c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  static void affine_act(const at::Tensor& h, const at::Tensor& scale, const at::Tensor& shift, int act,
                         const at::Tensor& residual, at::Tensor out) {
    FNA_MBCONV_STEP("affine_act");
    const char* step = "affine_act";
    const c10::cuda::CUDAGuard device_guard(h.device());
    check_rows(h, h, step, "h");
    check_rows(out, h, step, "out");
    if (residual.defined()) check_rows(residual, h, step, "residual");
    TORCH_CHECK(out.sizes() == h.sizes() && (!residual.defined() || residual.sizes() == h.sizes()),
                "fna_ext::mbconv::affine_act: h, out and residual must have the same sizes");
    const int64_t m = h.size(0), c = h.size(1);
    const auto opmath = opmath_type(h.scalar_type());
    const at::Tensor sc = coefficients(scale, c, opmath, h, step);
    const at::Tensor sh = coefficients(shift, c, opmath, h, step);
    AffineActArgs args{};
    args.h = h.data_ptr();
    args.h_ld = h.stride(0);
    args.m = m;
    args.c = c;
    args.scale = sc.data_ptr();
    args.shift = sh.data_ptr();
    args.act = act;
    args.residual = ptr_or_null(residual);
    args.res_ld = residual.defined() ? residual.stride(0) : 0;
    args.out = out.data_ptr();
    args.out_ld = out.stride(0);
    check_launch(affine_act_launch(args, to_mbconv_dtype(h.scalar_type()), c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  static void grad_sums(const at::Tensor& g, const at::Tensor& h, const at::Tensor& ms, const at::Tensor& mb,
                        int act_kind, at::Tensor sum_g, at::Tensor sum_gh, const at::Tensor& act) {
    FNA_MBCONV_STEP("grad_sums");
    const char* step = "grad_sums";
    const c10::cuda::CUDAGuard device_guard(h.device());
    check_rows(h, h, step, "h");
    check_rows(g, h, step, "g");
    TORCH_CHECK(g.sizes() == h.sizes(), "fna_ext::mbconv::grad_sums: g and h must have the same sizes");
    const int64_t m = h.size(0), c = h.size(1);
    check_sums(sum_g, c, h, step);
    check_sums(sum_gh, c, h, step);
    const auto opmath = opmath_type(h.scalar_type());
    const at::Tensor s = optional_coefficients(ms, c, opmath, h, step);
    const at::Tensor b = s.defined() ? coefficients(mb, c, opmath, h, step) : at::Tensor();
    TORCH_CHECK(!act.defined() || s.defined(), "fna_ext::mbconv::grad_sums: act needs ms and mb");
    if (act.defined()) {
      check_rows(act, h, step, "act");
      TORCH_CHECK(act.sizes() == h.sizes(), "fna_ext::mbconv::grad_sums: act must have h's sizes");
    }
    GradSumsArgs args{};
    args.g = g.data_ptr();
    args.g_ld = g.stride(0);
    args.h = h.data_ptr();
    args.h_ld = h.stride(0);
    args.m = m;
    args.c = c;
    args.ms = ptr_or_null(s);
    args.mb = ptr_or_null(b);
    args.act_kind = act_kind;
    args.sum_g = sum_g.data_ptr<double>();
    args.sum_gh = sum_gh.data_ptr<double>();
    args.act = act.defined() ? act.data_ptr() : nullptr;
    args.act_ld = act.defined() ? act.stride(0) : 0;
    check_launch(grad_sums_launch(args, to_mbconv_dtype(h.scalar_type()), c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  static void grad_apply(const at::Tensor& g, const at::Tensor& h, const at::Tensor& ms, const at::Tensor& mb,
                         int act_kind, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, at::Tensor out) {
    FNA_MBCONV_STEP("grad_apply");
    const char* step = "grad_apply";
    const c10::cuda::CUDAGuard device_guard(h.device());
    check_rows(h, h, step, "h");
    check_rows(g, h, step, "g");
    check_rows(out, h, step, "out");
    TORCH_CHECK(g.sizes() == h.sizes() && out.sizes() == h.sizes(),
                "fna_ext::mbconv::grad_apply: g, h and out must have the same sizes");
    const int64_t channels = h.size(1);
    const auto opmath = opmath_type(h.scalar_type());
    const at::Tensor s = optional_coefficients(ms, channels, opmath, h, step);
    const at::Tensor sb = s.defined() ? coefficients(mb, channels, opmath, h, step) : at::Tensor();
    const at::Tensor ca = coefficients(a, channels, opmath, h, step);
    const at::Tensor cb = coefficients(b, channels, opmath, h, step);
    const at::Tensor cc = coefficients(c, channels, opmath, h, step);
    GradApplyArgs args{};
    args.g = g.data_ptr();
    args.g_ld = g.stride(0);
    args.h = h.data_ptr();
    args.h_ld = h.stride(0);
    args.m = h.size(0);
    args.c = channels;
    args.ms = ptr_or_null(s);
    args.mb = ptr_or_null(sb);
    args.act_kind = act_kind;
    args.a = ca.data_ptr();
    args.b = cb.data_ptr();
    args.cc = cc.data_ptr();
    args.out = out.data_ptr();
    args.out_ld = out.stride(0);
    check_launch(grad_apply_launch(args, to_mbconv_dtype(h.scalar_type()), c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  static void depthwise_forward(const Geometry& g, const at::Tensor& in, const at::Tensor& scale,
                                const at::Tensor& shift, const at::Tensor& weight, at::Tensor out, at::Tensor sum,
                                at::Tensor sumsq) {
    FNA_MBCONV_STEP("depthwise_forward");
    const char* step = "depthwise_forward";
    const c10::cuda::CUDAGuard device_guard(in.device());
    const DwForwardInput input(g, in, scale, shift, weight, step);
    check_dense(out, g.rows_out(), g.e, in, step, "out");
    check_sums(sum, g.e, in, step);
    check_sums(sumsq, g.e, in, step);
    DwForwardArgs args{};
    input.fill(args, g, weight);
    args.out = out.data_ptr();
    args.sum = sum.data_ptr<double>();
    args.sumsq = sumsq.data_ptr<double>();
    check_launch(depthwise_forward_launch(args, to_mbconv_dtype(in.scalar_type()), c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  // A mixture's depthwise convs, one per kernel size in `kernels` (into outs[i], with BN2's sums
  // in sums[i], (2, e)), in one pass (mixture_driver.h).
  static void depthwise_forward_nested(const Geometry& g, const at::Tensor& in, const at::Tensor& scale,
                                       const at::Tensor& shift, const at::Tensor& weight,
                                       const std::vector<int64_t>& kernels, const std::vector<at::Tensor>& outs,
                                       const std::vector<at::Tensor>& sums) {
    FNA_MBCONV_STEP("depthwise_forward_nested");
    const char* step = "depthwise_forward_nested";
    const c10::cuda::CUDAGuard device_guard(in.device());
    const DwForwardInput input(g, in, scale, shift, weight, step);
    TORCH_CHECK(kernels.size() == outs.size() && outs.size() == sums.size(), "fna_ext::mbconv::", step,
                ": one output and one pair of sums per kernel size");
    DwNestedForwardArgs args{};
    input.fill(args, g, weight);
    for (size_t i = 0; i < kernels.size(); ++i) {
      const int64_t k = kernels[i];
      TORCH_CHECK((k == 3 || k == 5 || k == 7) && k <= g.k, "fna_ext::mbconv::", step, ": kernel size ", k,
                  " is not 3, 5 or 7 up to the widest, ", g.k);
      const int64_t slot = (k - 3) / 2;
      TORCH_CHECK(args.out[slot] == nullptr, "fna_ext::mbconv::", step, ": kernel size ", k, " given twice");
      check_dense(outs[i], g.rows_out(), g.e, in, step, "out");
      TORCH_CHECK(sums[i].dim() == 2 && sums[i].size(0) == 2, "fna_ext::mbconv::", step, ": sums must be (2, e)");
      const at::Tensor sum = sums[i][0], sumsq = sums[i][1];
      check_sums(sum, g.e, in, step);
      check_sums(sumsq, g.e, in, step);
      args.out[slot] = outs[i].data_ptr();
      args.sum[slot] = sum.data_ptr<double>();
      args.sumsq[slot] = sumsq.data_ptr<double>();
    }
    check_launch(depthwise_forward_nested_launch(args, to_mbconv_dtype(in.scalar_type()),
                                                 c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  // The mixture's input gradient summed over its kernel sizes in one pass, where
  // nested_depthwise_backward_fits says the kernel takes the shape (mixture_driver.h).
  static bool nested_depthwise_backward_fits(const Geometry& g, at::ScalarType dtype) {
    return depthwise_backward_nested_fits(dw_shape(g), to_mbconv_dtype(dtype));
  }

  static void depthwise_backward_nested(const Geometry& g, const std::vector<int64_t>& kernels,
                                        const std::vector<at::Tensor>& ga2, const std::vector<at::Tensor>& h2,
                                        const std::vector<at::Tensor>& scale2, const std::vector<at::Tensor>& shift2,
                                        const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                                        const std::vector<at::Tensor>& c, const at::Tensor& weight,
                                        at::Tensor grad_in) {
    FNA_MBCONV_STEP("depthwise_backward_nested");
    const char* step = "depthwise_backward_nested";
    const c10::cuda::CUDAGuard device_guard(grad_in.device());
    check_dw_weight(g, weight, grad_in, step);
    check_dense(grad_in, g.rows_in(), g.e, grad_in, step, "grad_in");
    TORCH_CHECK(kernels.size() == ga2.size() && ga2.size() == h2.size() && h2.size() == scale2.size() &&
                    scale2.size() == shift2.size() && shift2.size() == a.size() && a.size() == b.size() &&
                    b.size() == c.size(),
                "fna_ext::mbconv::", step, ": one output gradient and its coefficients per kernel size");
    const auto opmath = opmath_type(grad_in.scalar_type());
    DwNestedBackwardArgs args{};
    args.s = dw_shape(g);
    args.weight = weight.data_ptr();
    args.grad_in = grad_in.data_ptr();
    std::vector<at::Tensor> kept;  // contiguous copies, alive until the launch is queued
    for (size_t i = 0; i < kernels.size(); ++i) {
      const int64_t k = kernels[i];
      TORCH_CHECK((k == 3 || k == 5 || k == 7) && k <= g.k, "fna_ext::mbconv::", step, ": kernel size ", k,
                  " is not 3, 5 or 7 up to the widest, ", g.k);
      DwOutputGradArgs& go = args.go[(k - 3) / 2];
      TORCH_CHECK(go.ga2 == nullptr, "fna_ext::mbconv::", step, ": kernel size ", k, " given twice");
      for (const at::Tensor* t : {&ga2[i], &h2[i]}) {  // as depthwise_backward takes them: copied if strided
        const at::Tensor dense = t->contiguous();
        check_dense(dense, g.rows_out(), g.e, grad_in, step, "an output gradient or h2");
        kept.push_back(dense);
      }
      for (const at::Tensor* t : {&scale2[i], &shift2[i], &a[i], &b[i], &c[i]}) {
        kept.push_back(coefficients(*t, g.e, opmath, grad_in, step));
      }
      const size_t first = kept.size() - 7;
      go = DwOutputGradArgs{kept[first].data_ptr(),     kept[first + 1].data_ptr(), kept[first + 2].data_ptr(),
                            kept[first + 3].data_ptr(), kept[first + 4].data_ptr(), kept[first + 5].data_ptr(),
                            kept[first + 6].data_ptr()};
    }
    check_launch(depthwise_backward_nested_launch(args, to_mbconv_dtype(grad_in.scalar_type()),
                                                  c10::cuda::getCurrentCUDAStream()),
                 step);
  }

  static void depthwise_backward(const Geometry& g, const at::Tensor& ga2, const at::Tensor& h2,
                                 const at::Tensor& scale2, const at::Tensor& shift2, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& c, const at::Tensor& in,
                                 const at::Tensor& scale1, const at::Tensor& shift1, const at::Tensor& weight,
                                 at::Tensor grad_in, at::Tensor grad_weight, at::Tensor sum_g, at::Tensor sum_gh) {
    FNA_MBCONV_STEP("depthwise_backward");
    const char* step = "depthwise_backward";
    const c10::cuda::CUDAGuard device_guard(in.device());
    int64_t ld = 0;
    const at::Tensor src = dw_input(g, in, step, &ld);
    check_dw_weight(g, weight, in, step);
    check_dense(grad_in, g.rows_in(), g.e, in, step, "grad_in");
    const bool weight_grad = grad_weight.defined();  // undefined: not wanted (an architecture step)
    TORCH_CHECK(!weight_grad || (grad_weight.sizes() == weight.sizes() && grad_weight.device() == in.device()),
                "fna_ext::mbconv::depthwise_backward: grad_weight must be shaped like the weight");
    check_sums(sum_g, g.e, in, step);
    check_sums(sum_gh, g.e, in, step);
    // the kernels read the output gradient's parts as contiguous (rows_out, e); no copy normally
    const at::Tensor ga2c = ga2.contiguous(), h2c = h2.contiguous();
    check_dense(ga2c, g.rows_out(), g.e, in, step, "ga2");
    check_dense(h2c, g.rows_out(), g.e, in, step, "h2");
    const auto opmath = opmath_type(in.scalar_type());
    const at::Tensor ms2 = coefficients(scale2, g.e, opmath, in, step);
    const at::Tensor mb2 = coefficients(shift2, g.e, opmath, in, step);
    const at::Tensor ca = coefficients(a, g.e, opmath, in, step);
    const at::Tensor cb = coefficients(b, g.e, opmath, in, step);
    const at::Tensor cc = coefficients(c, g.e, opmath, in, step);
    const at::Tensor sc1 = optional_coefficients(scale1, g.e, opmath, in, step);
    const at::Tensor sh1 = sc1.defined() ? coefficients(shift1, g.e, opmath, in, step) : at::Tensor();
    // the weight gradient: summed in float within each thread and block, across blocks in float64
    // (this buffer), then cast into the centre taps
    const at::Tensor grad_w = weight_grad ? at::zeros({g.e, g.k, g.k}, in.options().dtype(at::kDouble)) : at::Tensor();
    DwBackwardArgs args{};
    args.s = dw_shape(g);
    args.ga2 = ga2c.data_ptr();
    args.h2 = h2c.data_ptr();
    args.scale2 = ms2.data_ptr();
    args.shift2 = mb2.data_ptr();
    args.a = ca.data_ptr();
    args.b = cb.data_ptr();
    args.c = cc.data_ptr();
    args.in = src.data_ptr();
    args.ld = ld;
    args.scale1 = ptr_or_null(sc1);
    args.shift1 = ptr_or_null(sh1);
    args.weight = weight.data_ptr();
    args.grad_in = grad_in.data_ptr();
    args.grad_weight = weight_grad ? grad_w.data_ptr<double>() : nullptr;
    args.sum_g = sum_g.data_ptr<double>();
    args.sum_gh = sum_gh.data_ptr<double>();
    check_launch(depthwise_backward_launch(args, to_mbconv_dtype(in.scalar_type()), c10::cuda::getCurrentCUDAStream()),
                 step);
    if (!weight_grad) return;
    set_centre_taps(grad_weight, g, grad_w);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fna_ext, CUDA, m) {
  register_kernels<CudaBackend>(m);
  register_mixture_kernels<CudaBackend>(m);
}

}  // namespace mbconv
}  // namespace fna_ext
