// The per-channel arithmetic of a batch-statistics BN, shared by the CPU backend's loop and the
// CUDA backend's kernel (plain C++, so nvcc compiles it for the device too). Everything is in
// double, in the order the ATen expressions it replaced evaluated: on the CPU the results did not
// change; on CUDA they may differ from ATen's by a few ulp of double (nvcc contracts to FMAs, and
// ATen multiplied by reciprocals), far below the opmath rounding that follows:
//   statistics  mean = sum / M, invstd = 1 / sqrt(max(sumsq / M - mean^2, 0) + eps)
//   affine      scale = invstd * gamma, shift = -mean * scale + beta   (y = h * scale + shift)
//               (a BN without parameters passes gamma = 1 and beta = 0: the same values exactly)
//   backward    dgamma = invstd * (sum_gh - mean * sum_g), dbeta = sum_g, and
//               dh = a * gz + b * h + c with a = gamma * invstd, b = -a * invstd * dgamma / M,
//               c = -a * dbeta / M - b * mean
// One launch (or loop) per BN step replaces about ten small tensor ops, each a kernel launch on
// a GPU, which is what the fused op's time went to at the search shapes (GPU check, 2026-12-04).
#pragma once

#include <cstdint>

#include "activation.h"  // FNA_HOST_DEVICE

#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

namespace fna_ext {
namespace mbconv {

FNA_HOST_DEVICE double square_root(double v) {
#if defined(__CUDA_ARCH__)
  return sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// mean and invstd of one channel from its sums over `count` rows
FNA_HOST_DEVICE void bn_statistics(double sum, double sumsq, double count, double eps, double* mean, double* invstd) {
  const double m = sum / count;
  const double var = sumsq / count - m * m;
  *mean = m;
  *invstd = 1.0 / square_root((var < 0.0 ? 0.0 : var) + eps);  // a NaN variance stays NaN
}

FNA_HOST_DEVICE void bn_affine(double mean, double invstd, double gamma, double beta, double* scale, double* shift) {
  *scale = invstd * gamma;
  *shift = -mean * *scale + beta;
}

FNA_HOST_DEVICE void bn_backward(double sum_g, double sum_gh, double mean, double invstd, double gamma, double count,
                                 double* a, double* b, double* c, double* dgamma) {
  *dgamma = invstd * (sum_gh - mean * sum_g);
  const double gr = invstd * gamma;
  *a = gr;
  *b = -gr * invstd * *dgamma / count;
  *c = -gr * sum_g / count - *b * mean;
}

}  // namespace mbconv
}  // namespace fna_ext
