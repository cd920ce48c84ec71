// SSD's photometric distortion of one uint8 RGB image (H, W, 3), in one pass over its pixels.
//
// Why compiled: a DataLoader worker shares the cores with the training step, so every
// millisecond it spends per image is taken from the step. In numpy the distortion is a dozen
// passes over float32 copies of the image (brightness, contrast, the HSV round trip, clipping,
// rounding), the largest cost of a sample after decoding. Here each pixel is read once and
// written once; the arithmetic is the numpy reference's (fna_ext.ops.photometric), in float32 and
// in the same order, so the bytes are the reference's, bit for bit (the tests assert it). Fused
// multiply-adds would round differently, so this file is compiled without contracting them.
//
// Pixels go through in chunks of kChunk: deinterleaved into float planes, transformed four at a
// time (the hue's branches are selects), and rounded back into the interleaved bytes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

// a - b * c stays two roundings, as numpy computes it (GCC contracts it into one FMA by default
// where the target has FMA; Clang within an expression, see the pragma in each function below)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace fna_ext {
namespace {

constexpr int64_t kChunk = 256;

struct Distortion {
  float brightness;     // added to every channel
  float contrast;       // multiplies every channel
  bool contrast_first;  // before the HSV step, else after it
  bool hsv;             // whether the HSV round trip runs (clipping to [0, 255] first)
  float saturation;     // multiplies S (clipped to [0, 1]); 1 leaves S as it is
  float hue;            // added to H in degrees (0 leaves H as it is) ...
  bool whole_turns;     // ... and |hue| >= 360: the sum needs a true modulo
};

// Four floats as one value (GCC/Clang vector extension, SSE2 on any x86-64): the compiler does
// not vectorise the plain loop by itself, as its selects read to it as control flow.
typedef float F4 __attribute__((vector_size(16)));
typedef int I4 __attribute__((vector_size(16)));

inline F4 splat(float v) { return F4{v, v, v, v}; }
inline F4 vmin(F4 a, F4 b) { return b < a ? b : a; }  // as std::min
inline F4 vmax(F4 a, F4 b) { return a < b ? b : a; }  // as std::max
inline F4 clamp(F4 v, float lo, float hi) { return vmin(vmax(v, splat(lo)), splat(hi)); }
inline F4 where(I4 mask, F4 a, F4 b) { return mask ? a : b; }

// numpy's float32 x % 360: fmodf is exact, and the result takes the divisor's sign.
inline float mod360(float x) {
  const float m = std::fmod(x, 360.0f);
  return m < 0.0f ? m + 360.0f : m;
}

// The HSV step on four pixels: rgb_to_hsv, the jitter, hsv_to_rgb. With saturation 1 and hue 0
// the result is the reference's with the step's jitter left out, bit for bit: S * 1 stays in
// [0, 1], and a hue of 360 (a tiny negative one turned positive) gives the same ramps as 0.
inline void hsv_jitter4(F4& r, F4& g, F4& b, const Distortion& d) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  const F4 rv = clamp(r, 0.0f, 255.0f), gv = clamp(g, 0.0f, 255.0f), bv = clamp(b, 0.0f, 255.0f);
  const F4 value = vmax(vmax(rv, gv), bv);
  const F4 chroma = value - vmin(vmin(rv, gv), bv);
  const F4 safe = vmax(chroma, splat(1e-6f));  // grey: any hue works, its saturation is 0
  // the maximum channel decides the 120-degree third of the hue circle
  const I4 red = value == rv, green = value == gv;
  const F4 num = where(red, gv - bv, where(green, bv - rv, rv - gv));
  const F4 third = where(red, splat(0.0f), where(green, splat(2.0f), splat(4.0f)));
  F4 hue = (num / safe + third) * 60.0f;
  hue += where(hue < 0.0f, splat(360.0f), splat(0.0f));
  const F4 sat = clamp(chroma / vmax(value, splat(1e-6f)) * d.saturation, 0.0f, 1.0f);
  // numpy's (hue + shift) % 360: for |shift| < 360 the sum lies in (-360, 720), where one turn
  // added or taken away is exactly what fmod gives; larger shifts take fmod lane by lane
  hue += d.hue;
  if (d.whole_turns) {
    for (int j = 0; j < 4; ++j) hue[j] = mod360(hue[j]);
  } else {
    hue += where(hue < 0.0f, splat(360.0f), splat(0.0f));
    hue -= where(hue >= 360.0f, splat(360.0f), splat(0.0f));
  }
  // back: the closed form of the piecewise-linear hue ramps (n = 5, 3, 1: red, green, blue)
  const F4 c = value * sat;
  const F4 sector = hue / 60.0f;
  auto ramp = [&](float n) {
    F4 k = n + sector;
    k -= where(k >= 6.0f, splat(6.0f), splat(0.0f));
    return value - c * clamp(vmin(k, 4.0f - k), 0.0f, 1.0f);
  };
  r = ramp(5.0f);
  g = ramp(3.0f);
  b = ramp(1.0f);
}

// np.rint (ties to even, the default rounding mode) of v clipped to [0, 255]: adding 2^23 leaves
// no bits below the units, without a libm call.
inline I4 rounded_bytes(F4 v) {
  const F4 shift = splat(8388608.0f);
  return __builtin_convertvector((clamp(v, 0.0f, 255.0f) + shift) - shift, I4);
}

inline F4 load4(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof(F4));
  return v;
}

inline void store4(float* p, F4 v) { std::memcpy(p, &v, sizeof(F4)); }

void distort_chunk(const uint8_t* in, uint8_t* out, int64_t n, const Distortion& d) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  float planes[3][kChunk];
  for (int64_t i = 0; i < n; ++i) {
    for (int ch = 0; ch < 3; ++ch) planes[ch][i] = static_cast<float>(in[3 * i + ch]);
  }
  const int64_t padded = (n + 3) / 4 * 4;
  for (int64_t i = n; i < padded; ++i) planes[0][i] = planes[1][i] = planes[2][i] = 0.0f;  // unused
  const float pre = d.contrast_first ? d.contrast : 1.0f, post = d.contrast_first ? 1.0f : d.contrast;
  for (int64_t i = 0; i < padded; i += 4) {
    F4 rgb[3];
    for (int ch = 0; ch < 3; ++ch) rgb[ch] = (load4(planes[ch] + i) + d.brightness) * pre;
    if (d.hsv) hsv_jitter4(rgb[0], rgb[1], rgb[2], d);
    for (int ch = 0; ch < 3; ++ch) {
      const I4 bytes = rounded_bytes(rgb[ch] * post);
      for (int j = 0; j < 4 && i + j < n; ++j) out[3 * (i + j) + ch] = static_cast<uint8_t>(bytes[j]);
    }
  }
}

at::Tensor photometric_distortion_cpu(const at::Tensor& image, double brightness, double contrast,
                                      bool contrast_first, const c10::optional<double>& saturation,
                                      const c10::optional<double>& hue) {
  TORCH_CHECK(image.dim() == 3 && image.size(2) == 3 && image.scalar_type() == at::kByte,
              "fna_ext::photometric_distortion: image must be uint8 (H, W, 3), got ", image.scalar_type(), " ",
              image.sizes());
  const at::Tensor src = image.contiguous();
  at::Tensor out = at::empty_like(src);
  auto finite = [](const char* name, double v) {
    TORCH_CHECK(std::isfinite(v), "fna_ext::photometric_distortion: ", name, " must be finite, got ", v);
  };
  finite("brightness", brightness);
  finite("contrast", contrast);
  if (saturation.has_value()) finite("saturation", *saturation);
  if (hue.has_value()) finite("hue", *hue);
  const float turn = static_cast<float>(hue.value_or(0.0));
  const Distortion d{static_cast<float>(brightness), static_cast<float>(contrast), contrast_first,
                     saturation.has_value() || hue.has_value(), static_cast<float>(saturation.value_or(1.0)), turn,
                     std::abs(turn) >= 360.0f};
  const uint8_t* in = src.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t pixels = src.size(0) * src.size(1);
  const int64_t chunks = (pixels + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = c * kChunk;
      distort_chunk(in + 3 * first, dst + 3 * first, std::min(kChunk, pixels - first), d);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fna_ext, CPU, m) { m.impl("photometric_distortion", &photometric_distortion_cpu); }

}  // namespace fna_ext
