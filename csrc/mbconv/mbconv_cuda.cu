// CUDA kernels of the fused sampled MBConv (the steps are in mbconv_driver.h, the semantics of
// every primitive in mbconv_cpu.cpp).
//
// Every kernel maps channels to threadIdx.x (the fastest index of the channels-last rows, so a
// warp reads consecutive addresses) and rows or pixels to threadIdx.y, with grid-stride loops
// over the rows. Per-channel sums are accumulated per thread in the opmath type, flushed into
// double every kFlush terms (so long columns keep double precision without double arithmetic
// per element), summed over the block's rows in shared memory and added into the float64 result
// with one atomic per channel per block.
//
// Half and bfloat16 are only converted to and from float (no 16-bit arithmetic), so the kernels
// also run on Pascal (sm_61); atomicAdd on double needs sm_60.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "mbconv_cuda.h"

namespace fna_ext {
namespace mbconv {
namespace {

constexpr int kThreads = 256;  // per block: blockDim.x * blockDim.y, both powers of two
constexpr int kFlush = 64;     // terms per thread between flushes of the partial sums to double

// ---- dtypes -----------------------------------------------------------------------------------

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using Acc = typename AccOf<T>::type;  // the opmath type

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(Acc<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// activate() and activation_grad() (activation.h) are shared with the CPU kernels; the kind is
// uniform over a launch, so the switch inside them never diverges.

// ---- indexing and reductions --------------------------------------------------------------------

__device__ __forceinline__ int64_t thread_channel() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t first_row() { return static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; }
__device__ __forceinline__ int64_t row_step() { return static_cast<int64_t>(gridDim.y) * blockDim.y; }

// Two running sums of one thread: terms add in A, and every kFlush terms move into double.
template <typename A>
struct SumPair {
  A s = A(0), q = A(0);
  double ts = 0.0, tq = 0.0;
  int n = 0;
  __device__ __forceinline__ void add(A x, A y) {
    s += x;
    q += y;
    if (++n == kFlush) flush();
  }
  __device__ __forceinline__ void flush() {
    ts += static_cast<double>(s);
    tq += static_cast<double>(q);
    s = q = A(0);
    n = 0;
  }
};

// The sum of v over threadIdx.y (the block's rows) for this thread's channel, returned to every
// thread. `buf` is kThreads values of shared memory; every thread of the block must call this.
template <typename V>
__device__ V block_column_sum(V v, V* buf) {
  const unsigned tid = threadIdx.y * blockDim.x + threadIdx.x;
  buf[tid] = v;
  __syncthreads();
  for (unsigned half = blockDim.y / 2; half > 0; half /= 2) {
    if (threadIdx.y < half) buf[tid] += buf[tid + half * blockDim.x];
    __syncthreads();
  }
  const V total = buf[threadIdx.x];
  __syncthreads();  // the caller may reuse buf right away
  return total;
}

// Adds the block's totals of both sums of channel c into t0[c] and t1[c]: one atomic each.
template <typename A>
__device__ void block_add_sums(SumPair<A>& p, int64_t c, bool valid, double* t0, double* t1) {
  __shared__ double buf[kThreads];
  p.flush();
  const double s0 = block_column_sum(p.ts, buf);
  const double s1 = block_column_sum(p.tq, buf);
  if (threadIdx.y == 0 && valid) {
    atomicAdd(t0 + c, s0);
    atomicAdd(t1 + c, s1);
  }
}

// ---- per-channel passes over rows -------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(RowStatsArgs p) {
  using A = Acc<T>;
  const T* __restrict__ rows = static_cast<const T*>(p.rows);
  const int64_t c = thread_channel();
  const bool valid = c < p.c;
  SumPair<A> acc;
  if (valid) {
    for (int64_t r = first_row(); r < p.m; r += row_step()) {
      const A v = to_acc(rows[r * p.ld + c]);
      acc.add(v, v * v);
    }
  }
  block_add_sums(acc, c, valid, p.sum, p.sumsq);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) affine_act_kernel(AffineActArgs p) {
  using A = Acc<T>;
  const int64_t c = thread_channel();
  if (c >= p.c) return;  // no block-wide step follows
  const T* __restrict__ h = static_cast<const T*>(p.h);
  const T* __restrict__ res = static_cast<const T*>(p.residual);
  T* __restrict__ out = static_cast<T*>(p.out);
  const A scale = static_cast<const A*>(p.scale)[c], shift = static_cast<const A*>(p.shift)[c];
  for (int64_t r = first_row(); r < p.m; r += row_step()) {
    A v = to_acc(h[r * p.h_ld + c]) * scale + shift;
    if (p.act != kIdentity) {
      v = activate(v, p.act);
    } else if (res != nullptr) {
      v += to_acc(res[r * p.res_ld + c]);
    }
    out[r * p.out_ld + c] = from_acc<T>(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) grad_sums_kernel(GradSumsArgs p) {
  using A = Acc<T>;
  const T* __restrict__ g = static_cast<const T*>(p.g);
  const T* __restrict__ h = static_cast<const T*>(p.h);
  T* __restrict__ act = static_cast<T*>(p.act);
  const int64_t c = thread_channel();
  const bool valid = c < p.c;
  const bool masked = p.ms != nullptr;
  SumPair<A> acc;
  if (valid) {
    const A ms = masked ? static_cast<const A*>(p.ms)[c] : A(0);
    const A mb = masked ? static_cast<const A*>(p.mb)[c] : A(0);
    for (int64_t r = first_row(); r < p.m; r += row_step()) {
      const A hv = to_acc(h[r * p.h_ld + c]);
      A gz = to_acc(g[r * p.g_ld + c]);
      if (masked) {
        const A pre = hv * ms + mb;
        gz = activation_grad(pre, gz, p.act_kind);
        if (act != nullptr) act[r * p.act_ld + c] = from_acc<T>(activate(pre, p.act_kind));
      }
      acc.add(gz, gz * hv);
    }
  }
  block_add_sums(acc, c, valid, p.sum_g, p.sum_gh);
}

// Elementwise, so out may alias g: each element is read before it is written, by one thread.
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_apply_kernel(GradApplyArgs p) {
  using A = Acc<T>;
  const int64_t c = thread_channel();
  if (c >= p.c) return;
  const T* g = static_cast<const T*>(p.g);  // not __restrict__: may alias out
  const T* __restrict__ h = static_cast<const T*>(p.h);
  T* out = static_cast<T*>(p.out);
  const bool masked = p.ms != nullptr;
  const A ms = masked ? static_cast<const A*>(p.ms)[c] : A(0);
  const A mb = masked ? static_cast<const A*>(p.mb)[c] : A(0);
  const A a = static_cast<const A*>(p.a)[c], b = static_cast<const A*>(p.b)[c];
  const A cc = static_cast<const A*>(p.cc)[c];
  for (int64_t r = first_row(); r < p.m; r += row_step()) {
    const A hv = to_acc(h[r * p.h_ld + c]);
    A gz = to_acc(g[r * p.g_ld + c]);
    if (masked) gz = activation_grad(hv * ms + mb, gz, p.act_kind);
    out[r * p.out_ld + c] = from_acc<T>(gz * a + hv * b + cc);
  }
}

// ---- a BN's per-channel coefficients ------------------------------------------------------------

template <typename G>
__device__ __forceinline__ double parameter_or(const void* p, int64_t j, double absent) {
  return p != nullptr ? static_cast<double>(to_acc(static_cast<const G*>(p)[j])) : absent;
}

template <typename G, typename A>
__global__ void __launch_bounds__(kThreads) bn_coefficients_kernel(BnCoefficientsArgs p) {
  const int64_t j = thread_channel();  // 1-D blocks: a thread per channel
  if (j >= p.c) return;
  if (p.sum != nullptr) bn_statistics(p.sum[j], p.sumsq[j], p.count, p.eps, p.mean + j, p.invstd + j);
  double scale, shift;
  bn_affine(p.mean[j], p.invstd[j], parameter_or<G>(p.gamma, j, 1.0), parameter_or<G>(p.beta, j, 0.0), &scale,
            &shift);
  static_cast<A*>(p.scale)[j] = static_cast<A>(scale);
  static_cast<A*>(p.shift)[j] = static_cast<A>(shift);
}

template <typename G, typename A>
__global__ void __launch_bounds__(kThreads) bn_backward_kernel(BnBackwardArgs p) {
  const int64_t j = thread_channel();  // 1-D blocks: a thread per channel
  if (j >= p.c) return;
  double a, b, c;
  bn_backward(p.sum_g[j], p.sum_gh[j], p.mean[j], p.invstd[j], parameter_or<G>(p.gamma, j, 1.0), p.count, &a, &b, &c,
              p.dgamma + j);
  static_cast<A*>(p.a)[j] = static_cast<A>(a);
  static_cast<A*>(p.b)[j] = static_cast<A>(b);
  static_cast<A*>(p.cc)[j] = static_cast<A>(c);
}

// ---- depthwise convolution ---------------------------------------------------------------------

// The depthwise input as the conv sees it: BN1 + its activation applied on load when scale is given.
template <typename T>
struct DwInput {
  using A = Acc<T>;
  const T* __restrict__ data;
  int64_t ld;
  bool act;
  int kind;  // the activation (activation.h)
  A scale, shift;
  __device__ __forceinline__ DwInput(const void* in, int64_t row_stride, const void* sc, const void* sh, int64_t c,
                                     int activation)
      : data(static_cast<const T*>(in)), ld(row_stride), act(sc != nullptr), kind(activation),
        scale(act ? static_cast<const A*>(sc)[c] : A(0)), shift(act ? static_cast<const A*>(sh)[c] : A(0)) {}
  using Raw = A;
  // pixel p = (n * h + ih) * w + iw, channel c
  __device__ __forceinline__ A raw(int64_t pixel, int64_t c) const { return to_acc(data[pixel * ld + c]); }
  __device__ __forceinline__ Raw load(int64_t pixel, int64_t c) const { return raw(pixel, c); }
  __device__ __forceinline__ A operator()(int64_t pixel, int64_t c) const { return finish(raw(pixel, c)); }
  // the value seen by the conv, from the stored one
  __device__ __forceinline__ A finish(A v) const { return act ? activate(v * scale + shift, kind) : v; }
};

// The centre K x K taps of channel c of the (e_max, 1, k_max, k_max) weight.
template <typename T, int K>
__device__ __forceinline__ void load_taps(const DwShape& s, const void* weight, int64_t c, Acc<T>* w) {
  const T* src = static_cast<const T*>(weight) + c * s.k_max * s.k_max;
  const int64_t off = (s.k_max - K) / 2;
#pragma unroll
  for (int kh = 0; kh < K; ++kh) {
#pragma unroll
    for (int kw = 0; kw < K; ++kw) w[kh * K + kw] = to_acc(src[(kh + off) * s.k_max + kw + off]);
  }
}

// The taps' spacing: D itself, a constant for the common D = 1 (so the undilated kernels compile
// to exactly the code they had before dilation existed), or the shape's when D = 0 (dilated).
template <int D>
__device__ __forceinline__ int dilation_of(const DwShape& s) {
  return D > 0 ? D : static_cast<int>(s.dilation);
}

// Output pixel index -> (image, row, column).
struct Pixel {
  int64_t n;
  int y, x;
  __device__ __forceinline__ Pixel(int64_t p, int64_t height, int64_t width) {
    x = static_cast<int>(p % width);
    const int64_t t = p / width;
    y = static_cast<int>(t % height);
    n = t / height;
  }
};

// One thread per output element, all K x K taps in registers; sums of the stored outputs (as
// rounded to T, the values BN2 will normalise).
template <typename T, int K, int S, int D>
__global__ void __launch_bounds__(kThreads) dw_forward_kernel(DwForwardArgs p) {
  using A = Acc<T>;
  const DwShape& s = p.s;
  const int64_t c = thread_channel();
  const bool valid = c < s.e;
  SumPair<A> acc;
  if (valid) {
    A w[K * K];
    load_taps<T, K>(s, p.weight, c, w);
    const DwInput<T> in(p.in, p.ld, p.scale, p.shift, c, s.act_expand);
    T* __restrict__ out = static_cast<T*>(p.out);
    const int h = static_cast<int>(s.h), wd = static_cast<int>(s.w), pad = static_cast<int>(s.pad);
    const int dil = dilation_of<D>(s);
    const int64_t pixels = s.n * s.ho * s.wo;
    for (int64_t q = first_row(); q < pixels; q += row_step()) {
      const Pixel o(q, s.ho, s.wo);
      A v = A(0);
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const int ih = o.y * S - pad + kh * dil;
        if (ih < 0 || ih >= h) continue;  // zero padding
        const int64_t row = (o.n * h + ih) * wd;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          const int iw = o.x * S - pad + kw * dil;
          if (iw < 0 || iw >= wd) continue;
          v += in(row + iw, c) * w[kh * K + kw];
        }
      }
      const T stored = from_acc<T>(v);
      out[q * s.e + c] = stored;
      const A r = to_acc(stored);
      acc.add(r, r * r);
    }
  }
  block_add_sums(acc, c, valid, p.sum, p.sumsq);
}

// ---- the same convolution, tiled through shared memory ----------------------------------------
//
// The kernel above reads every tap from global memory and applies BN1 and its activation to each
// tap again: K * K times per input value. dw_forward_tiled_kernel (below, after the untiled
// backward kernels it shares helpers with) gives a block 32 channels (threadIdx.x) of one
// image's TILE_H x TILE_W output pixels at a time: the block first loads the input window those
// pixels need into shared memory, BN1 and the activation applied once per value and zero padding
// written in, then each thread slides its channel's K x K taps over a row of TILE_W outputs held
// in registers. Blocks loop over tiles (grid-stride), so the BN2 sums cost one atomic per channel
// per block. Shapes whose window does not fit in shared memory run the kernel above. The weight
// gradient and the stride-1 input gradient below are tiled the same way. Unlike the untiled
// kernels, they multiply the padding's zeros by the taps rather than skip them, so a non-finite
// weight or gradient spreads NaN to the border, as cuDNN's convolutions do. All were written
// without a GPU to run them on; FNA_EXT_CUDA_DEPTHWISE=simple selects the untiled kernels (tiled
// is the default).

constexpr int kTileChannels = 32;    // threadIdx.x: one warp's row of channels, 128 bytes of float
constexpr int kTileRows = 8;         // threadIdx.y
constexpr int kTileSharedBytes = 46 * 1024;  // under the 48 KiB a block may take without opting in,
                                             // beside block_add_sums' 2 KiB

// Output columns per thread (a register row): fewer at stride 2, whose window is twice as wide.
template <int S>
struct TileWidth {
  static constexpr int value = S == 1 ? 8 : 4;
};

// The tile of a shape: output rows per tile (16 or 8, whichever fits in shared memory and pads the
// map's height less) and the input window's extent; rows == 0 when not even 8 rows fit.
struct DwTile {
  int rows = 0;      // output rows per tile (a multiple of kTileRows, at most 2 * kTileRows)
  int cols = 0;      // output columns per tile
  int in_rows = 0;   // the input window
  int in_cols = 0;
  int64_t tiles_h = 0, tiles_w = 0;
};

__host__ __device__ inline int window(int outputs, int stride, int extent) { return (outputs - 1) * stride + extent; }

inline int extent_of(const DwShape& s) { return static_cast<int>(s.dilation * (s.k - 1) + 1); }

// Tiles of height x width pixels (the forward's outputs, the input gradient's inputs) whose
// window spans (tile - 1) * stride + extent pixels.
inline DwTile dw_tile(int64_t height, int64_t width, int stride, int extent, int cols, int value_bytes) {
  DwTile t;
  t.cols = cols;
  t.in_cols = window(cols, stride, extent);
  int64_t best_padded = 0;
  for (int rows = 2 * kTileRows; rows >= kTileRows; rows -= kTileRows) {
    const int in_rows = window(rows, stride, extent);
    const int64_t padded = (height + rows - 1) / rows * rows;  // the rows the tiles cover
    const bool fits = static_cast<int64_t>(in_rows) * t.in_cols * kTileChannels * value_bytes <= kTileSharedBytes;
    if (fits && (t.rows == 0 || padded < best_padded)) {
      t.rows = rows;
      t.in_rows = in_rows;
      best_padded = padded;
    }
  }
  if (t.rows > 0) {
    t.tiles_h = (height + t.rows - 1) / t.rows;
    t.tiles_w = (width + t.cols - 1) / t.cols;
  }
  return t;
}

// The tile `index` (of tiles_h x tiles_w per image): its image, and its first pixel's row and column.
struct TileAt {
  int64_t n;
  int row, col;
};

__device__ __forceinline__ TileAt tile_at(int64_t index, const DwTile& t) {
  const int64_t per_image = t.tiles_h * t.tiles_w;
  const int64_t n = index / per_image, rest = index - n * per_image;
  return {n, static_cast<int>(rest / t.tiles_w) * t.rows, static_cast<int>(rest % t.tiles_w) * t.cols};
}

// Fills this lane's channel of the block's window (in_rows x in_cols pixels whose first is
// (row0, col0) of a height x width map) from `source`, and zero outside the map. Two phases per
// batch of Source::kBatch pixels (8 loads in flight per thread): source.load(y, x) only reads
// memory, so the batch's loads issue back to back; source.finish(raw) then applies the activation
// or BN arithmetic. In one loop, the activation's switch on its runtime kind put branches between
// the loads, and the compiler issued one load, waited for it, and only then the next (the SASS of
// the first GPU run's kernels, and of a one-loop batched version that the second run measured no
// faster). Pixels outside the map load pixel (0, 0), a real element, so no load needs a branch:
// the map must hold a pixel (the ops' check_inputs refuses an empty image, and "same" padding
// keeps the output map non-empty), and source must read a valid channel for every lane (lanes
// past the last channel pass another channel's index).
template <typename A, typename Source>
__device__ __forceinline__ void fill_window(A* tile, const DwTile& t, int row0, int col0, int height, int width,
                                            bool valid, const Source& source) {
  using Raw = typename Source::Raw;
  constexpr int kBatch = Source::kBatch;
  const int pixels = t.in_rows * t.in_cols;
  for (int first = threadIdx.y; first < pixels; first += kTileRows * kBatch) {
    Raw raw[kBatch];
    bool inside[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int pixel = first + j * kTileRows;
      const int r = pixel / t.in_cols, col = pixel - r * t.in_cols;
      const int y = row0 + r, x = col0 + col;
      inside[j] = valid && pixel < pixels && y >= 0 && y < height && x >= 0 && x < width;
      raw[j] = source.load(inside[j] ? y : 0, inside[j] ? x : 0);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int pixel = first + j * kTileRows;
      if (pixel < pixels) tile[pixel * kTileChannels + threadIdx.x] = inside[j] ? source.finish(raw[j]) : A(0);
    }
  }
}

// How far tap (kh, kw) of a K x K kernel lies from its centre: it belongs to the centred k x k
// kernels with (k - 1) / 2 >= the ring. A constant once the tap loops unroll.
template <int K>
__device__ __forceinline__ int tap_ring(int kh, int kw) {
  constexpr int kCentre = (K - 1) / 2;
  const int dh = kh > kCentre ? kh - kCentre : kCentre - kh, dw = kw > kCentre ? kw - kCentre : kCentre - kw;
  return dh > dw ? dh : dw;
}

// sum[o] += window(r * S + kh * dil, o * S + kw * dil) * w[kh * K + kw] over the taps within `ring`
// of the centre, for the TW pixels of window row r, in this lane's channel.
template <typename A, int K, int S, int TW>
__device__ __forceinline__ void correlate_row(const A* tile, int in_cols, int r, int dil, const A* w, int ring,
                                              A* sum) {
#pragma unroll
  for (int kh = 0; kh < K; ++kh) {
    const A* line = tile + ((r * S + kh * dil) * in_cols) * kTileChannels + threadIdx.x;
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      if (tap_ring<K>(kh, kw) > ring) continue;
      const A tap = w[kh * K + kw];
#pragma unroll
      for (int o = 0; o < TW; ++o) sum[o] += line[(o * S + kw * dil) * kTileChannels] * tap;
    }
  }
}

// This lane's channel's taps, or zeros past the last channel.
template <typename T, int K>
__device__ __forceinline__ void load_taps_or_zero(const DwShape& s, const void* weight, int64_t c, bool valid,
                                                  Acc<T>* w) {
  if (valid) {
    load_taps<T, K>(s, weight, c, w);
    return;
  }
#pragma unroll
  for (int i = 0; i < K * K; ++i) w[i] = Acc<T>(0);
}

// fill_window's source over one image's map: `values` (DwInput, DwOutputGrad) loads pixel q's
// stored values and finishes them into what the window holds; kBatch pixels a batch (8 loads).
template <typename Values, int kBatchPixels>
struct MapWindowSource {
  using A = typename Values::A;
  using Raw = typename Values::Raw;
  static constexpr int kBatch = kBatchPixels;
  const Values& values;
  int64_t first_row;  // n * the map's height
  int width;
  int64_t c;
  __device__ __forceinline__ Raw load(int y, int x) const { return values.load((first_row + y) * width + x, c); }
  __device__ __forceinline__ A finish(Raw r) const { return values.finish(r); }
};

// The activated input window of tile `at` of the outputs (zero padding after the activation, as
// the convolution pads), between two barriers: the block's reads of the previous tile are done
// before it, and its writes are visible after.
template <typename T, int S>
__device__ __forceinline__ void load_input_window(Acc<T>* tile, const DwTile& t, const TileAt& at, const DwShape& s,
                                                  const DwInput<T>& in, int64_t c, bool valid) {
  const int h = static_cast<int>(s.h), wd = static_cast<int>(s.w), pad = static_cast<int>(s.pad);
  const MapWindowSource<DwInput<T>, 8> source{in, at.n * h, wd, valid ? c : 0};
  __syncthreads();
  fill_window(tile, t, at.row * S - pad, at.col * S - pad, h, wd, valid, source);
  __syncthreads();
}

// The tiled forward's and weight gradient's walk: the block takes its tiles of the output map in
// turn, loads each one's activated input window (load_input_window), and each thread then calls
// row(at, oy, oh) for its rows of the tile: row oy of tile `at`, output row oh.
template <typename T, int S, typename Row>
__device__ __forceinline__ void for_each_output_row(Acc<T>* tile, const DwTile& t, const DwShape& s,
                                                    const DwInput<T>& in, int64_t c, bool valid, Row row) {
  const int ho = static_cast<int>(s.ho);
  const int64_t tiles = s.n * t.tiles_h * t.tiles_w;
  for (int64_t index = blockIdx.y; index < tiles; index += gridDim.y) {
    const TileAt at = tile_at(index, t);
    load_input_window<T, S>(tile, t, at, s, in, c, valid);
    for (int oy = threadIdx.y; oy < t.rows; oy += kTileRows) {
      const int oh = at.row + oy;
      if (oh >= ho) break;
      row(at, oy, oh);
    }
  }
}

// dL/dh2 at output element (q, c): BN2's activation gradient and backward applied as ga2 and h2 load.
template <typename T>
struct DwOutputGrad {
  using A = Acc<T>;
  const T* __restrict__ ga2;
  const T* __restrict__ h2;
  int64_t e;
  int kind;
  A ms, mb, a, b, cc;
  __device__ __forceinline__ DwOutputGrad(const DwBackwardArgs& p, int64_t c)
      : DwOutputGrad(DwOutputGradArgs{p.ga2, p.h2, p.scale2, p.shift2, p.a, p.b, p.c}, p.s, c) {}
  __device__ __forceinline__ DwOutputGrad(const DwOutputGradArgs& g, const DwShape& s, int64_t c)
      : ga2(static_cast<const T*>(g.ga2)), h2(static_cast<const T*>(g.h2)), e(s.e), kind(s.act_depthwise),
        ms(static_cast<const A*>(g.scale2)[c]), mb(static_cast<const A*>(g.shift2)[c]),
        a(static_cast<const A*>(g.a)[c]), b(static_cast<const A*>(g.b)[c]), cc(static_cast<const A*>(g.c)[c]) {}
  struct Raw {
    T g, h;  // ga2 and h2 as stored
  };
  __device__ __forceinline__ Raw load(int64_t q, int64_t c) const { return {ga2[q * e + c], h2[q * e + c]}; }
  __device__ __forceinline__ A finish(Raw r) const {
    const A hv = to_acc(r.h);
    const A gz = activation_grad(hv * ms + mb, to_acc(r.g), kind);
    return gz * a + hv * b + cc;
  }
  __device__ __forceinline__ A operator()(int64_t q, int64_t c) const { return finish(load(q, c)); }
};


// Input gradient in gather form: one thread per input element sums G * w over the output pixels
// whose window covers it (oh * S - pad + kh * dilation = ih), then BN1's activation gradient, and sums.
template <typename T, int K, int S, int D>
__global__ void __launch_bounds__(kThreads) dw_grad_input_kernel(DwBackwardArgs p) {
  using A = Acc<T>;
  const DwShape& s = p.s;
  const int64_t c = thread_channel();
  const bool valid = c < s.e;
  const bool bn1 = p.scale1 != nullptr;  // uniform over the grid
  SumPair<A> acc;
  if (valid) {
    A w[K * K];
    load_taps<T, K>(s, p.weight, c, w);
    const DwOutputGrad<T> grad(p, c);
    const DwInput<T> in(p.in, p.ld, p.scale1, p.shift1, c, s.act_expand);
    T* __restrict__ grad_in = static_cast<T*>(p.grad_in);
    const int ho = static_cast<int>(s.ho), wo = static_cast<int>(s.wo), pad = static_cast<int>(s.pad);
    const int dil = dilation_of<D>(s);
    const int64_t pixels = s.n * s.h * s.w;
    for (int64_t q = first_row(); q < pixels; q += row_step()) {
      const Pixel i(q, s.h, s.w);
      A ga = A(0);
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const int th = i.y + pad - kh * dil;  // = oh * S
        if (th < 0 || th % S != 0 || th / S >= ho) continue;
        const int64_t row = (i.n * ho + th / S) * wo;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          const int tw = i.x + pad - kw * dil;
          if (tw < 0 || tw % S != 0 || tw / S >= wo) continue;
          ga += grad(row + tw / S, c) * w[kh * K + kw];
        }
      }
      if (!bn1) {
        grad_in[q * s.e + c] = from_acc<T>(ga);
        continue;
      }
      const A raw = in.raw(q, c);
      // sums of the stored gradient, the values BN1's backward will scale
      const T stored = from_acc<T>(activation_grad(raw * in.scale + in.shift, ga, in.kind));
      grad_in[q * s.e + c] = stored;
      const A gz = to_acc(stored);
      acc.add(gz, gz * raw);
    }
  }
  if (bn1) block_add_sums(acc, c, valid, p.sum_g, p.sum_gh);
}

// The tiled forward: kernel sizes kSmallest .. K (odd) in one pass over the widest kernel's
// window; a single conv is the case kSmallest = K. Every tap adds into the output of each kernel
// size whose centred k x k holds it (tap ring r = max(|kh - centre|, |kw - centre|) lies in kernel
// size 2 * i + 3 when i + 1 >= r). Each size's taps are visited in its own row-major order with the
// same multiply-adds, so a mixture's outputs are its single convs', bit for bit, for one load of
// the window instead of one per size.
template <typename T, int K, int S, int D, int kSmallest>
__global__ void __launch_bounds__(kThreads) dw_forward_tiled_kernel(DwNestedForwardArgs p, DwTile t) {
  using A = Acc<T>;
  constexpr int TW = TileWidth<S>::value;
  constexpr int kSizes = (K - 1) / 2;          // slots of kernel sizes 3 .. K
  constexpr int kFirst = (kSmallest - 3) / 2;  // the first slot computed
  extern __shared__ __align__(16) unsigned char shared_bytes[];  // doubles too
  A* tile = reinterpret_cast<A*>(shared_bytes);  // [in_rows][in_cols][kTileChannels]
  const DwShape& s = p.s;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileChannels + threadIdx.x;
  const bool valid = c < s.e;
  A w[K * K];
  load_taps_or_zero<T, K>(s, p.weight, c, valid, w);
  const DwInput<T> in(p.in, p.ld, p.scale, p.shift, valid ? c : 0, s.act_expand);
  const int ho = static_cast<int>(s.ho), wo = static_cast<int>(s.wo);
  const int dil = dilation_of<D>(s);
  SumPair<A> acc[kSizes];
  for_each_output_row<T, S>(tile, t, s, in, c, valid, [&](const TileAt& at, int oy, int oh) {
    A sum[kSizes][TW];
#pragma unroll
    for (int i = kFirst; i < kSizes; ++i) {
#pragma unroll
      for (int ox = 0; ox < TW; ++ox) sum[i][ox] = A(0);
    }
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const A* line = tile + ((oy * S + kh * dil) * t.in_cols) * kTileChannels + threadIdx.x;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int ring = tap_ring<K>(kh, kw);
        const A tap = w[kh * K + kw];
#pragma unroll
        for (int ox = 0; ox < TW; ++ox) {
          const A v = line[(ox * S + kw * dil) * kTileChannels];
#pragma unroll
          for (int i = kFirst; i < kSizes; ++i) {
            if (i + 1 >= ring) sum[i][ox] += v * tap;
          }
        }
      }
    }
    if (!valid) return;
    const int64_t first = (at.n * ho + oh) * wo + at.col;
#pragma unroll
    for (int i = kFirst; i < kSizes; ++i) {
      T* __restrict__ out = static_cast<T*>(p.out[i]);
      if (out == nullptr) continue;
#pragma unroll
      for (int ox = 0; ox < TW; ++ox) {
        if (at.col + ox >= wo) break;
        const T stored = from_acc<T>(sum[i][ox]);
        out[(first + ox) * s.e + c] = stored;
        const A r = to_acc(stored);
        acc[i].add(r, r * r);
      }
    }
  });
#pragma unroll
  for (int i = kFirst; i < kSizes; ++i) {
    if (p.out[i] != nullptr) block_add_sums(acc[i], c, valid, p.sum[i], p.sumsq[i]);  // uniform
  }
}

// The stride-1 input gradient, tiled like the forward, of one conv or summed over a mixture's
// kernel sizes. The input gradient is the correlation of G with the taps flipped in both
// directions, over a window that starts (K - 1) * dil - pad pixels before the tile's first input
// pixel. For each kernel size present the block loads that size's G into the widest kernel's
// window (BN2's activation gradient and backward applied once per value, zero outside the map),
// and every thread adds its correlation with that size's ring of the flipped taps (its centred
// k x k) into its register rows: with the widest window's origin, size k's taps sit at the same
// offsets as the widest kernel's taps of the same ring. Then, with BN1, its activation gradient
// and sums, as dw_grad_input_kernel does per element.
template <typename T, int K, int D>
__global__ void __launch_bounds__(kThreads) dw_grad_input_tiled_kernel(DwNestedBackwardArgs p, DwTile t) {
  using A = Acc<T>;
  constexpr int TW = TileWidth<1>::value;
  constexpr int kSizes = (K - 1) / 2;
  constexpr int kRows = 2;  // register rows per thread: t.rows <= 2 * kTileRows
  extern __shared__ __align__(16) unsigned char shared_bytes[];  // doubles too
  A* tile = reinterpret_cast<A*>(shared_bytes);  // [in_rows][in_cols][kTileChannels] of one size's G
  const DwShape& s = p.s;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileChannels + threadIdx.x;
  const bool valid = c < s.e;
  A taps[K * K], flipped[K * K];
  load_taps_or_zero<T, K>(s, p.weight, c, valid, taps);
#pragma unroll
  for (int i = 0; i < K * K; ++i) flipped[i] = taps[K * K - 1 - i];
  const int64_t cv = valid ? c : 0;  // a channel whose coefficients exist, for the lanes past e
  const bool bn1 = p.scale1 != nullptr;  // uniform over the grid
  const DwInput<T> in(p.in, p.ld, p.scale1, p.shift1, cv, s.act_expand);
  T* __restrict__ grad_in = static_cast<T*>(p.grad_in);
  const int h = static_cast<int>(s.h), wd = static_cast<int>(s.w), pad = static_cast<int>(s.pad);
  const int ho = static_cast<int>(s.ho), wo = static_cast<int>(s.wo);
  const int dil = dilation_of<D>(s);
  const int reach = (K - 1) * dil;
  const int64_t tiles = s.n * t.tiles_h * t.tiles_w;
  SumPair<A> acc;
  for (int64_t index = blockIdx.y; index < tiles; index += gridDim.y) {
    const TileAt at = tile_at(index, t);
    A sum[kRows][TW];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
#pragma unroll
      for (int ix = 0; ix < TW; ++ix) sum[j][ix] = A(0);
    }
#pragma unroll
    for (int size = 0; size < kSizes; ++size) {
      if (p.go[size].ga2 == nullptr) continue;  // uniform over the grid
      const DwOutputGrad<T> grad(p.go[size], s, cv);
      __syncthreads();  // the previous window's reads are done
      // 4 pixels a batch: two loads each; 8 took the 7x7 kernel past 128 registers (one block)
      const MapWindowSource<DwOutputGrad<T>, 4> source{grad, at.n * ho, wo, cv};
      fill_window(tile, t, at.row + pad - reach, at.col + pad - reach, ho, wo, valid, source);
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        const int iy = threadIdx.y + j * kTileRows;
        if (iy >= t.rows) break;
        correlate_row<A, K, 1, TW>(tile, t.in_cols, iy, dil, flipped, size + 1, sum[j]);  // this size's k x k
      }
    }
    if (!valid) continue;
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int ih = at.row + threadIdx.y + j * kTileRows;
      if (threadIdx.y + j * kTileRows >= t.rows || ih >= h) break;
#pragma unroll
      for (int ix = 0; ix < TW; ++ix) {
        if (at.col + ix >= wd) break;
        const int64_t q = (at.n * h + ih) * wd + at.col + ix;
        if (!bn1) {
          grad_in[q * s.e + c] = from_acc<T>(sum[j][ix]);
          continue;
        }
        const A raw = in.raw(q, c);  // loads ahead of the arithmetic cost registers: 143 at 7x7, one block
        const T stored = from_acc<T>(activation_grad(raw * in.scale + in.shift, sum[j][ix], in.kind));
        grad_in[q * s.e + c] = stored;
        const A gz = to_acc(stored);
        acc.add(gz, gz * raw);
      }
    }
  }
  if (bn1) block_add_sums(acc, c, valid, p.sum_g, p.sum_gh);
}

// Weight gradient: each thread keeps all K x K taps of its channel in registers over its output
// pixels (G computed once per pixel), then the block sums them tap by tap and adds them into
// the float64 (e, K, K) accumulator.
template <typename T, int K, int S, int D>
__global__ void __launch_bounds__(kThreads) dw_grad_weight_kernel(DwBackwardArgs p) {
  using A = Acc<T>;
  __shared__ A buf[kThreads];
  const DwShape& s = p.s;
  const int64_t c = thread_channel();
  const bool valid = c < s.e;
  A acc[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) acc[t] = A(0);
  if (valid) {
    const DwOutputGrad<T> grad(p, c);
    const DwInput<T> in(p.in, p.ld, p.scale1, p.shift1, c, s.act_expand);
    const int h = static_cast<int>(s.h), wd = static_cast<int>(s.w), pad = static_cast<int>(s.pad);
    const int dil = dilation_of<D>(s);
    const int64_t pixels = s.n * s.ho * s.wo;
    for (int64_t q = first_row(); q < pixels; q += row_step()) {
      const Pixel o(q, s.ho, s.wo);
      const A gv = grad(q, c);
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const int ih = o.y * S - pad + kh * dil;
        if (ih < 0 || ih >= h) continue;  // the padding contributes 0
        const int64_t row = (o.n * h + ih) * wd;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          const int iw = o.x * S - pad + kw * dil;
          if (iw < 0 || iw >= wd) continue;
          acc[kh * K + kw] += gv * in(row + iw, c);
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < K * K; ++t) {
    const A total = block_column_sum(acc[t], buf);
    if (threadIdx.y == 0 && valid) atomicAdd(p.grad_weight + c * K * K + t, static_cast<double>(total));
  }
}

// The weight gradient, tiled like the forward: a block loads the activated input window of its
// output tile into shared memory once, each thread reads G once per output pixel of its register
// row and adds G * window into its channel's K x K taps, and the block sums the taps once, after
// all its tiles.
template <typename T, int K, int S, int D>
__global__ void __launch_bounds__(kThreads) dw_grad_weight_tiled_kernel(DwBackwardArgs p, DwTile t) {
  using A = Acc<T>;
  constexpr int TW = TileWidth<S>::value;
  extern __shared__ __align__(16) unsigned char shared_bytes[];  // doubles too
  A* tile = reinterpret_cast<A*>(shared_bytes);  // [in_rows][in_cols][kTileChannels] of in'
  __shared__ A buf[kThreads];
  const DwShape& s = p.s;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileChannels + threadIdx.x;
  const bool valid = c < s.e;
  const int64_t cv = valid ? c : 0;  // a channel whose coefficients exist, for the lanes past e
  const DwOutputGrad<T> grad(p, cv);
  const DwInput<T> in(p.in, p.ld, p.scale1, p.shift1, cv, s.act_expand);
  const int ho = static_cast<int>(s.ho), wo = static_cast<int>(s.wo);
  const int dil = dilation_of<D>(s);
  A taps[K * K];
#pragma unroll
  for (int i = 0; i < K * K; ++i) taps[i] = A(0);
  for_each_output_row<T, S>(tile, t, s, in, c, valid, [&](const TileAt& at, int oy, int oh) {
    // G of the row's TW pixels: every load first, then the arithmetic (see fill_window); pixels
    // past the map load the row's first and count as zero
    const int64_t first = (at.n * ho + oh) * wo + at.col;
    typename DwOutputGrad<T>::Raw raw[TW];
#pragma unroll
    for (int ox = 0; ox < TW; ++ox) raw[ox] = grad.load(first + (at.col + ox < wo ? ox : 0), cv);
    A g[TW];
#pragma unroll
    for (int ox = 0; ox < TW; ++ox) g[ox] = valid && at.col + ox < wo ? grad.finish(raw[ox]) : A(0);
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const A* line = tile + ((oy * S + kh * dil) * t.in_cols) * kTileChannels + threadIdx.x;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        A sum = A(0);
#pragma unroll
        for (int ox = 0; ox < TW; ++ox) sum += line[(ox * S + kw * dil) * kTileChannels] * g[ox];
        taps[kh * K + kw] += sum;
      }
    }
  });
#pragma unroll
  for (int i = 0; i < K * K; ++i) {
    const A total = block_column_sum(taps[i], buf);
    if (threadIdx.y == 0 && valid) atomicAdd(p.grad_weight + c * K * K + i, static_cast<double>(total));
  }
}

// ---- launches ---------------------------------------------------------------------------------

struct Plan {
  dim3 grid, block;
};

// Channels on x: the smallest power of two covering them, up to a warp, so narrow tensors do not
// leave lanes idle. Rows on y, with enough blocks for `waves` full waves of the GPU (more only
// multiplies the atomics of the reductions) but at least rows_per_thread rows per thread.
cudaError_t plan_rows(int64_t channels, int64_t rows, int64_t rows_per_thread, int waves, Plan* plan) {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  int bx = 1;
  while (bx < 32 && bx < channels) bx *= 2;
  const int by = kThreads / bx;
  const int64_t gx = (channels + bx - 1) / bx;
  const int64_t budget = static_cast<int64_t>(sms > 0 ? sms : 1) * (2048 / kThreads) * waves;
  int64_t gy = (rows + by * rows_per_thread - 1) / (by * rows_per_thread);
  gy = gy < budget / gx ? gy : budget / gx;
  gy = gy < 65535 ? gy : 65535;
  gy = gy > 1 ? gy : 1;
  plan->block = dim3(bx, by);
  plan->grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  return cudaSuccess;
}

template <typename T> struct Tag { using type = T; };

template <typename F>
cudaError_t with_dtype(MbconvDtype dtype, F&& f) {
  switch (dtype) {
    case MbconvDtype::kFloat32: return f(Tag<float>());
    case MbconvDtype::kFloat64: return f(Tag<double>());
    case MbconvDtype::kFloat16: return f(Tag<__half>());
    case MbconvDtype::kBFloat16: return f(Tag<__nv_bfloat16>());
  }
  return cudaErrorInvalidValue;
}

// D: the dilation as a constant (1), or 0 for "read it from the shape" (see dilation_of).
template <int K_, int S_, int D_> struct Shape { static constexpr int K = K_, S = S_, D = D_; };

// The kernels are instantiated for every (kernel size, stride) pair, so the taps unroll; a
// dilated conv (stride 1 only) gets its own instantiation, leaving the undilated ones untouched.
template <typename F>
cudaError_t with_shape(int64_t k, int64_t stride, int64_t dilation, F&& f) {
  if (dilation > 1) {
    if (stride != 1) return cudaErrorInvalidValue;
    switch (k) {
      case 3: return f(Shape<3, 1, 0>());
      case 5: return f(Shape<5, 1, 0>());
      case 7: return f(Shape<7, 1, 0>());
    }
  } else if (stride == 1) {
    switch (k) {
      case 3: return f(Shape<3, 1, 1>());
      case 5: return f(Shape<5, 1, 1>());
      case 7: return f(Shape<7, 1, 1>());
    }
  } else if (stride == 2) {
    switch (k) {
      case 3: return f(Shape<3, 2, 1>());
      case 5: return f(Shape<5, 2, 1>());
      case 7: return f(Shape<7, 2, 1>());
    }
  }
  return cudaErrorInvalidValue;
}

bool bad_shape(const DwShape& s) {
  return s.k < 1 || s.k > s.k_max || s.pad < 0 || s.dilation < 1 || s.dilation > INT32_MAX || s.h > INT32_MAX ||
         s.w > INT32_MAX || s.pad > INT32_MAX || s.ho > INT32_MAX || s.wo > INT32_MAX ||
         s.dilation * (s.k - 1) + 1 > INT32_MAX;  // coordinates, windows and extents are int
}

// One thread per channel; G is the BN parameters' dtype, A the coefficients' (float or double).
template <template <typename, typename> class Kernel, typename Args>
cudaError_t per_channel_launch(const Args& args, MbconvDtype param_dtype, bool double_opmath, cudaStream_t stream) {
  if (args.c == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((args.c + kThreads - 1) / kThreads);
  return with_dtype(param_dtype, [&](auto tag) {
    using G = typename decltype(tag)::type;
    if (double_opmath) {
      Kernel<G, double>::launch(blocks, stream, args);
    } else {
      Kernel<G, float>::launch(blocks, stream, args);
    }
    return cudaGetLastError();
  });
}

template <typename G, typename A>
struct BnCoefficientsKernel {
  static void launch(unsigned blocks, cudaStream_t stream, const BnCoefficientsArgs& args) {
    bn_coefficients_kernel<G, A><<<blocks, kThreads, 0, stream>>>(args);
  }
};

template <typename G, typename A>
struct BnBackwardKernel {
  static void launch(unsigned blocks, cudaStream_t stream, const BnBackwardArgs& args) {
    bn_backward_kernel<G, A><<<blocks, kThreads, 0, stream>>>(args);
  }
};

}  // namespace

cudaError_t bn_coefficients_launch(const BnCoefficientsArgs& args, MbconvDtype param_dtype, bool double_opmath,
                                   cudaStream_t stream) {
  return per_channel_launch<BnCoefficientsKernel>(args, param_dtype, double_opmath, stream);
}

cudaError_t bn_backward_launch(const BnBackwardArgs& args, MbconvDtype param_dtype, bool double_opmath,
                               cudaStream_t stream) {
  return per_channel_launch<BnBackwardKernel>(args, param_dtype, double_opmath, stream);
}

namespace {

// FNA_EXT_CUDA_DEPTHWISE=simple runs the untiled forward kernel (to compare); read at every
// launch, so a benchmark can switch it between runs.
bool tiled_depthwise_wanted() {
  const char* choice = std::getenv("FNA_EXT_CUDA_DEPTHWISE");
  return choice == nullptr || std::strcmp(choice, "simple") != 0;
}

struct TiledPlan {
  dim3 grid, block;
  size_t shared = 0;
};

int value_bytes_of(MbconvDtype dtype) { return dtype == MbconvDtype::kFloat64 ? 8 : 4; }  // the opmath type

// Tiles over the output map (the forward and the weight gradient), or none when the tiled kernels
// are not wanted or the window does not fit.
DwTile output_tile(const DwShape& s, MbconvDtype dtype) {
  if (!tiled_depthwise_wanted()) return DwTile();
  return dw_tile(s.ho, s.wo, static_cast<int>(s.stride), extent_of(s),
                 s.stride == 1 ? TileWidth<1>::value : TileWidth<2>::value, value_bytes_of(dtype));
}

// Tiles over the input map, for the stride-1 input gradient.
DwTile input_tile(const DwShape& s, MbconvDtype dtype) {
  if (s.stride != 1 || !tiled_depthwise_wanted()) return DwTile();
  return dw_tile(s.h, s.w, 1, extent_of(s), TileWidth<1>::value, value_bytes_of(dtype));
}

// Channel groups on x, tiles on y: two waves of blocks at 2048 threads per multiprocessor (more
// only adds atomics), each block looping over its tiles.
cudaError_t plan_tiles(const DwShape& s, const DwTile& tile, MbconvDtype dtype, TiledPlan* plan) {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t groups = (s.e + kTileChannels - 1) / kTileChannels;
  const int64_t tiles = s.n * tile.tiles_h * tile.tiles_w;
  const int64_t budget = std::max<int64_t>(1, static_cast<int64_t>(std::max(sms, 1)) * (2048 / kThreads) * 2 / groups);
  plan->grid = dim3(static_cast<unsigned>(groups), static_cast<unsigned>(std::min<int64_t>({tiles, budget, 65535})));
  plan->block = dim3(kTileChannels, kTileRows);
  plan->shared = static_cast<size_t>(tile.in_rows) * tile.in_cols * kTileChannels * value_bytes_of(dtype);
  return cudaSuccess;
}

// A single conv as the tiled kernel's arguments: its kernel size's slot only.
DwNestedForwardArgs as_nested(const DwForwardArgs& a) {
  DwNestedForwardArgs n{};
  n.s = a.s;
  n.in = a.in;
  n.ld = a.ld;
  n.scale = a.scale;
  n.shift = a.shift;
  n.weight = a.weight;
  const int64_t slot = (a.s.k - 3) / 2;
  n.out[slot] = a.out;
  n.sum[slot] = a.sum;
  n.sumsq[slot] = a.sumsq;
  return n;
}

// Plans a tiled kernel's grid for `tile` and calls launch(tag, shape, plan) with the dtype's Tag
// and the Shape of kernel size s.k, `stride` and s.dilation; then the launch's error.
template <typename Launch>
cudaError_t launch_tiled(const DwShape& s, int64_t stride, MbconvDtype dtype, const DwTile& tile, Launch launch) {
  TiledPlan plan;
  if (const cudaError_t err = plan_tiles(s, tile, dtype, &plan)) return err;
  return with_dtype(dtype, [&](auto tag) {
    return with_shape(s.k, stride, s.dilation, [&](auto shape) {
      launch(tag, shape, plan);
      return cudaGetLastError();
    });
  });
}

// The tiled forward of kernel sizes 3 .. K (a mixture) or of K alone (a single conv).
cudaError_t depthwise_forward_tiled(const DwNestedForwardArgs& args, MbconvDtype dtype, const DwTile& tile,
                                    bool single, cudaStream_t stream) {
  return launch_tiled(args.s, args.s.stride, dtype, tile, [&](auto tag, auto shape, const TiledPlan& plan) {
    using T = typename decltype(tag)::type;
    using Sh = decltype(shape);
    if (single) {
      dw_forward_tiled_kernel<T, Sh::K, Sh::S, Sh::D, Sh::K><<<plan.grid, plan.block, plan.shared, stream>>>(args,
                                                                                                         tile);
    } else {
      dw_forward_tiled_kernel<T, Sh::K, Sh::S, Sh::D, 3><<<plan.grid, plan.block, plan.shared, stream>>>(args, tile);
    }
  });
}

// The tiled input gradient (stride 1) of one conv or a mixture's kernel sizes.
cudaError_t depthwise_input_grad_tiled(const DwNestedBackwardArgs& args, MbconvDtype dtype, const DwTile& tile,
                                       cudaStream_t stream) {
  return launch_tiled(args.s, 1, dtype, tile, [&](auto tag, auto shape, const TiledPlan& plan) {
    using T = typename decltype(tag)::type;
    using Sh = decltype(shape);
    dw_grad_input_tiled_kernel<T, Sh::K, Sh::D><<<plan.grid, plan.block, plan.shared, stream>>>(args, tile);
  });
}

// A single conv's backward as the tiled input gradient's arguments: its kernel size's slot only.
DwNestedBackwardArgs as_nested(const DwBackwardArgs& a) {
  DwNestedBackwardArgs n{};
  n.s = a.s;
  n.weight = a.weight;
  n.go[(a.s.k - 3) / 2] = DwOutputGradArgs{a.ga2, a.h2, a.scale2, a.shift2, a.a, a.b, a.c};
  n.grad_in = a.grad_in;
  n.in = a.in;
  n.ld = a.ld;
  n.scale1 = a.scale1;
  n.shift1 = a.shift1;
  n.sum_g = a.sum_g;
  n.sum_gh = a.sum_gh;
  return n;
}

}  // namespace

cudaError_t row_stats_launch(const RowStatsArgs& args, MbconvDtype dtype, cudaStream_t stream) {
  if (args.m == 0 || args.c == 0) return cudaSuccess;
  Plan plan;
  if (const cudaError_t err = plan_rows(args.c, args.m, 16, 1, &plan)) return err;
  return with_dtype(dtype, [&](auto tag) {
    row_stats_kernel<typename decltype(tag)::type><<<plan.grid, plan.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t affine_act_launch(const AffineActArgs& args, MbconvDtype dtype, cudaStream_t stream) {
  if (args.m == 0 || args.c == 0) return cudaSuccess;
  Plan plan;
  if (const cudaError_t err = plan_rows(args.c, args.m, 4, 4, &plan)) return err;
  return with_dtype(dtype, [&](auto tag) {
    affine_act_kernel<typename decltype(tag)::type><<<plan.grid, plan.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t grad_sums_launch(const GradSumsArgs& args, MbconvDtype dtype, cudaStream_t stream) {
  if (args.m == 0 || args.c == 0) return cudaSuccess;
  Plan plan;
  if (const cudaError_t err = plan_rows(args.c, args.m, 16, 1, &plan)) return err;
  return with_dtype(dtype, [&](auto tag) {
    grad_sums_kernel<typename decltype(tag)::type><<<plan.grid, plan.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t grad_apply_launch(const GradApplyArgs& args, MbconvDtype dtype, cudaStream_t stream) {
  if (args.m == 0 || args.c == 0) return cudaSuccess;
  Plan plan;
  if (const cudaError_t err = plan_rows(args.c, args.m, 4, 4, &plan)) return err;
  return with_dtype(dtype, [&](auto tag) {
    grad_apply_kernel<typename decltype(tag)::type><<<plan.grid, plan.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t depthwise_forward_launch(const DwForwardArgs& args, MbconvDtype dtype, cudaStream_t stream) {
  const DwShape& s = args.s;
  if (bad_shape(s)) return cudaErrorInvalidValue;
  const int64_t pixels = s.n * s.ho * s.wo;
  if (pixels == 0 || s.e == 0) return cudaSuccess;
  const DwTile tile = output_tile(s, dtype);
  if (tile.rows > 0) return depthwise_forward_tiled(as_nested(args), dtype, tile, true, stream);
  Plan plan;
  if (const cudaError_t err = plan_rows(s.e, pixels, 4, 2, &plan)) return err;
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_shape(s.k, s.stride, s.dilation, [&](auto shape) {
      using Sh = decltype(shape);
      dw_forward_kernel<T, Sh::K, Sh::S, Sh::D><<<plan.grid, plan.block, 0, stream>>>(args);
      return cudaGetLastError();
    });
  });
}

cudaError_t depthwise_forward_nested_launch(const DwNestedForwardArgs& args, MbconvDtype dtype, cudaStream_t stream) {
  const DwShape& s = args.s;
  if (bad_shape(s) || (s.k != 3 && s.k != 5 && s.k != 7)) return cudaErrorInvalidValue;
  for (int i = 0; i < 3; ++i) {
    if (args.out[i] != nullptr && 2 * i + 3 > s.k) return cudaErrorInvalidValue;  // wider than the shape's
  }
  if (s.n * s.ho * s.wo == 0 || s.e == 0) return cudaSuccess;
  const DwTile tile = output_tile(s, dtype);
  if (tile.rows > 0) return depthwise_forward_tiled(args, dtype, tile, false, stream);
  for (int i = 0; i < 3; ++i) {  // one launch per kernel size, each with its own padding
    if (args.out[i] == nullptr) continue;
    DwForwardArgs one{};
    one.s = s;
    one.s.k = 2 * i + 3;
    one.s.pad = s.dilation * (one.s.k - 1) / 2;
    one.in = args.in;
    one.ld = args.ld;
    one.scale = args.scale;
    one.shift = args.shift;
    one.weight = args.weight;
    one.out = args.out[i];
    one.sum = args.sum[i];
    one.sumsq = args.sumsq[i];
    if (const cudaError_t err = depthwise_forward_launch(one, dtype, stream)) return err;
  }
  return cudaSuccess;
}

bool depthwise_backward_nested_fits(const DwShape& s, MbconvDtype dtype) {
  return !bad_shape(s) && (s.k == 3 || s.k == 5 || s.k == 7) && input_tile(s, dtype).rows > 0;
}

cudaError_t depthwise_backward_nested_launch(const DwNestedBackwardArgs& args, MbconvDtype dtype,
                                             cudaStream_t stream) {
  const DwShape& s = args.s;
  if (!depthwise_backward_nested_fits(s, dtype)) return cudaErrorInvalidValue;  // the driver asks first
  for (int i = 0; i < 3; ++i) {
    if (args.go[i].ga2 != nullptr && 2 * i + 3 > s.k) return cudaErrorInvalidValue;
  }
  if (s.n * s.h * s.w == 0 || s.e == 0) return cudaSuccess;
  return depthwise_input_grad_tiled(args, dtype, input_tile(s, dtype), stream);
}

cudaError_t depthwise_backward_launch(const DwBackwardArgs& args, MbconvDtype dtype, cudaStream_t stream) {
  const DwShape& s = args.s;
  if (bad_shape(s)) return cudaErrorInvalidValue;
  const int64_t pixels_in = s.n * s.h * s.w, pixels_out = s.n * s.ho * s.wo;
  if (pixels_in == 0 || s.e == 0) return cudaSuccess;
  Plan in_plan, w_plan;
  if (const cudaError_t err = plan_rows(s.e, pixels_in, 4, 2, &in_plan)) return err;
  // the weight gradient ends with K * K block reductions: more pixels per thread amortise them
  if (const cudaError_t err = plan_rows(s.e, pixels_out, 16, 1, &w_plan)) return err;
  // the input gradient's tiles cover the input (stride 1 only); the weight gradient's the output
  const DwTile tile = input_tile(s, dtype), w_tile = output_tile(s, dtype);
  if (tile.rows > 0) {
    if (const cudaError_t err = depthwise_input_grad_tiled(as_nested(args), dtype, tile, stream)) return err;
  }
  TiledPlan w_tiled;
  if (w_tile.rows > 0) {
    if (const cudaError_t err = plan_tiles(s, w_tile, dtype, &w_tiled)) return err;
  }
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_shape(s.k, s.stride, s.dilation, [&](auto shape) {
      using Sh = decltype(shape);
      if (tile.rows == 0) {
        dw_grad_input_kernel<T, Sh::K, Sh::S, Sh::D><<<in_plan.grid, in_plan.block, 0, stream>>>(args);
      }
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess || pixels_out == 0 || args.grad_weight == nullptr) return err;
      if (w_tile.rows > 0) {
        dw_grad_weight_tiled_kernel<T, Sh::K, Sh::S, Sh::D>
            <<<w_tiled.grid, w_tiled.block, w_tiled.shared, stream>>>(args, w_tile);
      } else {
        dw_grad_weight_kernel<T, Sh::K, Sh::S, Sh::D><<<w_plan.grid, w_plan.block, 0, stream>>>(args);
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace mbconv
}  // namespace fna_ext
