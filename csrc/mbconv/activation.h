// The block activations of the fused MBConv, shared by the CPU kernels, the CUDA kernels and the
// driver: MobileNetV2's ReLU6 and the NAS seeds' ReLU, hard-swish and swish (SiLU). The codes are
// the ops' `activation` argument (fna_ext.ops.sampled_mbconv.ACTIVATION_CODES); kIdentity is the
// BN3 step, which has none. Plain C++ (no ATen), so nvcc compiles it for the device too.
//
// The derivatives are those of torch's own backward kernels: ReLU6 passes the gradient strictly
// inside (0, 6) (hardtanh_backward), ReLU where pre > 0 (threshold_backward), hard-swish 0 below
// -3, pre / 3 + 1/2 up to 3 and 1 above (hardswish_backward), swish s (1 + pre (1 - s)) with
// s = sigmoid(pre) (silu_backward). The forward and the backward both recompute `pre` (the BN's
// output) from the saved pre-BN tensor, so no activation needs its own saved tensor.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FNA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#include <cmath>
#define FNA_HOST_DEVICE inline
#endif

namespace fna_ext {
namespace mbconv {

enum Activation : int32_t { kRelu6 = 0, kRelu = 1, kHardswish = 2, kSwish = 3, kIdentity = 4 };

inline bool valid_activation(int64_t act) { return act >= kRelu6 && act <= kSwish; }

template <typename A>
FNA_HOST_DEVICE A sigmoid_of(A v) {
#if defined(__CUDA_ARCH__)
  return A(1) / (A(1) + exp(-v));
#else
  return A(1) / (A(1) + std::exp(-v));
#endif
}

// Written with comparisons in the order std::min(std::max(v, 0), 6) uses (so a NaN stays NaN).
template <typename A>
FNA_HOST_DEVICE A clamp_relu6(A v) {
  const A r = v < A(0) ? A(0) : v;
  return A(6) < r ? A(6) : r;
}

template <typename A>
FNA_HOST_DEVICE A activate(A pre, int act) {
  switch (act) {
    case kRelu6: return clamp_relu6(pre);
    case kRelu: return pre < A(0) ? A(0) : pre;
    case kHardswish: return pre * clamp_relu6(pre + A(3)) / A(6);
    case kSwish: return pre * sigmoid_of(pre);
    default: return pre;
  }
}

// dL/dpre from g = dL/dactivate(pre). ReLU and ReLU6 select rather than multiply, so a blocked
// infinite or NaN gradient stays blocked, as in torch.
template <typename A>
FNA_HOST_DEVICE A activation_grad(A pre, A g, int act) {
  switch (act) {
    case kRelu6: return pre > A(0) && pre < A(6) ? g : A(0);
    case kRelu: return pre > A(0) ? g : A(0);
    case kHardswish: return pre < A(-3) ? A(0) : (pre <= A(3) ? g * (pre / A(3) + A(0.5)) : g);
    case kSwish: {
      const A s = sigmoid_of(pre);
      return g * (s * (A(1) + pre * (A(1) - s)));
    }
    default: return g;
  }
}

}  // namespace mbconv
}  // namespace fna_ext
