// Schemas of every fna_ext op. Kernels live next to their op (nms/nms_cpu.cpp, ...) in
// TORCH_LIBRARY_IMPL blocks; fake (meta) kernels and autograd are registered from Python
// (fna_ext/ops), following PyTorch's custom-op guidance.
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "cpu_isa.h"
#include "host_cache.h"
#include "mbconv/mixture_driver.h"

namespace fna_ext {
namespace {

std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

// What this binary was compiled against, as a JSON object: Python compares it with the torch
// it runs under and warns on a mismatch.
std::string build_info() {
#ifdef FNA_EXT_WITH_CUDA
  const char* cuda = "true";
#else
  const char* cuda = "false";
#endif
#ifdef _GLIBCXX_USE_CXX11_ABI
  const std::string cxx11_abi = _GLIBCXX_USE_CXX11_ABI ? "true" : "false";
#else
  const std::string cxx11_abi = "null";  // not libstdc++: the question does not arise
#endif
  return std::string("{\"torch_version\": \"") + TORCH_VERSION + "\", \"cuda\": " + cuda +
         ", \"compiler\": \"" + compiler_version() + "\", \"cxx_standard\": " +
         std::to_string(__cplusplus) + ", \"cxx11_abi\": " + cxx11_abi + "}";
}

// The length of the stats tensor the sampled ops save, as the kernels allocate it.
int64_t sampled_stats_size(int64_t expand_channels, int64_t out_channels, bool with_bn1, int64_t se_pooled) {
  return mbconv::stats_size(expand_channels, out_channels, with_bn1, se_pooled);
}

}  // namespace

// The sampled ops' optional block attributes, last in each schema (see below).
#define ATTRIBUTES                                                                                    \
  "int activation=0, Tensor? se_reduce_weight=None, Tensor? se_reduce_bias=None, "                  \
  "Tensor? se_expand_weight=None, Tensor? se_expand_bias=None, int se_channels=0, int se_activation=1, " \
  "int se_gate=0"

TORCH_LIBRARY(fna_ext, m) {
  m.def("build_info() -> str", &build_info);
  // The CPU block cache the fused ops allocate from (host_cache.h): bytes held, freeing them, and
  // the most it keeps.
  m.def("host_cache_bytes() -> int", &host_cache::cached_bytes);
  m.def("host_cache_release() -> ()", &host_cache::release_cached_blocks);
  m.def("host_cache_limit() -> int", &host_cache::limit_bytes);
  // The instruction set the CPU kernels run with: avx512, avx2, baseline or native (cpu_isa.h).
  m.def("cpu_isa() -> str", &cpu_isa::selected_name);
  // Greedy non-maximum suppression with torchvision's semantics: boxes (N, 4) as x1, y1, x2, y2,
  // a box is dropped when its IoU with a kept, higher-scoring box is > iou_threshold; returns the
  // kept indices (int64) by descending score (ties keep the input order).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // The same, but boxes only suppress boxes of the same idxs entry (class-wise NMS).
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // SSD's photometric distortion of a uint8 (H, W, 3) RGB image (fna_ext.ops.photometric): +
  // brightness, * contrast before the HSV step (contrast_first) or after it, and, when saturation
  // or hue is given, the HSV round trip (S * saturation, H + hue degrees); rounded back to uint8.
  m.def("photometric_distortion(Tensor image, float brightness, float contrast, bool contrast_first, "
        "float? saturation, float? hue) -> Tensor");
  // Parameter remapping of a whole network in one call: targets[t][i0, i1, ...] =
  // sources[t][m0[i0], m1[i1], ...], where index_maps[t] is the concatenation of the
  // per-dimension maps m_d (-1: take fills[t]); multiplied by scales[t][i_d] along
  // d = scale_dims[t] when that is >= 0.
  m.def("remap_copy(Tensor[] sources, Tensor(a!)[] targets, Tensor[] index_maps, float[] fills, "
        "Tensor[] scales, int[] scale_dims) -> ()");
  // The super network's sampled MBConv (fna_ext.ops.sampled_mbconv): expand 1x1 -> BN1 -> ReLU6 ->
  // depthwise k x k -> BN2 -> ReLU6 -> project 1x1 -> BN3 (+ x), batch statistics, on the first
  // expand_channels channels and the centre k x k of max-size weights. Returns (out, h1, h2, h3,
  // stats): the pre-BN tensors and the BN statistics (double) that backward needs. `dilation`
  // spaces the depthwise taps (padding dilation * (k - 1) / 2; stride must then be 1); it comes
  // last, with a default, in every op below so existing callers keep working. So do the NAS
  // seeds' block attributes (mbconv/activation.h): `activation` replaces both ReLU6s (0 ReLU6,
  // 1 ReLU, 2 hard-swish, 3 swish), and with the four SE tensors (max-size (S_max, E_max, 1, 1)
  // reduce and (E_max, S_max, 1, 1) expand convs with biases) a squeeze-and-excitation of
  // se_channels squeezed channels gates the depthwise conv's activation before the projection:
  // inner activation se_activation, gate sigmoid (se_gate 0) or hard sigmoid (1).
  m.def("sampled_mbconv_forward(Tensor x, Tensor expand_weight, Tensor dw_weight, Tensor project_weight, "
        "Tensor? bn1_weight, Tensor? bn1_bias, Tensor? bn2_weight, Tensor? bn2_bias, Tensor? bn3_weight, "
        "Tensor? bn3_bias, int kernel_size, int expand_channels, int stride, float eps, int dilation=1, "
        ATTRIBUTES ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients of x, the three max-size weights (zero outside the slice), the six BN parameters and
  // the SE's four (empty where the block has none, and all of them when weight_grads is false: an
  // architecture step).
  m.def("sampled_mbconv_backward(Tensor grad_out, Tensor x, Tensor expand_weight, Tensor dw_weight, "
        "Tensor project_weight, Tensor? bn1_weight, Tensor? bn1_bias, Tensor? bn2_weight, Tensor? bn2_bias, "
        "Tensor? bn3_weight, Tensor? bn3_bias, Tensor hidden1, Tensor hidden2, Tensor hidden3, Tensor stats, "
        "int kernel_size, int stride, bool weight_grads, int dilation=1, " ATTRIBUTES ") -> Tensor[]");
  // The same from the depthwise conv on, for an activated hidden tensor (the mixture's shared
  // expansion): returns (out, h2, h3, stats).
  m.def("depthwise_project_forward(Tensor x, Tensor hidden, Tensor dw_weight, Tensor project_weight, "
        "Tensor? bn2_weight, Tensor? bn2_bias, Tensor? bn3_weight, Tensor? bn3_bias, int kernel_size, int stride, "
        "float eps, int dilation=1, " ATTRIBUTES ") -> (Tensor, Tensor, Tensor, Tensor)");
  // Gradients of x (empty without a residual), hidden, the weights and the four BN parameters.
  m.def("depthwise_project_backward(Tensor grad_out, Tensor x, Tensor hidden, Tensor dw_weight, "
        "Tensor project_weight, Tensor? bn2_weight, Tensor? bn2_bias, Tensor? bn3_weight, Tensor? bn3_bias, "
        "Tensor hidden2, Tensor hidden3, Tensor stats, int kernel_size, int stride, bool weight_grads, "
        "int dilation=1, " ATTRIBUTES ") -> Tensor[]");
  // One layer's whole mixture with shared weights (fna_ext.ops.mbconv_mixture): the weighted sum of
  // the candidates (kernel_sizes[i], expansions[i]); candidates of one kernel size share the
  // depthwise conv and nest their projections. mixture_mbconv runs the shared expansion as well
  // and returns (out, h1, h2, h3, stats); h2 is per kernel size, h3 per candidate. Backward gives
  // the gradients of x and the mixture weights: the weights are frozen (an architecture step).
  // With recompute, h2 (the depthwise outputs, most of what an architecture step keeps) comes back
  // empty and the backward runs the depthwise convs again: less memory for one more forward pass.
  m.def("mixture_mbconv_forward(Tensor x, Tensor expand_weight, Tensor weights, Tensor dw_weight, "
        "Tensor project_weight, Tensor? bn1_weight, Tensor? bn1_bias, Tensor? bn2_weight, Tensor? bn2_bias, "
        "Tensor? bn3_weight, Tensor? bn3_bias, int[] kernel_sizes, int[] expansions, int stride, float eps, "
        "int dilation=1, bool recompute=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("mixture_mbconv_backward(Tensor grad_out, Tensor x, Tensor expand_weight, Tensor weights, "
        "Tensor dw_weight, Tensor project_weight, Tensor? bn1_weight, Tensor? bn1_bias, Tensor? bn2_weight, "
        "Tensor? bn2_bias, Tensor? bn3_weight, Tensor? bn3_bias, Tensor hidden1, Tensor hidden2, Tensor hidden3, "
        "Tensor stats, int[] kernel_sizes, int[] expansions, int stride, int dilation=1) -> Tensor[]");
  // The same from the depthwise conv on, over an activated shared expansion `hidden`: returns
  // (out, h2, h3, stats); backward gives x's (empty without a residual), hidden's and the weights'.
  m.def("mixture_depthwise_project_forward(Tensor x, Tensor hidden, Tensor weights, Tensor dw_weight, "
        "Tensor project_weight, Tensor? bn2_weight, Tensor? bn2_bias, Tensor? bn3_weight, Tensor? bn3_bias, "
        "int[] kernel_sizes, int[] expansions, int stride, float eps, int dilation=1, bool recompute=False) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("mixture_depthwise_project_backward(Tensor grad_out, Tensor x, Tensor hidden, Tensor weights, "
        "Tensor dw_weight, Tensor project_weight, Tensor? bn2_weight, Tensor? bn2_bias, Tensor? bn3_weight, "
        "Tensor? bn3_bias, Tensor hidden2, Tensor hidden3, Tensor stats, int[] kernel_sizes, int[] expansions, "
        "int stride, int dilation=1) -> Tensor[]");
  // The length of the float64 stats tensor the ops above save, as their kernels allocate it: the
  // fake (meta) kernels ask these rather than re-encode the layout.
  // se_pooled: N x e for a block with an SE (its pooled means, which the backward reads), else 0
  m.def("sampled_stats_size(int expand_channels, int out_channels, bool with_bn1, int se_pooled=0) -> int",
        &sampled_stats_size);
  m.def("mixture_stats_size(int[] kernel_sizes, int[] expansions, int out_channels, bool expand) -> int",
        &mbconv::mixture_stats_size);
}

}  // namespace fna_ext
