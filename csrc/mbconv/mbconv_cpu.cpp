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
namespace {

constexpr int64_t kBlock = 16;  // channels per depthwise task: one AVX-512 vector of floats

template <typename T>
FNA_INLINE T relu6(T v) { return std::min(std::max(v, T(0)), T(6)); }

// 1 where ReLU6 passes the gradient (strictly inside (0, 6), as hardtanh_backward).
template <typename T>
FNA_INLINE T relu6_pass(T pre) {
  return static_cast<T>((pre > T(0)) & (pre < T(6)));  // `&`, not `&&`: no branch, so it vectorises
}

// A reusable per-thread buffer: the depthwise tiles are too big for the stack and too frequent
// for malloc (large allocations would be fresh pages every time).
template <typename T>
T* scratch(size_t elements) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < elements) buffer.resize(elements);
  return buffer.data();
}

// ---- per-channel passes over (rows, C) matrices ---------------------------------------------

// Fixed chunks of rows, each with its own partial sums; the partials are added in order.
struct Chunks {
  int64_t count, rows;
  explicit Chunks(int64_t m) : count(std::max<int64_t>(1, std::min<int64_t>(64, (m + 255) / 256))), rows(m) {}
  int64_t begin(int64_t i) const { return rows * i / count; }
  int64_t end(int64_t i) const { return rows * (i + 1) / count; }
};

// Sums over rows run in T within blocks of kFlushRows rows (vectorised, like the data) and are
// added into double once per block, so long columns keep double precision.
constexpr int64_t kFlushRows = 64;

template <typename T>
FNA_INLINE void flush_sums(T* __restrict__ local, double* __restrict__ total, int64_t c) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < c; ++j) {
    total[j] += local[j];
    local[j] = T(0);
  }
}

// Zeroes a chunk's two double totals and returns its two zeroed T accumulators (2 * c values).
template <typename T>
FNA_INLINE T* start_sums(int64_t c, double* total_a, double* total_b) {
  T* local = scratch<T>(2 * c);
  std::fill(local, local + 2 * c, T(0));
  std::fill(total_a, total_a + c, 0.0);
  std::fill(total_b, total_b + c, 0.0);
  return local;
}

template <typename T>
FNA_CLONES void stats_chunk(const T* data, int64_t ld, int64_t c, int64_t r0, int64_t r1, double* s, double* q) {
  T* __restrict__ ls = start_sums<T>(c, s, q);
  T* __restrict__ lq = ls + c;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict__ row = data + r * ld;
    #pragma GCC ivdep
    for (int64_t j = 0; j < c; ++j) {
      ls[j] += row[j];
      lq[j] += row[j] * row[j];
    }
    if ((r - r0) % kFlushRows == kFlushRows - 1 || r + 1 == r1) {
      flush_sums(ls, s, c);
      flush_sums(lq, q, c);
    }
  }
}

template <typename T>
FNA_CLONES void affine_act_rows(const T* h, int64_t ld, int64_t c, const T* scale, const T* shift, bool relu,
                                const T* residual, int64_t res_ld, T* out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* in = h + r * ld;
    T* o = out + r * c;
    if (relu) {
      #pragma GCC ivdep
      for (int64_t j = 0; j < c; ++j) o[j] = relu6(in[j] * scale[j] + shift[j]);
    } else if (residual != nullptr) {
      const T* x = residual + r * res_ld;
      #pragma GCC ivdep
      for (int64_t j = 0; j < c; ++j) o[j] = in[j] * scale[j] + shift[j] + x[j];
    } else {
      #pragma GCC ivdep
      for (int64_t j = 0; j < c; ++j) o[j] = in[j] * scale[j] + shift[j];
    }
  }
}

// gz = g (masked by ReLU6 at h * ms + mb when ms is given); sums of gz and gz * h; optionally
// the activation relu6(h * ms + mb) itself.
template <typename T>
FNA_CLONES void grad_sums_chunk(const T* g, const T* h, int64_t c, const T* ms, const T* mb, T* act, int64_t r0,
                                int64_t r1, double* sg, double* sgh) {
  T* __restrict__ lg = start_sums<T>(c, sg, sgh);
  T* __restrict__ lgh = lg + c;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict__ gr = g + r * c;
    const T* __restrict__ hr = h + r * c;
    if (ms == nullptr) {
      #pragma GCC ivdep
      for (int64_t j = 0; j < c; ++j) {
        lg[j] += gr[j];
        lgh[j] += gr[j] * hr[j];
      }
    } else if (act == nullptr) {
      #pragma GCC ivdep
      for (int64_t j = 0; j < c; ++j) {
        const T gz = gr[j] * relu6_pass(hr[j] * ms[j] + mb[j]);
        lg[j] += gz;
        lgh[j] += gz * hr[j];
      }
    } else {
      T* __restrict__ ar = act + r * c;
      #pragma GCC ivdep
      for (int64_t j = 0; j < c; ++j) {
        const T pre = hr[j] * ms[j] + mb[j];
        const T gz = gr[j] * relu6_pass(pre);
        ar[j] = relu6(pre);
        lg[j] += gz;
        lgh[j] += gz * hr[j];
      }
    }
    if ((r - r0) % kFlushRows == kFlushRows - 1 || r + 1 == r1) {
      flush_sums(lg, sg, c);
      flush_sums(lgh, sgh, c);
    }
  }
}

template <typename T>
FNA_CLONES void grad_apply_rows(const T* g, const T* h, int64_t c, const T* ms, const T* mb, const T* a, const T* b,
                                const T* cc, T* out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* gr = g + r * c;
    const T* hr = h + r * c;
    T* o = out + r * c;
    #pragma GCC ivdep
    for (int64_t j = 0; j < c; ++j) {
      const T gz = ms == nullptr ? gr[j] : gr[j] * relu6_pass(hr[j] * ms[j] + mb[j]);
      o[j] = gz * a[j] + hr[j] * b[j] + cc[j];
    }
  }
}

// ---- depthwise tiles ------------------------------------------------------------------------

// kBlock channels as one value (GCC/Clang vector extension: one AVX-512 register of floats, two
// AVX2 ones, ...), so the accumulators below stay in registers.
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kBlock * sizeof(float))));
  typedef int32_t mask __attribute__((vector_size(kBlock * sizeof(float))));  // what comparisons give
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kBlock * sizeof(double))));
  typedef int64_t mask __attribute__((vector_size(kBlock * sizeof(double))));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
FNA_INLINE Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
FNA_INLINE void vstore(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof(v)); }

// Accumulates `W` adjacent outputs (a row of the output tile) in registers: W independent FMA
// chains hide the FMA latency. Per kernel row, the (W - 1) * S + K input pixels the W windows
// share are loaded once into registers and every weight vector serves all W outputs, so the
// loop is bound by the FMAs rather than by loads from the tile. K and S are constants, so
// every load is a fixed offset from one pointer per kernel row.
template <typename T, int K, int S, int W>
FNA_INLINE void conv_pixels(const T* __restrict__ src, int64_t src_w, const T* __restrict__ w, T* __restrict__ out) {
  constexpr int kSpan = (W - 1) * S + K;
  Vec<T> acc[W] = {};
#pragma GCC unroll 8
  for (int kh = 0; kh < K; ++kh) {
    const T* a = src + kh * src_w * kBlock;
    Vec<T> in[kSpan];
#pragma GCC unroll 32
    for (int i = 0; i < kSpan; ++i) in[i] = vload<T>(a + i * kBlock);
#pragma GCC unroll 8
    for (int kw = 0; kw < K; ++kw) {
      const Vec<T> wv = vload<T>(w + (kh * K + kw) * kBlock);
#pragma GCC unroll 8
      for (int j = 0; j < W; ++j) acc[j] += in[j * S + kw] * wv;
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < W; ++j) vstore<T>(out + j * kBlock, acc[j]);
}

template <typename T, int K, int S>
FNA_INLINE void conv_row_strided(const T* src, int64_t src_w, const T* w, int64_t out_w, T* out) {
  int64_t ow = 0;
  for (; ow + 8 <= out_w; ow += 8) conv_pixels<T, K, S, 8>(src + ow * S * kBlock, src_w, w, out + ow * kBlock);
  for (; ow + 4 <= out_w; ow += 4) conv_pixels<T, K, S, 4>(src + ow * S * kBlock, src_w, w, out + ow * kBlock);
  for (; ow < out_w; ++ow) conv_pixels<T, K, S, 1>(src + ow * S * kBlock, src_w, w, out + ow * kBlock);
}

// out[ow][:] = sum over the K x K window of src (rows of `src_w` pixels of kBlock channels)
// starting at column ow * stride, times w[kh][kw][:].
template <typename T, int K>
FNA_INLINE void conv_row(const T* src, int64_t src_w, int64_t stride, const T* w, int64_t out_w, T* out) {
  if (stride == 1) {
    conv_row_strided<T, K, 1>(src, src_w, w, out_w, out);
  } else {
    conv_row_strided<T, K, 2>(src, src_w, w, out_w, out);
  }
}

template <typename T>
FNA_INLINE Vec<T> vrelu6(Vec<T> v) {  // as relu6 and F.relu6: a NaN stays NaN
  const Vec<T> zero = {};
  v = v < zero ? zero : v;
  return v > zero + T(6) ? zero + T(6) : v;
}

// g where ReLU6 passes the gradient at pre-activation `pre` (0 < pre < 6), else 0: a bitwise AND
// with the comparison mask (GCC lowers a vector `?:` on a combined mask lane by lane).
template <typename T>
FNA_INLINE Vec<T> vpass(Vec<T> pre, Vec<T> g) {
  using Mask = typename VecOf<T>::mask;
  const Vec<T> zero = {};
  const Mask keep = (pre > zero) & (pre < zero + T(6));
  return (Vec<T>)((Mask)g & keep);
}

// Zeroes the frame of `pad` pixels around an h x w interior of an (h + 2 pad) x (w + 2 pad) tile.
template <typename T>
FNA_INLINE void zero_frame(T* tile, int64_t h, int64_t w, int64_t pad) {
  const int64_t wp = w + 2 * pad;
  std::fill(tile, tile + pad * wp * kBlock, T(0));
  std::fill(tile + (pad + h) * wp * kBlock, tile + (h + 2 * pad) * wp * kBlock, T(0));
  for (int64_t y = pad; y < pad + h; ++y) {
    std::fill(tile + y * wp * kBlock, tile + (y * wp + pad) * kBlock, T(0));
    std::fill(tile + (y * wp + pad + w) * kBlock, tile + (y + 1) * wp * kBlock, T(0));
  }
}

// Where a task's pixels lie in an (N, H, W, C) buffer of unit channel stride: pixel (n, y, x)
// starts at element base + n * image + y * row + x * col. A whole image has base 0, row W * ld
// and col ld; a phase of a dilated conv (see Phase) steps d pixels.
struct Pixels {
  int64_t base, image, row, col;
  int64_t at(int64_t n, int64_t y, int64_t x) const { return base + n * image + y * row + x * col; }
};

struct DwIn {  // the depthwise input, and BN1 applied on load
  const void* data;
  Pixels px;
  const void* scale;  // null: the input is already activated
  const void* shift;
};

// Fills the zero-padded (H + 2p) x (W + 2p) x kBlock tile of image n, channels c0 .. c0 + nb.
template <typename T>
FNA_INLINE void load_input_tile(const Geometry& g, const DwIn& in, int64_t n, int64_t c0, int64_t nb, T* tile) {
  const int64_t wp = g.w + 2 * g.pad;
  const T* src = static_cast<const T*>(in.data);
  const T* scale = static_cast<const T*>(in.scale);
  const T* shift = static_cast<const T*>(in.shift);
  if (nb < kBlock) {  // the last, partial block of channels: scalar, the rest stays zero
    std::fill(tile, tile + (g.h + 2 * g.pad) * wp * kBlock, T(0));
    for (int64_t ih = 0; ih < g.h; ++ih) {
      for (int64_t iw = 0; iw < g.w; ++iw) {
        const T* s = src + in.px.at(n, ih, iw) + c0;
        T* d = tile + ((ih + g.pad) * wp + iw + g.pad) * kBlock;
        for (int64_t ch = 0; ch < nb; ++ch) d[ch] = scale == nullptr ? s[ch] : relu6(s[ch] * scale[c0 + ch] + shift[c0 + ch]);
      }
    }
    return;
  }
  zero_frame(tile, g.h, g.w, g.pad);
  const Vec<T> sc = scale == nullptr ? Vec<T>{} : vload<T>(scale + c0);
  const Vec<T> sh = scale == nullptr ? Vec<T>{} : vload<T>(shift + c0);
  for (int64_t ih = 0; ih < g.h; ++ih) {
    const T* s = src + in.px.at(n, ih, 0) + c0;
    T* d = tile + ((ih + g.pad) * wp + g.pad) * kBlock;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      const Vec<T> v = vload<T>(s + iw * in.px.col);
      vstore<T>(d + iw * kBlock, scale == nullptr ? v : vrelu6<T>(v * sc + sh));
    }
  }
}

// The centre K x K of channels c0 .. c0 + nb of the (E_max, 1, K_max, K_max) weight as
// [kh][kw][channel], zero beyond nb; `flip` reverses both kernel axes (for the input gradient).
template <typename T, int K>
FNA_INLINE void load_weight_tile(const Geometry& g, const T* weight, int64_t c0, int64_t nb, bool flip, T* w) {
  const int64_t off = g.offset();
  for (int kh = 0; kh < K; ++kh) {
    for (int kw = 0; kw < K; ++kw) {
      T* d = w + (kh * K + kw) * kBlock;
      const int64_t sh = flip ? K - 1 - kh : kh, sw = flip ? K - 1 - kw : kw;
      for (int64_t ch = 0; ch < kBlock; ++ch) {
        d[ch] = ch < nb ? weight[(c0 + ch) * g.k_max * g.k_max + (sh + off) * g.k_max + sw + off] : T(0);
      }
    }
  }
}

// Adds per-row partial sums (kept in T, vectorised) into the task's double totals.
template <typename T>
FNA_INLINE void add_sums(Vec<T> s, Vec<T> q, int64_t nb, double* sum, double* sumsq) {
  for (int64_t ch = 0; ch < nb; ++ch) {
    sum[ch] += s[ch];
    sumsq[ch] += q[ch];
  }
}

template <typename T>
FNA_INLINE void store_channels(T* d, Vec<T> v, int64_t nb) {
  if (nb == kBlock) {
    vstore<T>(d, v);
  } else {
    for (int64_t ch = 0; ch < nb; ++ch) d[ch] = v[ch];
  }
}

template <typename T, int K>
FNA_INLINE void depthwise_forward_body(const Geometry& g, DwIn in, const T* weight, T* out, Pixels opx, int64_t n,
                                       int64_t c0, double* sum, double* sumsq) {
  const int64_t nb = std::min(kBlock, g.e - c0);
  const int64_t hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad;
  T* tile = scratch<T>((hp * wp + K * K + g.wo) * kBlock);
  T* w = tile + hp * wp * kBlock;
  T* row = w + K * K * kBlock;
  load_input_tile<T>(g, in, n, c0, nb, tile);
  load_weight_tile<T, K>(g, weight, c0, nb, /*flip=*/false, w);
  std::fill(sum, sum + nb, 0.0);
  std::fill(sumsq, sumsq + nb, 0.0);
  for (int64_t oh = 0; oh < g.ho; ++oh) {
    conv_row<T, K>(tile + oh * g.stride * wp * kBlock, wp, g.stride, w, g.wo, row);
    Vec<T> rs = {}, rq = {};
    for (int64_t ow = 0; ow < g.wo; ++ow) {
      const Vec<T> v = vload<T>(row + ow * kBlock);
      store_channels<T>(out + opx.at(n, oh, ow) + c0, v, nb);
      rs += v;
      rq += v * v;
    }
    add_sums<T>(rs, rq, nb, sum, sumsq);
  }
}

struct DwGradOut {  // what the depthwise conv's output gradient is made of (see tail_backward)
  const void* ga2;    // dL/d relu6(BN2(h2)), (rows_out, e)
  const void* h2;
  const void* scale2, *shift2;  // BN2 as an affine map: the ReLU6 mask
  const void* a, *b, *c;        // BN2's backward: dh2 = a * gz + b * h2 + c
  Pixels px;                    // of ga2 and h2
};

// Writes dL/dh2 of image n into the (K - 1)-padded, stride-dilated tile `dilated`: the ReLU6
// mask and BN2's backward applied as ga2 and h2 are loaded.
template <typename T, int K>
FNA_INLINE void load_output_grad_tile(const Geometry& g, const DwGradOut& go, int64_t n, int64_t c0, int64_t nb,
                                      T* dilated, int64_t hg, int64_t wg) {
  const int64_t s = g.stride;
  if (s == 1 && nb == kBlock) {
    zero_frame(dilated, g.ho, g.wo, K - 1);  // the interior is all written below
  } else {
    std::fill(dilated, dilated + hg * wg * kBlock, T(0));
  }
  const T *ga2 = static_cast<const T*>(go.ga2), *h2 = static_cast<const T*>(go.h2);
  const T *ms = static_cast<const T*>(go.scale2), *mb = static_cast<const T*>(go.shift2);
  const T *a = static_cast<const T*>(go.a), *b = static_cast<const T*>(go.b), *cc = static_cast<const T*>(go.c);
  Vec<T> vms = {}, vmb = {}, va = {}, vb = {}, vc = {};
  for (int64_t ch = 0; ch < nb; ++ch) {
    vms[ch] = ms[c0 + ch], vmb[ch] = mb[c0 + ch], va[ch] = a[c0 + ch], vb[ch] = b[c0 + ch], vc[ch] = cc[c0 + ch];
  }
  for (int64_t oh = 0; oh < g.ho; ++oh) {
    for (int64_t ow = 0; ow < g.wo; ++ow) {
      const int64_t at = go.px.at(n, oh, ow) + c0;
      Vec<T> gv = {}, hv = {};
      if (nb == kBlock) {
        gv = vload<T>(ga2 + at), hv = vload<T>(h2 + at);
      } else {
        for (int64_t ch = 0; ch < nb; ++ch) gv[ch] = ga2[at + ch], hv[ch] = h2[at + ch];
      }
      // channels past nb have zero coefficients, so they come out zero
      vstore<T>(dilated + ((K - 1 + oh * s) * wg + K - 1 + ow * s) * kBlock, vpass<T>(hv * vms + vmb, gv) * va + hv * vb + vc);
    }
  }
}

// acc[kw] += sum over W output-gradient pixels j (S pixels apart in `grad`, the dilated tile)
// of grad[j] * act[j * S + kw]: the span of input pixels is loaded once for all K taps.
template <typename T, int K, int S, int W>
FNA_INLINE void weight_grad_pixels(const T* __restrict__ grad, const T* __restrict__ act, Vec<T>* acc) {
  constexpr int kSpan = (W - 1) * S + K;
  Vec<T> in[kSpan];
#pragma GCC unroll 32
  for (int i = 0; i < kSpan; ++i) in[i] = vload<T>(act + i * kBlock);
#pragma GCC unroll 8
  for (int j = 0; j < W; ++j) {
    const Vec<T> gv = vload<T>(grad + j * S * kBlock);
#pragma GCC unroll 8
    for (int kw = 0; kw < K; ++kw) acc[kw] += gv * in[j * S + kw];
  }
}

template <typename T, int K>
FNA_INLINE void depthwise_backward_body(const Geometry& g, DwGradOut go, DwIn in, const T* weight, T* grad_in,
                                        Pixels gpx, double* grad_w, int64_t n, int64_t c0, double* sum_g,
                                        double* sum_gh) {
  const int64_t nb = std::min(kBlock, g.e - c0);
  const int64_t hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad, s = g.stride;
  // the output gradient, zero-dilated by the stride and padded by K - 1 on every side
  const int64_t hg = std::max((g.ho - 1) * s + 1 + 2 * (K - 1), g.h + g.pad + K - 1);
  const int64_t wg = std::max((g.wo - 1) * s + 1 + 2 * (K - 1), g.w + g.pad + K - 1);
  T* tile = scratch<T>((hp * wp + hg * wg + K * K + g.w) * kBlock);
  T* dilated = tile + hp * wp * kBlock;
  T* wflip = dilated + hg * wg * kBlock;
  T* row = wflip + K * K * kBlock;
  // the activated input: for the weight gradient, and for BN1's ReLU6 mask when applied on load
  if (grad_w != nullptr || in.scale != nullptr) load_input_tile<T>(g, in, n, c0, nb, tile);
  load_weight_tile<T, K>(g, weight, c0, nb, /*flip=*/true, wflip);
  load_output_grad_tile<T, K>(g, go, n, c0, nb, dilated, hg, wg);

  // the weight gradient, one kernel row at a time: K accumulators; the input pixels that four
  // adjacent output-gradient pixels meet are loaded once
  for (int kh = 0; kh < K && grad_w != nullptr; ++kh) {
    Vec<T> acc[K] = {};
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      const T* arow = tile + (oh * s + kh) * wp * kBlock;
      const T* grow = dilated + ((K - 1 + oh * s) * wg + K - 1) * kBlock;
      int64_t ow = 0;
      if (s == 1) {
        for (; ow + 4 <= g.wo; ow += 4) weight_grad_pixels<T, K, 1, 4>(grow + ow * kBlock, arow + ow * kBlock, acc);
      } else {
        for (; ow + 4 <= g.wo; ow += 4) {
          weight_grad_pixels<T, K, 2, 4>(grow + 2 * ow * kBlock, arow + 2 * ow * kBlock, acc);
        }
      }
      for (; ow < g.wo; ++ow) weight_grad_pixels<T, K, 1, 1>(grow + ow * s * kBlock, arow + ow * s * kBlock, acc);
    }
    for (int kw = 0; kw < K; ++kw) {
      for (int64_t ch = 0; ch < nb; ++ch) grad_w[((c0 + ch) * K + kh) * K + kw] = acc[kw][ch];
    }
  }

  // the input gradient; with BN1 applied on load, its ReLU6 mask and backward sums on the way out
  const T* src = static_cast<const T*>(in.data);
  std::fill(sum_g, sum_g + nb, 0.0);
  std::fill(sum_gh, sum_gh + nb, 0.0);
  for (int64_t ih = 0; ih < g.h; ++ih) {
    conv_row<T, K>(dilated + ((ih + g.pad) * wg + g.pad) * kBlock, wg, 1, wflip, g.w, row);
    T* d = grad_in + gpx.at(n, ih, 0) + c0;
    if (in.scale == nullptr) {
      for (int64_t iw = 0; iw < g.w; ++iw) store_channels<T>(d + iw * gpx.col, vload<T>(row + iw * kBlock), nb);
      continue;
    }
    const T* act = tile + ((ih + g.pad) * wp + g.pad) * kBlock;  // relu6(pre): 0 < act < 6 iff it passes
    const T* h1 = src + in.px.at(n, ih, 0) + c0;
    Vec<T> rs = {}, rq = {};
    for (int64_t iw = 0; iw < g.w; ++iw) {
      const Vec<T> gz = vpass<T>(vload<T>(act + iw * kBlock), vload<T>(row + iw * kBlock));
      Vec<T> hv = {};
      if (nb == kBlock) {
        hv = vload<T>(h1 + iw * in.px.col);
      } else {
        for (int64_t ch = 0; ch < nb; ++ch) hv[ch] = h1[iw * in.px.col + ch];
      }
      store_channels<T>(d + iw * gpx.col, gz, nb);
      rs += gz;
      rq += gz * hv;
    }
    add_sums<T>(rs, rq, nb, sum_g, sum_gh);
  }
}

// float, what training runs, is built for each instruction set; double (tests, gradcheck) once,
// which halves the compile time.
template <int K>
FNA_CLONES void depthwise_forward_float(const Geometry& g, DwIn in, const float* weight, float* out, Pixels opx,
                                        int64_t n, int64_t c0, double* sum, double* sumsq) {
  depthwise_forward_body<float, K>(g, in, weight, out, opx, n, c0, sum, sumsq);
}

template <int K>
FNA_CLONES void depthwise_backward_float(const Geometry& g, DwGradOut go, DwIn in, const float* weight,
                                         float* grad_in, Pixels gpx, double* grad_w, int64_t n, int64_t c0,
                                         double* sum_g, double* sum_gh) {
  depthwise_backward_body<float, K>(g, go, in, weight, grad_in, gpx, grad_w, n, c0, sum_g, sum_gh);
}

template <typename T, int K>
void depthwise_forward_task(const Geometry& g, DwIn in, const T* weight, T* out, Pixels opx, int64_t n, int64_t c0,
                            double* sum, double* sumsq) {
  if constexpr (std::is_same_v<T, float>) {
    depthwise_forward_float<K>(g, in, weight, out, opx, n, c0, sum, sumsq);
  } else {
    depthwise_forward_body<T, K>(g, in, weight, out, opx, n, c0, sum, sumsq);
  }
}

template <typename T, int K>
void depthwise_backward_task(const Geometry& g, DwGradOut go, DwIn in, const T* weight, T* grad_in, Pixels gpx,
                             double* grad_w, int64_t n, int64_t c0, double* sum_g, double* sum_gh) {
  if constexpr (std::is_same_v<T, float>) {
    depthwise_backward_float<K>(g, go, in, weight, grad_in, gpx, grad_w, n, c0, sum_g, sum_gh);
  } else {
    depthwise_backward_body<T, K>(g, go, in, weight, grad_in, gpx, grad_w, n, c0, sum_g, sum_gh);
  }
}

// ---- nested kernel sizes (a mixture's candidates share the weight) -------------------------
//
// The k3 and k5 kernels are the centre of the k7 one, so one pass over the taps serves every
// kernel size of a mixture: the taps are split into groups by ring (the centre 3 x 3, the ring
// that makes 5 x 5, the one that makes 7 x 7), each group with its own accumulators, and kernel
// k's output is the sum of the groups it covers. Backward is the same in reverse: a tap of group
// j reads the sum of the output gradients of every kernel that covers it. 49 taps per pixel for
// k in {3, 5, 7}, where three separate convs take 83, and one tile load instead of three.

template <int... I, typename Fn>
FNA_INLINE void static_for_impl(std::integer_sequence<int, I...>, Fn&& fn) {
  (fn(std::integral_constant<int, I>()), ...);
}

// fn(integral_constant<int, 0>) ... fn(integral_constant<int, N - 1>): indices known at compile time
template <int N, typename Fn>
FNA_INLINE void static_for(Fn&& fn) { static_for_impl(std::make_integer_sequence<int, N>(), fn); }

// The ring group of tap (kh, kw) of a KMAX x KMAX kernel: 0 for the centre 3 x 3, then 1, 2.
template <int KMAX>
constexpr int ring_group(int kh, int kw) {
  const int dh = kh > KMAX / 2 ? kh - KMAX / 2 : KMAX / 2 - kh, dw = kw > KMAX / 2 ? kw - KMAX / 2 : KMAX / 2 - kw;
  const int ring = dh > dw ? dh : dw;
  return ring <= 1 ? 0 : ring - 1;
}

// acc[group][j] += the group's taps over W adjacent outputs (S apart in the tile).
template <typename T, int KMAX, int S, int W>
FNA_INLINE void nested_pixels(const T* __restrict__ src, int64_t src_w, const T* __restrict__ w,
                              Vec<T> (&acc)[KMAX / 2][W]) {
  constexpr int kSpan = (W - 1) * S + KMAX;
  static_for<KMAX>([&](auto kh) FNA_LAMBDA_INLINE {
    const T* a = src + kh * src_w * kBlock;
    Vec<T> in[kSpan];
    static_for<kSpan>([&](auto i) FNA_LAMBDA_INLINE { in[i] = vload<T>(a + i * kBlock); });
    static_for<KMAX>([&](auto kw) FNA_LAMBDA_INLINE {
      const Vec<T> wv = vload<T>(w + (kh * KMAX + kw) * kBlock);
      constexpr int grp = ring_group<KMAX>(decltype(kh)::value, decltype(kw)::value);
      static_for<W>([&](auto j) FNA_LAMBDA_INLINE { acc[grp][j] += in[j * S + kw] * wv; });
    });
  });
}

// One output row for every group: rows[grp] gets the group's partial sums (out_w pixels).
template <typename T, int KMAX, int S>
FNA_INLINE void nested_row(const T* src, int64_t src_w, const T* w, int64_t out_w, T* const* rows) {
  auto pixels = [&](int64_t ow, auto width) FNA_LAMBDA_INLINE {
    constexpr int W = decltype(width)::value;
    Vec<T> acc[KMAX / 2][W] = {};
    nested_pixels<T, KMAX, S, W>(src + ow * S * kBlock, src_w, w, acc);
    for (int grp = 0; grp < KMAX / 2; ++grp) {
      for (int j = 0; j < W; ++j) vstore<T>(rows[grp] + (ow + j) * kBlock, acc[grp][j]);
    }
  };
  int64_t ow = 0;
  for (; ow + 4 <= out_w; ow += 4) pixels(ow, std::integral_constant<int, 4>());
  for (; ow < out_w; ++ow) pixels(ow, std::integral_constant<int, 1>());
}

struct NestedOut {  // per ring group: kernel 2 * grp + 3's pre-BN2 output and sums (null: not wanted)
  void* out[3];
  double* sum[3];
  double* sumsq[3];
  Pixels px;  // of every out
};

template <typename T, int KMAX>
FNA_INLINE void nested_forward_body(const Geometry& g, DwIn in, const T* weight, NestedOut o, int64_t n, int64_t c0) {
  constexpr int R = KMAX / 2;
  const int64_t nb = std::min(kBlock, g.e - c0);
  const int64_t hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad;
  T* tile = scratch<T>((hp * wp + KMAX * KMAX + R * g.wo) * kBlock);
  T* w = tile + hp * wp * kBlock;
  T* rows[R];
  for (int grp = 0; grp < R; ++grp) rows[grp] = w + (KMAX * KMAX + grp * g.wo) * kBlock;
  load_input_tile<T>(g, in, n, c0, nb, tile);
  load_weight_tile<T, KMAX>(g, weight, c0, nb, /*flip=*/false, w);
  for (int grp = 0; grp < R; ++grp) {
    if (o.out[grp] == nullptr) continue;
    std::fill(o.sum[grp], o.sum[grp] + nb, 0.0);
    std::fill(o.sumsq[grp], o.sumsq[grp] + nb, 0.0);
  }
  for (int64_t oh = 0; oh < g.ho; ++oh) {
    const T* src = tile + oh * g.stride * wp * kBlock;
    if (g.stride == 1) {
      nested_row<T, KMAX, 1>(src, wp, w, g.wo, rows);
    } else {
      nested_row<T, KMAX, 2>(src, wp, w, g.wo, rows);
    }
    for (int64_t ow = 0; ow < g.wo; ++ow) {
      Vec<T> v = {};
      for (int grp = 0; grp < R; ++grp) {
        v += vload<T>(rows[grp] + ow * kBlock);
        if (o.out[grp] != nullptr) vstore<T>(rows[grp] + ow * kBlock, v);  // kernel 2 grp + 3's value
      }
    }
    for (int grp = 0; grp < R; ++grp) {
      if (o.out[grp] == nullptr) continue;
      T* out = static_cast<T*>(o.out[grp]);
      Vec<T> rs = {}, rq = {};
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        const Vec<T> v = vload<T>(rows[grp] + ow * kBlock);
        store_channels<T>(out + o.px.at(n, oh, ow) + c0, v, nb);
        rs += v;
        rq += v * v;
      }
      add_sums<T>(rs, rq, nb, o.sum[grp], o.sumsq[grp]);
    }
  }
}

// acc[j] += every tap over W adjacent input pixels, a tap of group grp reading srcs[grp].
template <typename T, int KMAX, int W>
FNA_INLINE void sourced_pixels(const T* const* srcs, int64_t src_w, const T* __restrict__ w, Vec<T> (&acc)[W]) {
  constexpr int R = KMAX / 2, kSpan = W - 1 + KMAX;
  static_for<KMAX>([&](auto kh) FNA_LAMBDA_INLINE {
    Vec<T> in[R][kSpan];
    static_for<R>([&](auto grp) FNA_LAMBDA_INLINE {
      const T* a = srcs[grp] + kh * src_w * kBlock;
      static_for<kSpan>([&](auto i) FNA_LAMBDA_INLINE { in[grp][i] = vload<T>(a + i * kBlock); });  // unused ones are dropped
    });
    static_for<KMAX>([&](auto kw) FNA_LAMBDA_INLINE {
      const Vec<T> wv = vload<T>(w + (kh * KMAX + kw) * kBlock);
      constexpr int grp = ring_group<KMAX>(decltype(kh)::value, decltype(kw)::value);
      static_for<W>([&](auto j) FNA_LAMBDA_INLINE { acc[j] += in[grp][j + kw] * wv; });
    });
  });
}

struct NestedGradOut {  // per ring group: kernel 2 * grp + 3's output gradient (null: not in the mixture)
  DwGradOut go[3];
  bool present[3];
};

template <typename T, int KMAX>
FNA_INLINE void nested_backward_body(const Geometry& g, const NestedGradOut& go, const T* weight, T* grad_in,
                                     Pixels gpx, int64_t n, int64_t c0) {
  constexpr int R = KMAX / 2;
  const int64_t nb = std::min(kBlock, g.e - c0);
  const int64_t s = g.stride;
  const int64_t hg = std::max((g.ho - 1) * s + 1 + 2 * (KMAX - 1), g.h + g.pad + KMAX - 1);
  const int64_t wg = std::max((g.wo - 1) * s + 1 + 2 * (KMAX - 1), g.w + g.pad + KMAX - 1);
  const int64_t tile_size = hg * wg * kBlock;
  T* tiles = scratch<T>((R * hg * wg + KMAX * KMAX + g.w) * kBlock);
  T* wflip = tiles + R * tile_size;
  T* row = wflip + KMAX * KMAX * kBlock;
  load_weight_tile<T, KMAX>(g, weight, c0, nb, /*flip=*/true, wflip);
  // group grp's source: the sum of the output gradients of every kernel at least 2 grp + 3 wide
  const T* srcs[R];
  for (int grp = R - 1; grp >= 0; --grp) {
    T* tile = tiles + grp * tile_size;
    if (!go.present[grp]) {  // KMAX's group is always present
      srcs[grp] = srcs[grp + 1];
      continue;
    }
    load_output_grad_tile<T, KMAX>(g, go.go[grp], n, c0, nb, tile, hg, wg);
    if (grp + 1 < R) {
      const T* wider = srcs[grp + 1];
      for (int64_t i = 0; i < tile_size; i += kBlock) vstore<T>(tile + i, vload<T>(tile + i) + vload<T>(wider + i));
    }
    srcs[grp] = tile;
  }
  for (int64_t ih = 0; ih < g.h; ++ih) {
    const int64_t at = ((ih + g.pad) * wg + g.pad) * kBlock;
    const T* rsrc[R];
    for (int grp = 0; grp < R; ++grp) rsrc[grp] = srcs[grp] + at;
    int64_t iw = 0;
    for (; iw + 4 <= g.w; iw += 4) {
      Vec<T> acc[4] = {};
      const T* p[R];
      for (int grp = 0; grp < R; ++grp) p[grp] = rsrc[grp] + iw * kBlock;
      sourced_pixels<T, KMAX, 4>(p, wg, wflip, acc);
      for (int j = 0; j < 4; ++j) vstore<T>(row + (iw + j) * kBlock, acc[j]);
    }
    for (; iw < g.w; ++iw) {
      Vec<T> acc[1] = {};
      const T* p[R];
      for (int grp = 0; grp < R; ++grp) p[grp] = rsrc[grp] + iw * kBlock;
      sourced_pixels<T, KMAX, 1>(p, wg, wflip, acc);
      vstore<T>(row + iw * kBlock, acc[0]);
    }
    T* d = grad_in + gpx.at(n, ih, 0) + c0;
    for (int64_t x = 0; x < g.w; ++x) store_channels<T>(d + x * gpx.col, vload<T>(row + x * kBlock), nb);
  }
}

template <int KMAX>
FNA_CLONES void nested_forward_float(const Geometry& g, DwIn in, const float* weight, NestedOut o, int64_t n,
                                     int64_t c0) {
  nested_forward_body<float, KMAX>(g, in, weight, o, n, c0);
}

template <int KMAX>
FNA_CLONES void nested_backward_float(const Geometry& g, const NestedGradOut& go, const float* weight, float* grad_in,
                                      Pixels gpx, int64_t n, int64_t c0) {
  nested_backward_body<float, KMAX>(g, go, weight, grad_in, gpx, n, c0);
}

template <typename T, int KMAX>
void nested_forward_task(const Geometry& g, DwIn in, const T* weight, NestedOut o, int64_t n, int64_t c0) {
  if constexpr (std::is_same_v<T, float>) {
    nested_forward_float<KMAX>(g, in, weight, o, n, c0);
  } else {
    nested_forward_body<T, KMAX>(g, in, weight, o, n, c0);
  }
}

template <typename T, int KMAX>
void nested_backward_task(const Geometry& g, const NestedGradOut& go, const T* weight, T* grad_in, Pixels gpx,
                          int64_t n, int64_t c0) {
  if constexpr (std::is_same_v<T, float>) {
    nested_backward_float<KMAX>(g, go, weight, grad_in, gpx, n, c0);
  } else {
    nested_backward_body<T, KMAX>(g, go, weight, grad_in, gpx, n, c0);
  }
}

template <typename Fn>
void for_each_kernel_size(int64_t k, Fn&& fn) {
  switch (k) {
    case 3: fn(std::integral_constant<int, 3>()); break;
    case 5: fn(std::integral_constant<int, 5>()); break;
    case 7: fn(std::integral_constant<int, 7>()); break;
    default: TORCH_CHECK(false, "fna_ext::sampled_mbconv: kernel_size ", k, " has no CPU kernel (3, 5 or 7)");
  }
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// ---- dilation ---------------------------------------------------------------------------------
//
// With stride 1 and padding d (k - 1) / 2 (a multiple of d), output pixel (y, x) of a conv dilated
// by d reads only the inputs congruent to (y, x) modulo d. So the dilated conv is d * d
// independent undilated ones, one per phase (a, b): the plain k x k conv, padding k / 2, of the
// sub-image of pixels (a + i d, b + j d), whose output is the same pixels of the output. The
// tasks read and write a phase in place through Pixels strides: no copies, inner loops
// untouched, and dilation 1 is the single phase (0, 0), the whole image. A dilated k3 is then the
// centre of the dilated k7 phase by phase, so the nested kernels apply unchanged.
struct Phase {
  Geometry g;     // the sub-image's: undilated, padding k / 2 (the image's own when d = 1)
  Geometry full;  // the image's
  int64_t a, b;   // the sub-image's first row and column
  // input and output (stride 1 when d > 1, so one offset form serves both) with `ld` per pixel
  Pixels input(int64_t ld) const { return pixels(full.h, full.w, ld); }
  Pixels output(int64_t ld) const { return pixels(full.ho, full.wo, ld); }
  Pixels pixels(int64_t h, int64_t w, int64_t ld) const {
    const int64_t d = full.dilation;
    return {(a * w + b) * ld, h * w * ld, d * w * ld, d * ld};
  }
};

inline std::vector<Phase> phases(const Geometry& full) {
  const int64_t d = full.dilation;
  std::vector<Phase> list;
  for (int64_t a = 0; a < d; ++a) {
    for (int64_t b = 0; b < d; ++b) {
      Phase p{full, full, a, b};
      if (d > 1) {  // may be empty (an image smaller than d): its tasks write zero sums
        p.g.h = p.g.ho = (full.h - a + d - 1) / d;
        p.g.w = p.g.wo = (full.w - b + d - 1) / d;
        p.g.pad = full.k / 2;
        p.g.dilation = 1;
      }
      list.push_back(p);
    }
  }
  return list;
}

// One task per (phase, image, block of kBlock channels), in a fixed order: fn(phase, n, c0).
// Partial results are indexed by the task's (phase, image) row, phase * N + n.
template <typename Fn>
void for_each_tile(const Geometry& g, const std::vector<Phase>& list, Fn&& fn) {
  const int64_t blocks = (g.e + kBlock - 1) / kBlock, per_phase = g.n * blocks;
  at::parallel_for(0, static_cast<int64_t>(list.size()) * per_phase, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      fn(list[t / per_phase], (t % per_phase) / blocks, (t % blocks) * kBlock);
    }
  });
}

inline int64_t partial_row(const Geometry& g, const Phase& p, int64_t n) {
  return ((p.a * g.dilation) + p.b) * g.n + n;
}

struct CpuBackend {
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return host_cache::empty(sizes, options);
  }

  static void row_stats(const at::Tensor& rows, at::Tensor sum, at::Tensor sumsq) {
    FNA_MBCONV_STEP("row_stats");
    const int64_t c = rows.size(1);
    const Chunks chunks(rows.size(0));
    at::Tensor partial = at::empty({2, chunks.count, c}, sum.options());  // every chunk writes its part
    double* p = partial.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "fna_ext_mbconv_stats", [&] {
      const scalar_t* data = rows.data_ptr<scalar_t>();
      at::parallel_for(0, chunks.count, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          stats_chunk<scalar_t>(data, rows.stride(0), c, chunks.begin(i), chunks.end(i), p + i * c,
                                p + (chunks.count + i) * c);
        }
      });
    });
    sum.copy_(partial[0].sum(0));
    sumsq.copy_(partial[1].sum(0));
  }

  static void affine_act(const at::Tensor& h, const at::Tensor& scale, const at::Tensor& shift, bool relu,
                         const at::Tensor& residual, at::Tensor out) {
    FNA_MBCONV_STEP("affine_act");
    const int64_t c = h.size(1);
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "fna_ext_mbconv_affine", [&] {
      const scalar_t* res = ptr_or_null<scalar_t>(residual);
      const int64_t res_ld = residual.defined() ? residual.stride(0) : 0;
      at::parallel_for(0, h.size(0), 64, [&](int64_t r0, int64_t r1) {
        affine_act_rows<scalar_t>(h.data_ptr<scalar_t>(), h.stride(0), c, scale.data_ptr<scalar_t>(),
                                  shift.data_ptr<scalar_t>(), relu, res, res_ld, out.data_ptr<scalar_t>(), r0, r1);
      });
    });
  }

  static void grad_sums(const at::Tensor& g, const at::Tensor& h, const at::Tensor& ms, const at::Tensor& mb,
                        at::Tensor sum_g, at::Tensor sum_gh, const at::Tensor& act) {
    FNA_MBCONV_STEP("grad_sums");
    const int64_t c = h.size(1);
    const Chunks chunks(h.size(0));
    at::Tensor partial = at::empty({2, chunks.count, c}, sum_g.options());  // every chunk writes its part
    double* p = partial.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "fna_ext_mbconv_grad_sums", [&] {
      at::parallel_for(0, chunks.count, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          grad_sums_chunk<scalar_t>(g.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c, ptr_or_null<scalar_t>(ms),
                                    ptr_or_null<scalar_t>(mb), act.defined() ? act.data_ptr<scalar_t>() : nullptr,
                                    chunks.begin(i), chunks.end(i), p + i * c, p + (chunks.count + i) * c);
        }
      });
    });
    sum_g.copy_(partial[0].sum(0));
    sum_gh.copy_(partial[1].sum(0));
  }

  static void grad_apply(const at::Tensor& g, const at::Tensor& h, const at::Tensor& ms, const at::Tensor& mb,
                         const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, at::Tensor out) {
    FNA_MBCONV_STEP("grad_apply");
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "fna_ext_mbconv_grad_apply", [&] {
      at::parallel_for(0, h.size(0), 64, [&](int64_t r0, int64_t r1) {
        grad_apply_rows<scalar_t>(g.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h.size(1),
                                  ptr_or_null<scalar_t>(ms), ptr_or_null<scalar_t>(mb), a.data_ptr<scalar_t>(),
                                  b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), r0, r1);
      });
    });
  }

  static void depthwise_forward(const Geometry& g, const at::Tensor& in, const at::Tensor& scale,
                                const at::Tensor& shift, const at::Tensor& weight, at::Tensor out, at::Tensor sum,
                                at::Tensor sumsq) {
    FNA_MBCONV_STEP("depthwise_forward");
    const std::vector<Phase> list = phases(g);
    const int64_t rows = static_cast<int64_t>(list.size()) * g.n;
    at::Tensor partial = at::empty({2, rows, g.e}, sum.options());  // every task writes its part
    double* p = partial.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "fna_ext_mbconv_dw_forward", [&] {
      for_each_kernel_size(g.k, [&](auto k) {
        for_each_tile(g, list, [&](const Phase& f, int64_t n, int64_t c0) {
          const DwIn src{in.data_ptr(), f.input(in.stride(2)), scale.defined() ? scale.data_ptr() : nullptr,
                         shift.defined() ? shift.data_ptr() : nullptr};
          const int64_t r = partial_row(g, f, n);
          depthwise_forward_task<scalar_t, decltype(k)::value>(f.g, src, weight.data_ptr<scalar_t>(),
                                                               out.data_ptr<scalar_t>(), f.output(g.e), n, c0,
                                                               p + r * g.e + c0, p + (rows + r) * g.e + c0);
        });
      });
    });
    sum.copy_(partial[0].sum(0));
    sumsq.copy_(partial[1].sum(0));
  }

  static void depthwise_backward(const Geometry& g, const at::Tensor& ga2, const at::Tensor& h2,
                                 const at::Tensor& scale2, const at::Tensor& shift2, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& c, const at::Tensor& in,
                                 const at::Tensor& scale1, const at::Tensor& shift1, const at::Tensor& weight,
                                 at::Tensor grad_in, at::Tensor grad_weight, at::Tensor sum_g, at::Tensor sum_gh) {
    FNA_MBCONV_STEP("depthwise_backward");
    const std::vector<Phase> list = phases(g);
    const int64_t rows = static_cast<int64_t>(list.size()) * g.n;
    at::Tensor partial = at::empty({2, rows, g.e}, sum_g.options());  // every task writes its part
    // every task writes its part; none when the weight gradient is not wanted
    at::Tensor partial_w = at::empty({grad_weight.defined() ? rows : 0, g.e, g.k, g.k}, sum_g.options());
    double* p = partial.data_ptr<double>();
    double* pw = grad_weight.defined() ? partial_w.data_ptr<double>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "fna_ext_mbconv_dw_backward", [&] {
      for_each_kernel_size(g.k, [&](auto k) {
        for_each_tile(g, list, [&](const Phase& f, int64_t n, int64_t c0) {
          const DwIn src{in.data_ptr(), f.input(in.stride(2)), scale1.defined() ? scale1.data_ptr() : nullptr,
                         shift1.defined() ? shift1.data_ptr() : nullptr};
          const DwGradOut go{ga2.data_ptr(), h2.data_ptr(), scale2.data_ptr(), shift2.data_ptr(),
                             a.data_ptr(),   b.data_ptr(),  c.data_ptr(),      f.output(g.e)};
          const int64_t r = partial_row(g, f, n);
          depthwise_backward_task<scalar_t, decltype(k)::value>(
              f.g, go, src, weight.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), f.input(g.e),
              pw == nullptr ? nullptr : pw + r * g.e * g.k * g.k, n, c0, p + r * g.e + c0, p + (rows + r) * g.e + c0);
        });
      });
    });
    sum_g.copy_(partial[0].sum(0));
    sum_gh.copy_(partial[1].sum(0));
    if (grad_weight.defined()) set_centre_taps(grad_weight, g, partial_w.sum(0));
  }

  // Every kernel size of a mixture in one pass (see "nested kernel sizes" above). g is the widest
  // kernel's geometry; kernels ascending, out[i] (rows_out, e) and sums[i] (2, e) per kernel.
  static constexpr bool kNestedDepthwise = true;

  static void depthwise_forward_nested(const Geometry& g, const at::Tensor& in, const at::Tensor& scale,
                                       const at::Tensor& shift, const at::Tensor& weight,
                                       const std::vector<int64_t>& kernels, const std::vector<at::Tensor>& outs,
                                       const std::vector<at::Tensor>& sums) {
    FNA_MBCONV_STEP("depthwise_forward_nested");
    const int64_t nk = static_cast<int64_t>(kernels.size());
    const std::vector<Phase> list = phases(g);
    const int64_t rows = static_cast<int64_t>(list.size()) * g.n;
    at::Tensor partial = at::empty({nk, 2, rows, g.e}, sums[0].options());  // every task writes its part
    double* base = partial.data_ptr<double>();
    std::vector<void*> out_ptrs;
    for (const at::Tensor& out : outs) out_ptrs.push_back(out.data_ptr());
    AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "fna_ext_mbconv_dw_nested_forward", [&] {
      for_each_kernel_size(g.k, [&](auto kmax) {
        for_each_tile(g, list, [&](const Phase& f, int64_t n, int64_t c0) {
          const DwIn src{in.data_ptr(), f.input(in.stride(2)), scale.defined() ? scale.data_ptr() : nullptr,
                         shift.defined() ? shift.data_ptr() : nullptr};
          const int64_t r = partial_row(g, f, n);
          NestedOut o{};
          o.px = f.output(g.e);
          for (int64_t i = 0; i < nk; ++i) {
            const int64_t grp = (kernels[i] - 3) / 2;
            double* p = base + i * 2 * rows * g.e;
            o.out[grp] = out_ptrs[i];
            o.sum[grp] = p + r * g.e + c0;
            o.sumsq[grp] = p + (rows + r) * g.e + c0;
          }
          nested_forward_task<scalar_t, decltype(kmax)::value>(f.g, src, weight.data_ptr<scalar_t>(), o, n, c0);
        });
      });
    });
    for (int64_t i = 0; i < nk; ++i) sums[i].copy_(partial[i].sum(1));
  }

  // grad_in = the sum over kernels of each depthwise conv's input gradient; ga2[i], h2[i] and the
  // BN2 coefficients [i] as in depthwise_backward (BN2's backward applied on load).
  static void depthwise_backward_nested(const Geometry& g, const std::vector<int64_t>& kernels,
                                        const std::vector<at::Tensor>& ga2, const std::vector<at::Tensor>& h2,
                                        const std::vector<at::Tensor>& scale2, const std::vector<at::Tensor>& shift2,
                                        const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                                        const std::vector<at::Tensor>& c, const at::Tensor& weight,
                                        at::Tensor grad_in) {
    FNA_MBCONV_STEP("depthwise_backward_nested");
    NestedGradOut go{};
    for (size_t i = 0; i < kernels.size(); ++i) {
      const int64_t grp = (kernels[i] - 3) / 2;
      go.present[grp] = true;
      go.go[grp] = DwGradOut{ga2[i].data_ptr(), h2[i].data_ptr(), scale2[i].data_ptr(), shift2[i].data_ptr(),
                             a[i].data_ptr(),   b[i].data_ptr(),  c[i].data_ptr(),      Pixels{}};
    }
    const std::vector<Phase> list = phases(g);
    AT_DISPATCH_FLOATING_TYPES(grad_in.scalar_type(), "fna_ext_mbconv_dw_nested_backward", [&] {
      for_each_kernel_size(g.k, [&](auto kmax) {
        for_each_tile(g, list, [&](const Phase& f, int64_t n, int64_t c0) {
          NestedGradOut phase_go = go;
          for (DwGradOut& o : phase_go.go) o.px = f.output(g.e);
          nested_backward_task<scalar_t, decltype(kmax)::value>(f.g, phase_go, weight.data_ptr<scalar_t>(),
                                                                grad_in.data_ptr<scalar_t>(), f.input(g.e), n, c0);
        });
      });
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fna_ext, CPU, m) {
  register_kernels<CpuBackend>(m);
  register_mixture_kernels<CpuBackend>(m);
}

}  // namespace mbconv
}  // namespace fna_ext
