// The fused sampled-path MBConv, forward and backward, as one sequence of steps shared by the CPU
// and CUDA builds. A Backend supplies the memory-bound kernels (mbconv_cpu.cpp, mbconv_cuda.cu);
// the two 1x1 convolutions are GEMMs (Backend::matmul: MKL through host_matmul or the CPU
// backend's own kernels, or cuBLAS) on slices of the max-size weights, so no weight is copied.
// Backend::empty allocates the large tensors (a block cache on the CPU).
//
// Everything runs on channels-last rows: an (N, C, H, W) activation is an (N*H*W, C) matrix, the
// 1x1 convolutions are plain GEMMs and the per-channel work is contiguous. The forward is
//   h1 = X We[:e]^T                               GEMM, then its per-channel sums
//   h2 = dw_k(relu6(BN1(h1)))                     BN1 and ReLU6 applied as h1 is loaded, + sums
//   h3 = relu6(BN2(h2)) Wp[:, :e]^T               GEMM, then sums
//   out = BN3(h3) (+ x)
// with batch statistics. The pre-BN tensors h1, h2, h3 are what backward keeps; it recomputes
// the activations from them on load.
//
// The "tail" ops run the same steps from the depthwise conv on, on a hidden tensor that is
// already activated (the super network's mixture computes the widest expansion once and slices
// it for every candidate).
#pragma once

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <utility>  // std::declval (FusesProductAddend)
#include <vector>

#include "activation.h"
#include "bn_coefficients.h"

// Each backend kernel starts with this, so its step shows under its own name in torch.profiler.
#define FNA_MBCONV_STEP(name) RECORD_FUNCTION("fna_ext::mbconv::" name, std::vector<c10::IValue>())

namespace fna_ext {
namespace mbconv {

constexpr int64_t kMaxKernel = 7;

struct Geometry {
  int64_t n, h, w, ho, wo;
  int64_t c_in, e, c_out, e_max;
  int64_t k, k_max, stride, pad;
  int64_t dilation;  // the taps' spacing: k x k taps span dilation * (k - 1) + 1 pixels
  // the activations (activation.h) after BN1, applied as the depthwise conv loads its input, and
  // after BN2; a block has one activation, so they differ only where one is absent
  int act_expand = kRelu6, act_depthwise = kRelu6;
  int64_t rows_in() const { return n * h * w; }
  int64_t rows_out() const { return n * ho * wo; }
  int64_t offset() const { return (k_max - k) / 2; }  // of the centre k x k in the K x K weight
};

// The per-channel arithmetic type: float for float, half and bfloat16; double for double.
inline at::ScalarType opmath_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// (N, C, H, W) -> (N*H*W, C) rows; a view when the tensor is channels-last.
inline at::Tensor as_rows(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)});
}

// (rows, C) -> (N, C, H, W) channels-last view.
inline at::Tensor from_rows(const at::Tensor& rows, int64_t n, int64_t h, int64_t w) {
  return rows.view({n, h, w, rows.size(1)}).permute({0, 3, 1, 2});
}

// An (N, C, H, W) tensor as (N, H, W, C) with channel stride 1 and a row stride (ld) that may
// exceed C, in canonical strides: a channel slice of a channels-last tensor is read in place,
// anything else is copied. Dimensions of size 1 carry arbitrary strides (a 1x1 NCHW tensor counts
// as channels-last), so ld comes from the first dimension with more than one entry.
inline at::Tensor as_nhwc_view(const at::Tensor& t) {
  at::Tensor v = t.permute({0, 2, 3, 1});
  const int64_t n = v.size(0), h = v.size(1), w = v.size(2), c = v.size(3);
  int64_t ld = c;
  if (w > 1) {
    ld = v.stride(2);
  } else if (h > 1) {
    ld = v.stride(1);
  } else if (n > 1) {
    ld = v.stride(0);
  }
  const bool in_place = (c <= 1 || v.stride(3) == 1) && ld >= c && (w <= 1 || v.stride(2) == ld) &&
                        (h <= 1 || v.stride(1) == w * ld) && (n <= 1 || v.stride(0) == h * w * ld);
  if (!in_place) {
    v = v.contiguous();
    ld = c;
  }
  return v.as_strided({n, h, w, c}, {h * w * ld, w * ld, ld, 1});
}

// t.narrow(dim, start, length) as one dispatched op: narrow is three (narrow, slice, as_strided),
// and the ops' slices of weights, BN parameters, statistics and sums were a tenth of the host time
// of a fused forward and backward at the search shapes on a GPU, where the step waits on the host.
inline at::Tensor narrowed(const at::Tensor& t, int64_t dim, int64_t start, int64_t length) {
  TORCH_CHECK(start >= 0 && length >= 0 && start + length <= t.size(dim), "fna_ext::mbconv: narrowed [", start, ", ",
              start + length, ") of dimension ", dim, " (size ", t.size(dim), ")");
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[dim] = length;
  return t.as_strided(sizes, t.strides(), t.storage_offset() + start * t.stride(dim));
}

// Zeroes t past the first `count` entries of dimension `dim`: the part of a max-size gradient
// outside the sampled slice, which a GEMM wrote in place (no product to copy, no second fill).
inline void zero_past(const at::Tensor& t, int64_t dim, int64_t count) {
  if (count < t.size(dim)) narrowed(t, dim, count, t.size(dim) - count).zero_();
}

inline at::Tensor slice_or_undefined(const c10::optional<at::Tensor>& t, int64_t channels) {
  return t.has_value() && t->defined() ? narrowed(*t, 0, 0, channels) : at::Tensor();
}

// ---- a BN's per-channel coefficients (bn_coefficients.h) ---------------------------------------
//
// Each is one backend step (a loop on the CPU, one kernel on a GPU) rather than a chain of small
// tensor ops: at the search shapes those launches were most of the fused op's time on a GPU.

// BN as y = h * scale + shift (in `opmath`) for the kernels that apply it on load. With `sum`
// defined, the batch statistics are first computed from sum and sumsq over `count` rows and
// written to mean and invstd (slices of the op's stats); otherwise mean and invstd are read.
template <class Backend>
std::pair<at::Tensor, at::Tensor> bn_forward_coefficients(const at::Tensor& sum, const at::Tensor& sumsq,
                                                          int64_t count, double eps, const at::Tensor& mean,
                                                          const at::Tensor& invstd, const at::Tensor& gamma,
                                                          const at::Tensor& beta, at::ScalarType opmath) {
  // separate allocations: cheaper on the host than views of one (select is a dispatched op too)
  const at::TensorOptions options = mean.options().dtype(opmath);
  at::Tensor scale = at::empty({mean.numel()}, options), shift = at::empty({mean.numel()}, options);
  Backend::bn_coefficients(sum, sumsq, static_cast<double>(count), eps, mean, invstd, gamma, beta, scale, shift);
  return {scale, shift};
}

// The same from statistics already computed.
template <class Backend>
std::pair<at::Tensor, at::Tensor> affine_coefficients(const at::Tensor& mean, const at::Tensor& invstd,
                                                      const at::Tensor& gamma, const at::Tensor& beta,
                                                      at::ScalarType opmath) {
  return bn_forward_coefficients<Backend>(at::Tensor(), at::Tensor(), 0, 0.0, mean, invstd, gamma, beta, opmath);
}

// Backward of a batch-statistics BN, from sum_g = sum(gz) and sum_gh = sum(gz * h) over the rows
// (gz: the gradient at the BN's output, past any ReLU6 mask):
//   dbeta = sum_g, dgamma = sum(gz * xhat) = invstd * (sum_gh - mean * sum_g),
//   dh = gamma * invstd * (gz - dbeta / M - xhat * dgamma / M) = a * gz + b * h + c.
struct BnGrad {
  at::Tensor a, b, c, dgamma, dbeta;  // a, b, c in opmath; dgamma, dbeta in double
};

template <class Backend>
BnGrad bn_grad(const at::Tensor& sum_g, const at::Tensor& sum_gh, const at::Tensor& mean, const at::Tensor& invstd,
               const at::Tensor& gamma, int64_t count, at::ScalarType opmath) {
  BnGrad g;
  g.dbeta = sum_g;
  g.dgamma = at::empty_like(sum_g);
  const at::TensorOptions options = sum_g.options().dtype(opmath);
  g.a = at::empty({sum_g.numel()}, options);
  g.b = at::empty({sum_g.numel()}, options);
  g.c = at::empty({sum_g.numel()}, options);
  Backend::bn_backward_coefficients(sum_g, sum_gh, mean, invstd, gamma, static_cast<double>(count), g.a, g.b, g.c,
                                    g.dgamma);
  return g;
}

// The CPU backend's two steps (the CUDA backend's are kernels in mbconv_cuda.cu): one pass over
// the channels. A BN without parameters counts as gamma = 1, beta = 0.
inline std::vector<double> bn_parameter_values(const at::Tensor& t, int64_t channels, double absent) {
  std::vector<double> values(channels, absent);
  if (!t.defined()) return values;
  const at::Tensor dense = t.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "fna_ext_bn_parameter", [&] {
    const scalar_t* p = dense.data_ptr<scalar_t>();
    for (int64_t j = 0; j < channels; ++j) values[j] = static_cast<double>(p[j]);
  });
  return values;
}

// Writes double values into a contiguous float or double tensor.
class CoefficientWriter {
 public:
  explicit CoefficientWriter(const at::Tensor& t) {
    TORCH_CHECK(t.is_contiguous() && (t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat),
                "fna_ext::mbconv: per-channel coefficients must be contiguous float or double");
    if (t.scalar_type() == at::kDouble) {
      d_ = t.data_ptr<double>();
    } else {
      f_ = t.data_ptr<float>();
    }
  }
  void set(int64_t j, double v) const {
    if (d_ != nullptr) {
      d_[j] = v;
    } else {
      f_[j] = static_cast<float>(v);
    }
  }

 private:
  double* d_ = nullptr;
  float* f_ = nullptr;
};

inline const double* contiguous_doubles(const at::Tensor& t, int64_t channels, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kDouble && t.is_contiguous() && t.numel() >= channels,
              "fna_ext::mbconv: ", name, " must hold ", channels, " contiguous float64 values");
  return t.data_ptr<double>();
}

inline void host_bn_coefficients(const at::Tensor& sum, const at::Tensor& sumsq, double count, double eps,
                                 const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& gamma,
                                 const at::Tensor& beta, const at::Tensor& scale, const at::Tensor& shift) {
  const int64_t c = mean.numel();
  const std::vector<double> g = bn_parameter_values(gamma, c, 1.0), b = bn_parameter_values(beta, c, 0.0);
  double* m = const_cast<double*>(contiguous_doubles(mean, c, "mean"));
  double* is = const_cast<double*>(contiguous_doubles(invstd, c, "invstd"));
  const double* s1 = sum.defined() ? contiguous_doubles(sum, c, "sum") : nullptr;
  const double* s2 = sum.defined() ? contiguous_doubles(sumsq, c, "sumsq") : nullptr;
  const CoefficientWriter to_scale(scale), to_shift(shift);
  for (int64_t j = 0; j < c; ++j) {
    if (s1 != nullptr) bn_statistics(s1[j], s2[j], count, eps, m + j, is + j);
    double sc, sh;
    bn_affine(m[j], is[j], g[j], b[j], &sc, &sh);
    to_scale.set(j, sc);
    to_shift.set(j, sh);
  }
}

inline void host_bn_backward_coefficients(const at::Tensor& sum_g, const at::Tensor& sum_gh, const at::Tensor& mean,
                                          const at::Tensor& invstd, const at::Tensor& gamma, double count,
                                          const at::Tensor& a, const at::Tensor& b, const at::Tensor& cc,
                                          const at::Tensor& dgamma) {
  const int64_t c = sum_g.numel();
  const std::vector<double> g = bn_parameter_values(gamma, c, 1.0);
  const double *sg = contiguous_doubles(sum_g, c, "sum_g"), *sgh = contiguous_doubles(sum_gh, c, "sum_gh");
  const double *m = contiguous_doubles(mean, c, "mean"), *is = contiguous_doubles(invstd, c, "invstd");
  double* dg = const_cast<double*>(contiguous_doubles(dgamma, c, "dgamma"));
  const CoefficientWriter to_a(a), to_b(b), to_c(cc);
  for (int64_t j = 0; j < c; ++j) {
    double va, vb, vc;
    bn_backward(sg[j], sgh[j], m[j], is[j], g[j], count, &va, &vb, &vc, dg + j);
    to_a.set(j, va);
    to_b.set(j, vb);
    to_c.set(j, vc);
  }
}

// The CPU backend's GEMM, out = a b, where MKL runs it:
// - a large output from a short product (the expansion, K = C_in; the backward's ga2 from C_out's
//   gradient): MKL with beta = 0 (mm_out). Against zeroing out first and accumulating (beta = 1),
//   it was 1.00-1.33x as fast on AVX2 and 1.00-1.55x on AVX-512 from K = 24 to 960, and never
//   slower (torch 2.13 and 2.14's MKL, out reused, session 30 in benchmarks/RESULTS.md): 4.8
//   against 5.3 ms at MobileNetV3's ga2 (6400 x 112 x 672), 13.3 against 15.8 at DeepLab's (AVX2);
// - a weight gradient, a reduction over the rows: MKL is faster when the shorter side of the small
//   output is its rows, so a tall output is computed transposed and copied (a few hundred KB).
//   Operands from memory, torch 2.14's MKL: 1.10-1.33x as fast on AVX-512 and 0.99-1.27x on
//   AVX2 at the bench_mbconv shapes' (c, e) and (e, c) weight gradients, and so with torch 2.13's
//   (session 32 in benchmarks/RESULTS.md, bench_host_gemm.py; the opposite rule, chosen on an
//   earlier measurement, was the slower form at every one of them). MobileNetV3's block 3-7%
//   faster on AVX-512, DeepLab's 2-5%.
// With `addend` defined, out = a b + addend: a copy of it, then beta = 1, as fast as a product and
//   a pass that adds it after (an input gradient with its residual; in the AVX2 and AVX-512
//   copies the expansion's backward takes those up to 192 channels on the backend's own narrow
//   product, adding the residual as it stores).
inline void host_matmul(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                        const at::Tensor& addend = at::Tensor()) {
  const bool reduction = a.size(1) > out.size(0) && a.size(1) > out.size(1);
  if (!reduction) {
    if (addend.defined()) {
      out.copy_(addend);
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
    return;
  }
  if (out.size(0) > out.size(1)) {
    out.copy_(at::mm(b.t(), a.t()).t());
  } else {
    at::mm_out(out, a, b);
  }
  if (addend.defined()) out.add_(addend);
}

// Zeroed float64 sums of `sizes` channels each, from one allocation (one fill kernel on a GPU,
// where the kernels add into them with atomics).
inline std::vector<at::Tensor> zeroed_sums(std::initializer_list<int64_t> sizes, const at::Tensor& like) {
  int64_t total = 0;
  for (const int64_t n : sizes) total += n;
  const at::Tensor all = at::zeros({total}, like.options().dtype(at::kDouble));
  std::vector<at::Tensor> parts;
  int64_t offset = 0;
  for (const int64_t n : sizes) {
    parts.push_back(narrowed(all, 0, offset, n));
    offset += n;
  }
  return parts;
}

// An affine BN's parameter gradient: the max-size vector, the first `channels` set; empty when
// the BN has no parameters or no weight gradients are wanted.
inline at::Tensor param_grad(const c10::optional<at::Tensor>& param, const at::Tensor& value, bool wanted) {
  if (!wanted || !param.has_value() || !param->defined()) return at::empty({0}, value.options());
  at::Tensor grad = at::zeros_like(*param);
  narrowed(grad, 0, 0, value.numel()).copy_(value);  // converts from double
  return grad;
}

inline void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& dw_weight,
                         const at::Tensor& project_weight, int64_t kernel_size, int64_t channels, int64_t stride,
                         int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got ", x.sizes());
  // as eager's convolutions do; "same" padding would otherwise give a 0-pixel map an output pixel
  // at stride 2, and the tiled CUDA kernels load pixel (0, 0) of the map for their padding
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, op, ": x has an empty image (H x W = ", x.size(2), " x ", x.size(3),
              ")");
  TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(1) == 1 && dw_weight.size(2) == dw_weight.size(3), op,
              ": dw_weight must be (E_max, 1, K, K), got ", dw_weight.sizes());
  TORCH_CHECK((kernel_size == 3 || kernel_size == 5 || kernel_size == 7) && kernel_size <= dw_weight.size(2) &&
                  (dw_weight.size(2) - kernel_size) % 2 == 0,
              op, ": kernel_size ", kernel_size, " must be 3, 5 or 7 (the search spaces' kernels) and fit centred in the ",
              dw_weight.size(2), "x", dw_weight.size(2), " weight");
  TORCH_CHECK(channels >= 1 && channels <= dw_weight.size(0), op, ": the hidden width ", channels,
              " is outside 1..", dw_weight.size(0), " (E_max)");
  TORCH_CHECK(project_weight.dim() == 4 && project_weight.size(1) == dw_weight.size(0) &&
                  project_weight.size(2) == 1 && project_weight.size(3) == 1,
              op, ": project_weight must be (C_out, E_max, 1, 1), got ", project_weight.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(dilation >= 1, op, ": dilation must be positive, got ", dilation);
  // DeepLab-style output strides trade a stride for dilation; the kernels split a dilated conv
  // into stride-1 phases (mbconv_cpu.cpp), so the two are never combined
  TORCH_CHECK(stride == 1 || dilation == 1, op, ": stride ", stride, " with dilation ", dilation,
              " is not supported (a dilated conv has stride 1)");
  for (const at::Tensor* t : {&dw_weight, &project_weight}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op,
                ": the weights must have x's dtype and device");
  }
}

inline Geometry make_geometry(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& project_weight,
                              int64_t e, int64_t k, int64_t stride, int64_t dilation) {
  Geometry g;
  g.n = x.size(0);
  g.c_in = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.e = e;
  g.e_max = dw_weight.size(0);
  g.c_out = project_weight.size(0);
  g.k = k;
  g.k_max = dw_weight.size(2);
  g.stride = stride;
  g.dilation = dilation;
  g.pad = dilation * (k - 1) / 2;  // "same" padding of the dilated window
  const int64_t extent = dilation * (k - 1) + 1;
  g.ho = (g.h + 2 * g.pad - extent) / stride + 1;
  g.wo = (g.w + 2 * g.pad - extent) / stride + 1;
  return g;
}

inline bool has_residual(const Geometry& g) { return g.stride == 1 && g.c_in == g.c_out; }

// Stats layout (double): [mean, invstd] per BN, e channels for BN1 and BN2, C_out for BN3, and
// with an SE its pooled means (N x e, se_pooled values) between BN1's and BN2's. Also the
// fna_ext::sampled_stats_size op, which the fake kernels ask (registration.cpp).
inline int64_t stats_size(int64_t e, int64_t c_out, bool with_bn1, int64_t se_pooled = 0) {
  return (with_bn1 ? 4 : 2) * e + se_pooled + 2 * c_out;
}

// A backward's stats must be its forward's: the layout depends on the block (with_bn1, an SE).
inline void check_stats(const char* op, const at::Tensor& stats, const Geometry& g, bool with_bn1, bool se) {
  const int64_t expected = stats_size(g.e, g.c_out, with_bn1, se ? g.n * g.e : 0);
  TORCH_CHECK(stats.dim() == 1 && stats.numel() == expected && stats.scalar_type() == at::kDouble, op,
              ": stats must be the forward's float64 stats of this block (", expected, " values",
              se ? ", with the SE's pooled means" : "", "), got ", stats.sizes(), " ", stats.scalar_type());
}

struct TailStats {
  at::Tensor mean2, invstd2, mean3, invstd3;
};

// The SE's pooled means (N, e) in stats (see stats_size): the forward keeps them, so the backward
// has the gate before its pass over the pixels (se_backward_one_pass).
inline at::Tensor se_pooled_stats(const at::Tensor& stats, const Geometry& g) {
  return narrowed(stats, 0, stats.numel() - 2 * g.e - 2 * g.c_out - g.n * g.e, g.n * g.e).view({g.n, g.e});
}

inline TailStats tail_stats(const at::Tensor& stats, const Geometry& g) {
  const int64_t base = stats.numel() - 2 * g.e - 2 * g.c_out;
  return {narrowed(stats, 0, base, g.e), narrowed(stats, 0, base + g.e, g.e),
          narrowed(stats, 0, base + 2 * g.e, g.c_out), narrowed(stats, 0, base + 2 * g.e + g.c_out, g.c_out)};
}

// ---- squeeze-and-excitation ------------------------------------------------------------------
//
// The NAS seeds' SE sits between the depthwise conv's activation and the projection:
//   pooled = mean over pixels of a2 (N, e);  z1 = pooled Wr^T + br;  z2 = inner(z1) We^T + be;
//   a2 <- a2 * gate(z2), per image and channel.
// Its tensors are (N, e) and (N, s): a few small GEMMs in ATen, in the opmath type, against the
// (rows, e) passes around them; backward recomputes them from a2 rather than saving them.

enum Gate : int { kSigmoidGate = 0, kHardSigmoidGate = 1 };

struct SqueezeExcite {
  at::Tensor reduce_w, reduce_b, expand_w, expand_b;  // (s, e), (s), (e, s), (e): max-size weights' slices
  int inner = kRelu;
  int gate = kSigmoidGate;
  bool defined() const { return reduce_w.defined(); }
};

inline at::Tensor activate_tensor(const at::Tensor& pre, int act) {
  switch (act) {
    case kRelu6: return at::hardtanh(pre, 0, 6);
    case kRelu: return at::relu(pre);
    case kHardswish: return at::hardswish(pre);
    case kSwish: return at::silu(pre);
    default: return pre;
  }
}

inline at::Tensor activation_grad_tensor(const at::Tensor& grad, const at::Tensor& pre, int act) {
  switch (act) {
    case kRelu6: return at::hardtanh_backward(grad, pre, 0, 6);
    case kRelu: return at::threshold_backward(grad, pre, 0);
    case kHardswish: return at::hardswish_backward(grad, pre);
    case kSwish: return at::silu_backward(grad, pre);
    default: return grad;
  }
}

struct SeState {
  at::Tensor pooled, z1, inner, z2, gate;  // opmath, (N, e) or (N, s)
};

inline at::Tensor per_image(const at::Tensor& rows, const Geometry& g) { return rows.view({g.n, g.ho * g.wo, g.e}); }

// The gate of every image and channel from the mean over pixels of the ungated activations
// (N, e), opmath.
inline SeState se_forward_from_pooled(const SqueezeExcite& se, const at::Tensor& pooled) {
  const auto opmath = pooled.scalar_type();
  SeState s;
  s.pooled = pooled;
  s.z1 = at::addmm(se.reduce_b.to(opmath), s.pooled, se.reduce_w.to(opmath).t());
  s.inner = activate_tensor(s.z1, se.inner);
  s.z2 = at::addmm(se.expand_b.to(opmath), s.inner, se.expand_w.to(opmath).t());
  s.gate = se.gate == kHardSigmoidGate ? at::hardsigmoid(s.z2) : at::sigmoid(s.z2);
  return s;
}

// The gate of every image and channel from the ungated activations a2 (rows_out, e).
inline SeState se_forward(const SqueezeExcite& se, const at::Tensor& a2, const Geometry& g) {
  const auto opmath = opmath_type(a2.scalar_type());
  return se_forward_from_pooled(se, per_image(a2, g).sum(1, false, opmath).div_(static_cast<double>(g.ho * g.wo)));
}

inline void apply_gate(const at::Tensor& rows, const at::Tensor& gate, const Geometry& g) {
  per_image(rows, g).mul_(gate.to(rows.scalar_type()).unsqueeze(1));
}

struct SeGrads {
  at::Tensor reduce_w, reduce_b, expand_w, expand_b;  // the slices' gradients, opmath; undefined: not wanted
};

// The SE's backward from what it needs of the pixels: the ungated activations' mean (pooled) and
// dgate = sum over pixels of dL/d(gated a2) * a2, both (N, e) opmath. dL/da2 is then
// dL/d(gated a2) * gate + dpooled, per image and channel.
struct SeBackward {
  at::Tensor gate, dpooled;  // (N, e) opmath
  SeGrads grads;
};

inline SeBackward se_backward_from_state(const SqueezeExcite& se, const SeState& s, const at::Tensor& dgate,
                                         const Geometry& g, bool weight_grads) {
  const auto opmath = s.pooled.scalar_type();
  const at::Tensor dz2 = se.gate == kHardSigmoidGate ? at::hardsigmoid_backward(dgate, s.z2)
                                                       : at::sigmoid_backward(dgate, s.gate);
  const at::Tensor dz1 = activation_grad_tensor(at::mm(dz2, se.expand_w.to(opmath)), s.z1, se.inner);
  SeBackward r{s.gate, at::mm(dz1, se.reduce_w.to(opmath)).div_(static_cast<double>(g.ho * g.wo)), {}};
  if (weight_grads) {
    r.grads.expand_w = at::mm(dz2.t(), s.inner);
    r.grads.expand_b = dz2.sum(0);
    r.grads.reduce_w = at::mm(dz1.t(), s.pooled);
    r.grads.reduce_b = dz1.sum(0);
  }
  return r;
}

inline SeBackward se_backward_from_sums(const SqueezeExcite& se, const at::Tensor& pooled, const at::Tensor& dgate,
                                        const Geometry& g, bool weight_grads) {
  return se_backward_from_state(se, se_forward_from_pooled(se, pooled), dgate, g, weight_grads);
}

// ga (rows_out, e) holds dL/d(gated a2) and becomes dL/da2; a2 (ungated) becomes gated.
inline SeGrads se_backward(const SqueezeExcite& se, const at::Tensor& ga, const at::Tensor& a2, const Geometry& g,
                           bool weight_grads) {
  const auto opmath = opmath_type(a2.scalar_type());
  const at::Tensor pooled = per_image(a2, g).sum(1, false, opmath).div_(static_cast<double>(g.ho * g.wo));
  const at::Tensor dgate = (per_image(ga, g).to(opmath) * per_image(a2, g).to(opmath)).sum(1);
  const SeBackward r = se_backward_from_sums(se, pooled, dgate, g, weight_grads);
  apply_gate(ga, r.gate, g);
  per_image(ga, g).add_(r.dpooled.to(ga.scalar_type()).unsqueeze(1));
  apply_gate(a2, r.gate, g);
  return r.grads;
}

// Whether Backend runs the SE's passes over the (rows, e) activations itself (se_sums,
// se_gated_act and se_grad_sums, and the gate applied in depthwise_backward; see tail_forward and
// se_backward_one_pass); the others run them as ATen
// ops (se_forward, apply_gate, se_backward).
template <class Backend, class = void>
struct FusesSePasses : std::false_type {};
template <class Backend>
struct FusesSePasses<Backend, std::void_t<decltype(&Backend::se_sums)>> : std::true_type {};

// The SE of an op's arguments: the first `channels` squeezed and e hidden channels of the
// max-size (S_max, E_max, 1, 1) reduce and (E_max, S_max, 1, 1) expand convs; none when absent.
inline SqueezeExcite make_se(const char* op, const Geometry& g, const at::Tensor& x,
                             const c10::optional<at::Tensor>& reduce_w, const c10::optional<at::Tensor>& reduce_b,
                             const c10::optional<at::Tensor>& expand_w, const c10::optional<at::Tensor>& expand_b,
                             int64_t channels, int64_t inner, int64_t gate) {
  const auto present = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  SqueezeExcite se;
  const bool any = present(reduce_w) || present(reduce_b) || present(expand_w) || present(expand_b);
  if (!any) {
    TORCH_CHECK(channels == 0, op, ": se_channels ", channels, " without SE weights");
    return se;
  }
  TORCH_CHECK(present(reduce_w) && present(reduce_b) && present(expand_w) && present(expand_b), op,
              ": an SE needs all four of se_reduce_weight, se_reduce_bias, se_expand_weight and se_expand_bias");
  const int64_t s_max = reduce_w->size(0);
  TORCH_CHECK(reduce_w->dim() == 4 && reduce_w->size(1) == g.e_max && reduce_w->size(2) == 1 &&
                  reduce_w->size(3) == 1,
              op, ": se_reduce_weight must be (S_max, E_max = ", g.e_max, ", 1, 1), got ", reduce_w->sizes());
  TORCH_CHECK(expand_w->dim() == 4 && expand_w->size(0) == g.e_max && expand_w->size(1) == s_max &&
                  expand_w->size(2) == 1 && expand_w->size(3) == 1,
              op, ": se_expand_weight must be (E_max, S_max) = (", g.e_max, ", ", s_max, ", 1, 1), got ",
              expand_w->sizes());
  TORCH_CHECK(reduce_b->dim() == 1 && reduce_b->size(0) == s_max && expand_b->dim() == 1 &&
                  expand_b->size(0) == g.e_max,
              op, ": the SE biases must be (S_max) and (E_max)");
  TORCH_CHECK(channels >= 1 && channels <= s_max, op, ": se_channels ", channels, " is outside 1..", s_max);
  TORCH_CHECK(valid_activation(inner), op, ": se_activation ", inner, " is not an activation code (0..3)");
  TORCH_CHECK(gate == kSigmoidGate || gate == kHardSigmoidGate, op, ": se_gate must be 0 (sigmoid) or 1 (hard "
              "sigmoid), got ", gate);
  for (const auto* t : {&reduce_w, &reduce_b, &expand_w, &expand_b}) {
    TORCH_CHECK((*t)->scalar_type() == x.scalar_type() && (*t)->device() == x.device(), op,
                ": the SE weights must have x's dtype and device");
  }
  se.reduce_w = narrowed(narrowed(reduce_w->reshape({s_max, g.e_max}), 0, 0, channels), 1, 0, g.e);
  se.reduce_b = narrowed(*reduce_b, 0, 0, channels);
  se.expand_w = narrowed(narrowed(expand_w->reshape({g.e_max, s_max}), 0, 0, g.e), 1, 0, channels);
  se.expand_b = narrowed(*expand_b, 0, 0, g.e);
  se.inner = static_cast<int>(inner);
  se.gate = static_cast<int>(gate);
  return se;
}

// Appends the four max-size SE gradients (zero outside the slice), or four empty tensors.
inline void add_se_grads(std::vector<at::Tensor>& grads, const SeGrads& r, const c10::optional<at::Tensor>& reduce_w,
                         const c10::optional<at::Tensor>& reduce_b, const c10::optional<at::Tensor>& expand_w,
                         const c10::optional<at::Tensor>& expand_b, const at::Tensor& x) {
  if (!r.reduce_w.defined()) {
    grads.insert(grads.end(), 4, at::empty({0}, x.options()));
    return;
  }
  const int64_t s = r.reduce_w.size(0), e = r.reduce_w.size(1);
  at::Tensor rw = at::zeros_like(*reduce_w), rb = at::zeros_like(*reduce_b);
  at::Tensor ew = at::zeros_like(*expand_w), eb = at::zeros_like(*expand_b);
  narrowed(narrowed(rw.view({rw.size(0), rw.size(1)}), 0, 0, s), 1, 0, e).copy_(r.reduce_w);
  narrowed(rb, 0, 0, s).copy_(r.reduce_b);
  narrowed(narrowed(ew.view({ew.size(0), ew.size(1)}), 0, 0, e), 1, 0, s).copy_(r.expand_w);
  narrowed(eb, 0, 0, e).copy_(r.expand_b);
  grads.insert(grads.end(), {rw, rb, ew, eb});
}

inline void check_activation(const char* op, int64_t activation) {
  TORCH_CHECK(valid_activation(activation), op, ": activation ", activation,
              " is not an activation code (0 ReLU6, 1 ReLU, 2 hard-swish, 3 swish)");
}

// The forward's zeroed float64 sums, [BN1's two,] BN2's two and BN3's two, from one fill.
inline std::vector<at::Tensor> forward_sums(const Geometry& g, bool with_bn1, const at::Tensor& stats) {
  return with_bn1 ? zeroed_sums({g.e, g.e, g.e, g.e, g.c_out, g.c_out}, stats)
                  : zeroed_sums({g.e, g.e, g.c_out, g.c_out}, stats);
}

// Whether Backend finishes a GEMM's output with the sums that follow it, in the same step
// (matmul_stats, matmul_grad_sums: the CPU's short product, where a pass would read it back).
template <class Backend, class = void>
struct FusesProductSums : std::false_type {};
template <class Backend>
struct FusesProductSums<Backend, std::void_t<decltype(&Backend::matmul_stats)>> : std::true_type {};

// out = a b, and BN's statistics of out: its column sums and those of its squares.
template <class Backend>
void product_stats(at::Tensor out, const at::Tensor& a, const at::Tensor& b, at::Tensor sum, at::Tensor sumsq) {
  if constexpr (FusesProductSums<Backend>::value) {
    if (Backend::matmul_stats(out, a, b, sum, sumsq)) return;
  }
  Backend::matmul(out, a, b);
  Backend::row_stats(out, sum, sumsq);
}

// g = a b, then a BN's backward sums of g through the activation at h * ms + mb (grad_sums).
template <class Backend>
void product_grad_sums(at::Tensor g, const at::Tensor& a, const at::Tensor& b, const at::Tensor& h,
                       const at::Tensor& ms, const at::Tensor& mb, int act_kind, at::Tensor sum_g,
                       at::Tensor sum_gh, const at::Tensor& act) {
  if constexpr (FusesProductSums<Backend>::value) {
    if (Backend::matmul_grad_sums(g, a, b, h, ms, mb, act_kind, sum_g, sum_gh, act)) return;
  }
  Backend::matmul(g, a, b);
  Backend::grad_sums(g, h, ms, mb, act_kind, sum_g, sum_gh, act);
}

// Whether Backend runs the projection's backward without an SE as one step (projection_backward:
// the CPU rebuilds a2 a piece of rows at a time, for the weight gradient, and never writes it).
template <class Backend, class = void>
struct FusesProjectionBackward : std::false_type {};
template <class Backend>
struct FusesProjectionBackward<Backend, std::void_t<decltype(&Backend::projection_backward)>> : std::true_type {};

// ga2 = gh3 wp and BN2's backward sums through the activation at h2 * ms + mb (product_grad_sums);
// with product defined (a weight step), product = gh3^T a2 too, a2 = act(h2 * ms + mb).
template <class Backend>
void projection_backward(at::Tensor ga2, const at::Tensor& gh3, const at::Tensor& wp, const at::Tensor& h2,
                         const at::Tensor& ms, const at::Tensor& mb, int act_kind, at::Tensor sum_g,
                         at::Tensor sum_gh, at::Tensor product) {
  if constexpr (FusesProjectionBackward<Backend>::value) {
    if (product.defined() &&
        Backend::projection_backward(ga2, gh3, wp, h2, ms, mb, act_kind, sum_g, sum_gh, product)) {
      return;
    }
  }
  // a2 feeds only the weight gradient: an architecture step, which wants none, skips writing it
  const at::Tensor a2 = product.defined() ? Backend::empty(ga2.sizes(), h2.options()) : at::Tensor();
  product_grad_sums<Backend>(ga2, gh3, wp, h2, ms, mb, act_kind, sum_g, sum_gh, a2);
  if (product.defined()) Backend::matmul(product, gh3.t(), a2);
}

// The projection's input act(BN2(h2)), gated by the SE if there is one, written out; the SE's
// pooled means go to `pooled` (see se_pooled_stats).
template <class Backend>
at::Tensor activated_hidden(const Geometry& g, const at::Tensor& h2, const at::Tensor& scale2,
                            const at::Tensor& shift2, const SqueezeExcite& se, const at::Tensor& pooled) {
  at::Tensor a2 = Backend::empty({g.rows_out(), g.e}, h2.options());
  if (!se.defined()) {
    Backend::affine_act(h2, scale2, shift2, g.act_depthwise, at::Tensor(), a2);
  } else if constexpr (FusesSePasses<Backend>::value) {  // the gate from the per-image means, then a2 gated
    const at::Tensor means = Backend::se_sums(h2, scale2, shift2, g.act_depthwise, g);
    pooled.copy_(means);
    Backend::se_gated_act(h2, scale2, shift2, g.act_depthwise, se_forward_from_pooled(se, means).gate, g, a2);
  } else {
    Backend::affine_act(h2, scale2, shift2, g.act_depthwise, at::Tensor(), a2);
    const SeState state = se_forward(se, a2, g);
    pooled.copy_(state.pooled);
    apply_gate(a2, state.gate, g);
  }
  return a2;
}

// Whether Backend multiplies by act(h * scale + shift) itself (activated_matmul: the CPU applies
// it as the GEMM loads h's rows); the others write it out first.
template <class Backend, class = void>
struct FusesActivatedProduct : std::false_type {};
template <class Backend>
struct FusesActivatedProduct<Backend, std::void_t<decltype(&Backend::activated_matmul)>> : std::true_type {};

// h3 = (a2 gated by the SE) Wp^T with the gate folded into the weight: image n's rows of the
// ungated a2 times diag(gate_n) Wp^T, one batched product. a2 is written once, by the pass that
// sums it for the gate (se_sums with an output), where the gated a2 took a pass of its own
// (se_gated_act: read h2 again, write a2). The weights are N x c_out x e values (4.8 MB at
// MobileNetV3's 20x20 block of the benchmark, batch 16).
template <class Backend>
void project_gate_in_weight(const Geometry& g, const at::Tensor& h2, const at::Tensor& scale2,
                            const at::Tensor& shift2, const SqueezeExcite& se, const at::Tensor& wp_t, at::Tensor h3,
                            const at::Tensor& pooled_out) {
  const at::Tensor a2 = Backend::empty({g.rows_out(), g.e}, h2.options());
  const at::Tensor pooled = Backend::se_sums(h2, scale2, shift2, g.act_depthwise, g, a2);
  pooled_out.copy_(pooled);
  const at::Tensor gate = se_forward_from_pooled(se, pooled).gate;  // (N, e), h2's dtype as pooled
  // (N, c_out, e) of contiguous rows (transposed, MKL takes it as it is), in the backend's
  // reused memory: in fresh memory the multiply took 1.4 ms a step at MobileNetV3 (AVX2, inside
  // the block), against 0.1 alone
  at::Tensor weights = Backend::empty({g.n, g.c_out, g.e}, h2.options());
  at::mul_out(weights, wp_t.t().unsqueeze(0), gate.unsqueeze(1));
  const int64_t pixels = g.ho * g.wo;
  at::Tensor per_image_h3 = h3.view({g.n, pixels, g.c_out});
  at::bmm_out(per_image_h3, a2.view({g.n, pixels, g.e}), weights.transpose(1, 2));
}

// h3 = act(BN2(h2)) Wp^T (gated by the SE, whose pooled means go to `pooled`).
template <class Backend>
void project(const Geometry& g, const at::Tensor& h2, const at::Tensor& scale2, const at::Tensor& shift2,
             const SqueezeExcite& se, const at::Tensor& wp_t, at::Tensor h3, const at::Tensor& pooled) {
  if constexpr (FusesActivatedProduct<Backend>::value) {
    if (!se.defined()) {
      Backend::activated_matmul(h3, h2, scale2, shift2, g.act_depthwise, wp_t);
      return;
    }
  }
  if constexpr (FusesSePasses<Backend>::value) {
    // where the backend's own product takes the shape, it keeps it (one plain product)
    if (se.defined() && !Backend::own_product(h3, h2, wp_t)) {
      project_gate_in_weight<Backend>(g, h2, scale2, shift2, se, wp_t, h3, pooled);
      return;
    }
  }
  Backend::matmul(h3, activated_hidden<Backend>(g, h2, scale2, shift2, se, pooled), wp_t);
}

// Whether Backend's matmul takes an addend, out = a b + addend (the CPU's: see host_matmul).
template <class Backend, class = void>
struct FusesProductAddend : std::false_type {};
template <class Backend>
struct FusesProductAddend<Backend, std::void_t<decltype(Backend::matmul(std::declval<at::Tensor>(),
                                                                        std::declval<at::Tensor>(),
                                                                        std::declval<at::Tensor>(),
                                                                        std::declval<at::Tensor>()))>>
    : std::true_type {};

// out = a b + addend (a b where addend is undefined): the input gradient of a block with a residual.
template <class Backend>
void product_plus(at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& addend) {
  if constexpr (FusesProductAddend<Backend>::value) {
    Backend::matmul(out, a, b, addend);
  } else {
    Backend::matmul(out, a, b);
    if (addend.defined()) out.add_(addend);
  }
}

// Whether Backend runs BN1's backward and the expansion's two GEMMs as one step
// (expansion_backward: the CPU builds dh1 a piece of rows at a time, for both products, or for
// the input gradient only where MKL runs the weight gradient after).
template <class Backend, class = void>
struct FusesExpansionBackward : std::false_type {};
template <class Backend>
struct FusesExpansionBackward<Backend, std::void_t<decltype(&Backend::expansion_backward)>> : std::true_type {};

// BN1's backward, dh1 = a gz + b h1 + c (gz past BN1's activation; it becomes dh1 where written
// out), then grad_x = dh1 We + residual (the residual's gradient, where defined) and, where
// product is defined, product = dh1^T x.
template <class Backend>
void expansion_backward(const at::Tensor& gz, const at::Tensor& h1, const BnGrad& bn1, const at::Tensor& x_rows,
                        const at::Tensor& we, at::Tensor grad_x, at::Tensor product, const at::Tensor& residual) {
  if constexpr (FusesExpansionBackward<Backend>::value) {
    if (Backend::expansion_backward(gz, h1, bn1.a, bn1.b, bn1.c, x_rows, we, grad_x, product, residual)) return;
  }
  Backend::grad_apply(gz, h1, at::Tensor(), at::Tensor(), kIdentity, bn1.a, bn1.b, bn1.c, gz);
  if (product.defined()) Backend::matmul(product, gz.t(), x_rows);
  product_plus<Backend>(grad_x, gz, we, residual);
}

// From the depthwise conv on. `in` is (N, H, W, e) with channel stride 1 (see as_nhwc_view);
// with scale1/shift1 defined it holds pre-BN1 values and BN1 + ReLU6 are applied on load.
// `sums` ends with BN2's and BN3's (forward_sums).
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> tail_forward(
    const Geometry& g, const at::Tensor& x_rows, const at::Tensor& in, const at::Tensor& scale1,
    const at::Tensor& shift1, const at::Tensor& dw_weight, const at::Tensor& project_weight,
    const at::Tensor& bn2_w, const at::Tensor& bn2_b, const at::Tensor& bn3_w, const at::Tensor& bn3_b,
    const SqueezeExcite& se, double eps, const at::Tensor& stats, const std::vector<at::Tensor>& sums) {
  const auto opmath = opmath_type(in.scalar_type());
  const TailStats s = tail_stats(stats, g);
  const size_t last = sums.size();
  const at::Tensor &sum = sums[last - 4], &sumsq = sums[last - 3], &sum3 = sums[last - 2], &sumsq3 = sums[last - 1];
  at::Tensor h2 = Backend::empty({g.rows_out(), g.e}, in.options());
  Backend::depthwise_forward(g, in, scale1, shift1, dw_weight.contiguous(), h2, sum, sumsq);
  auto [scale2, shift2] =
      bn_forward_coefficients<Backend>(sum, sumsq, g.rows_out(), eps, s.mean2, s.invstd2, bn2_w, bn2_b, opmath);
  const at::Tensor wp = narrowed(project_weight.reshape({g.c_out, g.e_max}), 1, 0, g.e);
  at::Tensor h3 = Backend::empty({g.rows_out(), g.c_out}, in.options());
  project<Backend>(g, h2, scale2, shift2, se, wp.t(), h3, se.defined() ? se_pooled_stats(stats, g) : at::Tensor());
  Backend::row_stats(h3, sum3, sumsq3);
  auto [scale3, shift3] =
      bn_forward_coefficients<Backend>(sum3, sumsq3, g.rows_out(), eps, s.mean3, s.invstd3, bn3_w, bn3_b, opmath);
  at::Tensor out = Backend::empty({g.rows_out(), g.c_out}, in.options());
  Backend::affine_act(h3, scale3, shift3, kIdentity, has_residual(g) ? x_rows : at::Tensor(), out);
  return {out, h2, h3};
}

// An SE block's backward from ga2 = dL/d(gated a2) on, where the backend fuses the SE's passes.
// The gate comes from the forward's pooled means (se_pooled_stats), so one pass over ga2 and h2
// (se_grad_sums) gives every per-image sum and, in a weight step (product defined), writes the
// gated a2 for the projection's weight gradient gh3^T a2. From the sums come the SE's backward
// and BN2's backward sums (sg2, sgh2); dL/da2 = ga2 gate + dpooled is left to the depthwise
// backward, which applies it as it loads ga2: returns (gate, dpooled), (N, e) in h2's dtype.
// Two passes, the SE's sums and then one that wrote dL/da2 and the gated a2 back, read ga2 and
// h2 twice and wrote two tensors of the block's largest size.
template <class Backend>
std::pair<at::Tensor, at::Tensor> se_backward_one_pass(const Geometry& g, const SqueezeExcite& se,
                                                       const at::Tensor& stats, const at::Tensor& ga2,
                                                       const at::Tensor& gh3, const at::Tensor& h2,
                                                       const at::Tensor& scale2, const at::Tensor& shift2,
                                                       at::Tensor sg2, at::Tensor sgh2, at::Tensor product,
                                                       SeGrads& grads) {
  const auto dtype = h2.scalar_type();
  const SeState forward = se_forward_from_pooled(se, se_pooled_stats(stats, g).to(dtype));
  const at::Tensor gate = forward.gate.to(dtype).contiguous();
  const at::Tensor a2 = product.defined() ? Backend::empty({g.rows_out(), g.e}, h2.options()) : at::Tensor();
  // (5, N, e) float64: ga2 a, d ga2, d, d ga2 h2, d h2 with a the ungated activation, d its derivative
  const at::Tensor sums = Backend::se_grad_sums(ga2, h2, scale2, shift2, g.act_depthwise, g, gate, a2);
  const SeBackward b = se_backward_from_state(se, forward, sums[0].to(dtype), g, product.defined());
  grads = b.grads;
  const at::Tensor dpooled = b.dpooled.to(dtype).contiguous();
  // gz = d (ga2 gate + dpooled): the gate and dpooled as the depthwise backward applies them
  const at::Tensor gate64 = gate.to(at::kDouble), dpooled64 = dpooled.to(at::kDouble);
  sg2.copy_((sums[1] * gate64 + sums[2] * dpooled64).sum(0));
  sgh2.copy_((sums[3] * gate64 + sums[4] * dpooled64).sum(0));
  if (product.defined()) Backend::matmul(product, gh3.t(), a2);
  return {gate, dpooled};
}

struct TailGrads {
  at::Tensor grad_in;  // (rows_in, e): gz1 (past BN1's ReLU6 mask) with on-load BN1, else d/d hidden
  at::Tensor grad_dw, grad_project;
  BnGrad bn2, bn3;
  at::Tensor sum_g1, sum_gh1;  // for BN1's backward, when it was applied on load
  SeGrads se;
};

template <class Backend>
TailGrads tail_backward(const Geometry& g, const at::Tensor& grad_rows, const at::Tensor& in,
                        const at::Tensor& scale1, const at::Tensor& shift1, const at::Tensor& dw_weight,
                        const at::Tensor& project_weight, const at::Tensor& bn2_w, const at::Tensor& bn2_b,
                        const at::Tensor& bn3_w, const SqueezeExcite& se, const at::Tensor& h2,
                        const at::Tensor& h3, const at::Tensor& stats, bool weight_grads) {
  const auto opmath = opmath_type(in.scalar_type());
  const TailStats s = tail_stats(stats, g);
  TailGrads r;
  // BN3 (no activation after it)
  const std::vector<at::Tensor> sums = zeroed_sums({g.c_out, g.c_out, g.e, g.e, g.e, g.e}, stats);
  const at::Tensor &sg = sums[0], &sgh = sums[1], &sg2 = sums[2], &sgh2 = sums[3];
  Backend::grad_sums(grad_rows, h3, at::Tensor(), at::Tensor(), kIdentity, sg, sgh, at::Tensor());
  r.bn3 = bn_grad<Backend>(sg, sgh, s.mean3, s.invstd3, bn3_w, g.rows_out(), opmath);
  at::Tensor gh3 = Backend::empty({g.rows_out(), g.c_out}, h3.options());
  Backend::grad_apply(grad_rows, h3, at::Tensor(), at::Tensor(), kIdentity, r.bn3.a, r.bn3.b, r.bn3.c, gh3);

  // projection GEMMs: ga2 = gh3 Wp, the activation's gradient and BN2's sums, and with the weight
  // gradients a2 rebuilt for gh3^T a2, as one step by pieces where the backend runs it
  // (projection_backward); with an SE, ga2 is written first and a2 rebuilt first: the gate's
  // gradient needs them
  const at::Tensor wp = narrowed(project_weight.reshape({g.c_out, g.e_max}), 1, 0, g.e);
  at::Tensor ga2 = Backend::empty({g.rows_out(), g.e}, h2.options());
  auto [scale2, shift2] = affine_coefficients<Backend>(s.mean2, s.invstd2, bn2_w, bn2_b, opmath);
  // an architecture step freezes the weights: no weight gradients then
  at::Tensor grad_project = weight_grads ? at::empty({g.c_out, g.e_max}, h3.options()) : at::Tensor();
  // rows of stride e_max: BLAS's ldc
  const at::Tensor product = weight_grads ? narrowed(grad_project, 1, 0, g.e) : at::Tensor();
  at::Tensor se_gate, se_dpooled;  // for the depthwise backward to apply as it loads ga2 (FusesSePasses)
  if (!se.defined()) {
    projection_backward<Backend>(ga2, gh3, wp, h2, scale2, shift2, g.act_depthwise, sg2, sgh2, product);
  } else {
    Backend::matmul(ga2, gh3, wp);
    if constexpr (FusesSePasses<Backend>::value) {
      std::tie(se_gate, se_dpooled) =
          se_backward_one_pass<Backend>(g, se, stats, ga2, gh3, h2, scale2, shift2, sg2, sgh2, product, r.se);
    } else {
      at::Tensor a2 = Backend::empty({g.rows_out(), g.e}, h2.options());
      Backend::affine_act(h2, scale2, shift2, g.act_depthwise, at::Tensor(), a2);
      r.se = se_backward(se, ga2, a2, g, weight_grads);
      Backend::grad_sums(ga2, h2, scale2, shift2, g.act_depthwise, sg2, sgh2, at::Tensor());
      if (weight_grads) Backend::matmul(product, gh3.t(), a2);
    }
  }
  r.bn2 = bn_grad<Backend>(sg2, sgh2, s.mean2, s.invstd2, bn2_w, g.rows_out(), opmath);
  if (weight_grads) {
    zero_past(grad_project, 1, g.e);
    r.grad_project = grad_project.view(project_weight.sizes());
    r.grad_dw = at::zeros(dw_weight.sizes(), dw_weight.options());
  }

  // depthwise: both gradients, BN2's backward applied on load, BN1's mask and sums on store
  r.grad_in = Backend::empty({g.rows_in(), g.e}, h2.options());
  r.sum_g1 = sums[4];
  r.sum_gh1 = sums[5];
  if constexpr (FusesSePasses<Backend>::value) {
    Backend::depthwise_backward(g, ga2, h2, scale2, shift2, r.bn2.a, r.bn2.b, r.bn2.c, in, scale1, shift1,
                                dw_weight.contiguous(), r.grad_in, r.grad_dw, r.sum_g1, r.sum_gh1, se_gate, se_dpooled);
  } else {
    Backend::depthwise_backward(g, ga2, h2, scale2, shift2, r.bn2.a, r.bn2.b, r.bn2.c, in, scale1, shift1,
                                dw_weight.contiguous(), r.grad_in, r.grad_dw, r.sum_g1, r.sum_gh1);
  }
  return r;
}

// Appends an affine BN's two parameter gradients (see param_grad).
inline void add_bn_grads(std::vector<at::Tensor>& grads, const c10::optional<at::Tensor>& weight,
                         const c10::optional<at::Tensor>& bias, const BnGrad& bn, const at::Tensor& x, bool wanted) {
  grads.push_back(param_grad(weight, bn.dgamma, wanted));
  grads.push_back(param_grad(bias, bn.dbeta, wanted));
}

// A weight gradient, or an empty tensor where it was not computed.
inline at::Tensor weight_or_empty(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad : at::empty({0}, like.options());
}

// The optional tail of every op's arguments: the block's activation and its SE (make_se).
#define FNA_MBCONV_ATTRIBUTE_ARGS                                                                           \
  int64_t activation, const c10::optional<at::Tensor>& se_reduce_w, const c10::optional<at::Tensor>& se_reduce_b, \
      const c10::optional<at::Tensor>& se_expand_w, const c10::optional<at::Tensor>& se_expand_b,                 \
      int64_t se_channels, int64_t se_activation, int64_t se_gate
#define FNA_MBCONV_SE_ARGS se_reduce_w, se_reduce_b, se_expand_w, se_expand_b, se_channels, se_activation, se_gate

// sampled_mbconv_forward -> (out, h1, h2, h3, stats)
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sampled_mbconv_forward(
    const at::Tensor& x, const at::Tensor& expand_weight, const at::Tensor& dw_weight,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn1_w, const c10::optional<at::Tensor>& bn1_b,
    const c10::optional<at::Tensor>& bn2_w, const c10::optional<at::Tensor>& bn2_b,
    const c10::optional<at::Tensor>& bn3_w, const c10::optional<at::Tensor>& bn3_b, int64_t kernel_size,
    int64_t expand_channels, int64_t stride, double eps, int64_t dilation, FNA_MBCONV_ATTRIBUTE_ARGS) {
  const char* op = "fna_ext::sampled_mbconv_forward";
  check_inputs(op, x, dw_weight, project_weight, kernel_size, expand_channels, stride, dilation);
  check_activation(op, activation);
  TORCH_CHECK(expand_weight.dim() == 4 && expand_weight.size(0) == dw_weight.size(0) &&
                  expand_weight.size(1) == x.size(1) && expand_weight.numel() == expand_weight.size(0) * x.size(1),
              op, ": expand_weight must be (E_max, C_in, 1, 1), got ", expand_weight.sizes());
  Geometry g = make_geometry(x, dw_weight, project_weight, expand_channels, kernel_size, stride, dilation);
  g.act_expand = g.act_depthwise = static_cast<int>(activation);
  const SqueezeExcite se = make_se(op, g, x, FNA_MBCONV_SE_ARGS);
  const auto opmath = opmath_type(x.scalar_type());
  const at::Tensor x_rows = as_rows(x.contiguous(at::MemoryFormat::ChannelsLast));
  at::Tensor stats = at::empty({stats_size(g.e, g.c_out, true, se.defined() ? g.n * g.e : 0)},
                               x.options().dtype(at::kDouble));

  const at::Tensor we = narrowed(expand_weight.reshape({g.e_max, g.c_in}), 0, 0, g.e);
  at::Tensor h1 = Backend::empty({g.rows_in(), g.e}, x.options());
  const std::vector<at::Tensor> sums = forward_sums(g, true, stats);
  product_stats<Backend>(h1, x_rows, we.t(), sums[0], sums[1]);
  at::Tensor mean1 = narrowed(stats, 0, 0, g.e), invstd1 = narrowed(stats, 0, g.e, g.e);
  auto [scale1, shift1] = bn_forward_coefficients<Backend>(sums[0], sums[1], g.rows_in(), eps, mean1, invstd1,
                                                           slice_or_undefined(bn1_w, g.e),
                                                           slice_or_undefined(bn1_b, g.e), opmath);
  auto [out, h2, h3] = tail_forward<Backend>(
      g, x_rows, h1.view({g.n, g.h, g.w, g.e}), scale1, shift1, dw_weight, project_weight,
      slice_or_undefined(bn2_w, g.e), slice_or_undefined(bn2_b, g.e), slice_or_undefined(bn3_w, g.c_out),
      slice_or_undefined(bn3_b, g.c_out), se, eps, stats, sums);
  return {from_rows(out, g.n, g.ho, g.wo), from_rows(h1, g.n, g.h, g.w), from_rows(h2, g.n, g.ho, g.wo),
          from_rows(h3, g.n, g.ho, g.wo), stats};
}

// depthwise_project_forward -> (out, h2, h3, stats)
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> depthwise_project_forward(
    const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& dw_weight, const at::Tensor& project_weight,
    const c10::optional<at::Tensor>& bn2_w, const c10::optional<at::Tensor>& bn2_b,
    const c10::optional<at::Tensor>& bn3_w, const c10::optional<at::Tensor>& bn3_b, int64_t kernel_size,
    int64_t stride, double eps, int64_t dilation, FNA_MBCONV_ATTRIBUTE_ARGS) {
  const char* op = "fna_ext::depthwise_project_forward";
  TORCH_CHECK(hidden.dim() == 4 && hidden.size(0) == x.size(0) && hidden.size(2) == x.size(2) &&
                  hidden.size(3) == x.size(3) && hidden.scalar_type() == x.scalar_type(),
              op, ": hidden must be (N, e, H, W) like x, got ", hidden.sizes(), " and ", x.sizes());
  check_inputs(op, x, dw_weight, project_weight, kernel_size, hidden.size(1), stride, dilation);
  check_activation(op, activation);
  Geometry g = make_geometry(x, dw_weight, project_weight, hidden.size(1), kernel_size, stride, dilation);
  g.act_depthwise = static_cast<int>(activation);
  const SqueezeExcite se = make_se(op, g, x, FNA_MBCONV_SE_ARGS);
  const at::Tensor x_rows = has_residual(g) ? as_rows(x.contiguous(at::MemoryFormat::ChannelsLast)) : at::Tensor();
  at::Tensor stats = at::empty({stats_size(g.e, g.c_out, false, se.defined() ? g.n * g.e : 0)},
                               x.options().dtype(at::kDouble));
  auto [out, h2, h3] = tail_forward<Backend>(
      g, x_rows, as_nhwc_view(hidden), at::Tensor(), at::Tensor(), dw_weight, project_weight,
      slice_or_undefined(bn2_w, g.e), slice_or_undefined(bn2_b, g.e), slice_or_undefined(bn3_w, g.c_out),
      slice_or_undefined(bn3_b, g.c_out), se, eps, stats, forward_sums(g, false, stats));
  return {from_rows(out, g.n, g.ho, g.wo), from_rows(h2, g.n, g.ho, g.wo), from_rows(h3, g.n, g.ho, g.wo), stats};
}

// sampled_mbconv_backward -> grads of (x, expand_weight, dw_weight, project_weight, bn1..bn3
// weight and bias, the SE's reduce weight and bias and expand weight and bias); max-size, zero
// outside the slice; an empty tensor where there is no input.
template <class Backend>
std::vector<at::Tensor> sampled_mbconv_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& expand_weight, const at::Tensor& dw_weight,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn1_w, const c10::optional<at::Tensor>& bn1_b,
    const c10::optional<at::Tensor>& bn2_w, const c10::optional<at::Tensor>& bn2_b,
    const c10::optional<at::Tensor>& bn3_w, const c10::optional<at::Tensor>& bn3_b, const at::Tensor& h1,
    const at::Tensor& h2, const at::Tensor& h3, const at::Tensor& stats, int64_t kernel_size, int64_t stride,
    bool weight_grads, int64_t dilation, FNA_MBCONV_ATTRIBUTE_ARGS) {
  const char* op = "fna_ext::sampled_mbconv_backward";
  check_inputs(op, x, dw_weight, project_weight, kernel_size, h1.size(1), stride, dilation);
  check_activation(op, activation);
  Geometry g = make_geometry(x, dw_weight, project_weight, h1.size(1), kernel_size, stride, dilation);
  g.act_expand = g.act_depthwise = static_cast<int>(activation);
  const SqueezeExcite se = make_se(op, g, x, FNA_MBCONV_SE_ARGS);
  check_stats(op, stats, g, true, se.defined());
  const auto opmath = opmath_type(x.scalar_type());
  const at::Tensor x_rows = as_rows(x.contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor grad_rows = as_rows(grad_out.contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor h1_rows = as_rows(h1), mean1 = narrowed(stats, 0, 0, g.e), invstd1 = narrowed(stats, 0, g.e, g.e);
  const at::Tensor gamma1 = slice_or_undefined(bn1_w, g.e);
  auto [scale1, shift1] =
      affine_coefficients<Backend>(mean1, invstd1, gamma1, slice_or_undefined(bn1_b, g.e), opmath);
  TailGrads t = tail_backward<Backend>(g, grad_rows, h1_rows.view({g.n, g.h, g.w, g.e}), scale1, shift1, dw_weight,
                                       project_weight, slice_or_undefined(bn2_w, g.e),
                                       slice_or_undefined(bn2_b, g.e), slice_or_undefined(bn3_w, g.c_out), se,
                                       as_rows(h2), as_rows(h3), stats, weight_grads);
  // BN1's backward (t.grad_in already carries the activation's gradient), then the expansion GEMMs
  const BnGrad bn1 = bn_grad<Backend>(t.sum_g1, t.sum_gh1, mean1, invstd1, gamma1, g.rows_in(), opmath);
  const at::Tensor we = narrowed(expand_weight.reshape({g.e_max, g.c_in}), 0, 0, g.e);
  at::Tensor grad_expand = at::empty({0}, x.options());
  at::Tensor product;  // the weight gradient's sampled rows, written in place
  if (weight_grads) {
    grad_expand = at::empty({g.e_max, g.c_in}, x.options());
    product = narrowed(grad_expand, 0, 0, g.e);  // contiguous rows
  }
  at::Tensor grad_x = Backend::empty({g.rows_in(), g.c_in}, x.options());
  expansion_backward<Backend>(t.grad_in, h1_rows, bn1, x_rows, we, grad_x, product,
                              has_residual(g) ? grad_rows : at::Tensor());
  if (weight_grads) {
    zero_past(grad_expand, 0, g.e);
    grad_expand = grad_expand.view(expand_weight.sizes());
  }
  std::vector<at::Tensor> grads{from_rows(grad_x, g.n, g.h, g.w), grad_expand, weight_or_empty(t.grad_dw, x),
                                weight_or_empty(t.grad_project, x)};
  add_bn_grads(grads, bn1_w, bn1_b, bn1, x, weight_grads);
  add_bn_grads(grads, bn2_w, bn2_b, t.bn2, x, weight_grads);
  add_bn_grads(grads, bn3_w, bn3_b, t.bn3, x, weight_grads);
  add_se_grads(grads, t.se, se_reduce_w, se_reduce_b, se_expand_w, se_expand_b, x);
  return grads;
}

// depthwise_project_backward -> grads of (x, hidden, dw_weight, project_weight, bn2 and bn3
// weight and bias, the SE's four); x's is empty when there is no residual (hidden is x's only
// other use).
template <class Backend>
std::vector<at::Tensor> depthwise_project_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& dw_weight,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn2_w, const c10::optional<at::Tensor>& bn2_b,
    const c10::optional<at::Tensor>& bn3_w, const c10::optional<at::Tensor>& bn3_b, const at::Tensor& h2,
    const at::Tensor& h3, const at::Tensor& stats, int64_t kernel_size, int64_t stride, bool weight_grads,
    int64_t dilation, FNA_MBCONV_ATTRIBUTE_ARGS) {
  const char* op = "fna_ext::depthwise_project_backward";
  check_inputs(op, x, dw_weight, project_weight, kernel_size, hidden.size(1), stride, dilation);
  check_activation(op, activation);
  Geometry g = make_geometry(x, dw_weight, project_weight, hidden.size(1), kernel_size, stride, dilation);
  g.act_depthwise = static_cast<int>(activation);
  const SqueezeExcite se = make_se(op, g, x, FNA_MBCONV_SE_ARGS);
  check_stats(op, stats, g, false, se.defined());
  const at::Tensor grad_rows = as_rows(grad_out.contiguous(at::MemoryFormat::ChannelsLast));
  TailGrads t = tail_backward<Backend>(g, grad_rows, as_nhwc_view(hidden), at::Tensor(), at::Tensor(), dw_weight,
                                       project_weight, slice_or_undefined(bn2_w, g.e),
                                       slice_or_undefined(bn2_b, g.e), slice_or_undefined(bn3_w, g.c_out), se,
                                       as_rows(h2), as_rows(h3), stats, weight_grads);
  // a copy: an op's output must not alias its input
  at::Tensor grad_x = at::empty({0}, x.options());
  if (has_residual(g)) grad_x = from_rows(Backend::empty(grad_rows.sizes(), x.options()).copy_(grad_rows), g.n, g.h, g.w);
  std::vector<at::Tensor> grads{grad_x, from_rows(t.grad_in, g.n, g.h, g.w), weight_or_empty(t.grad_dw, x),
                                weight_or_empty(t.grad_project, x)};
  add_bn_grads(grads, bn2_w, bn2_b, t.bn2, x, weight_grads);
  add_bn_grads(grads, bn3_w, bn3_b, t.bn3, x, weight_grads);
  add_se_grads(grads, t.se, se_reduce_w, se_reduce_b, se_expand_w, se_expand_b, x);
  return grads;
}

// The depthwise weight gradient's centre k x k of the first e channels, from (e, k, k) values.
inline void set_centre_taps(at::Tensor grad_weight, const Geometry& g, const at::Tensor& taps) {
  const int64_t off = g.offset();
  narrowed(narrowed(narrowed(grad_weight, 0, 0, g.e), 2, off, g.k), 3, off, g.k).copy_(taps.view({g.e, 1, g.k, g.k}));
}

// The four ops' kernels for one device, in a TORCH_LIBRARY_IMPL block.
template <class Backend>
void register_kernels(torch::Library& m) {
  m.impl("sampled_mbconv_forward", &sampled_mbconv_forward<Backend>);
  m.impl("sampled_mbconv_backward", &sampled_mbconv_backward<Backend>);
  m.impl("depthwise_project_forward", &depthwise_project_forward<Backend>);
  m.impl("depthwise_project_backward", &depthwise_project_backward<Backend>);
}

}  // namespace mbconv
}  // namespace fna_ext
