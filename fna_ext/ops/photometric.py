"""SSD's photometric distortion of a uint8 RGB image: brightness, contrast, and saturation and hue
in HSV (the parameters are drawn by :class:`fna_ext.data.PhotometricDistortion`).

The compiled kernel (csrc/augment/photometric_cpu.cpp) does it in one pass over the pixels; the
numpy reference below is the definition it is tested against, and what runs where the extension
is not loaded. Both work in float32, operation for operation in the same order, so they give the
same bytes (the tests assert equality)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _extension

# ---- colour space (hue in degrees, saturation in [0, 1], value in [0, 255]) ---------------------

# numpy reduces over a trailing axis of 3 an order of magnitude slower than it combines whole
# planes, so both conversions split the channels into contiguous planes first


def _planes(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(pixels, -1, 0), dtype=np.float32)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = _planes(rgb)
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    safe = np.maximum(chroma, 1e-6)  # grey pixels: any hue works, as saturation is 0
    # the maximum channel decides the 120-degree third of the hue circle
    hue = np.where(value == r, (g - b) / safe,
                   np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue *= 60
    hue += np.where(hue < 0, np.float32(360), np.float32(0))  # as % 360 on [-60, 300), without numpy's slow float mod
    saturation = chroma / np.maximum(value, 1e-6)
    return np.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    hue, saturation, value = _planes(hsv)
    chroma = value * saturation
    sector = hue / 60  # in [0, 6)

    # the closed form of the piecewise-linear hue ramps: n = 5, 3, 1 gives red, green, blue
    def channel(n: int) -> np.ndarray:
        k = n + sector  # in [1, 11): one subtraction is % 6, without numpy's slow float mod
        k -= np.where(k >= 6, np.float32(6), np.float32(0))
        return value - chroma * np.clip(np.minimum(k, 4 - k), 0, 1)

    return np.stack([channel(5), channel(3), channel(1)], axis=-1)


# ---- the distortion -------------------------------------------------------------------------------

def photometric_distortion_reference(image: np.ndarray, brightness: float = 0.0, contrast: float = 1.0,
                                     contrast_first: bool = True, saturation: float | None = None,
                                     hue: float | None = None) -> np.ndarray:
    """``image`` (H, W, 3) uint8 plus ``brightness``, times ``contrast`` before the HSV step
    (``contrast_first``) or after it; the HSV step, when ``saturation`` or ``hue`` is given, clips
    to [0, 255], scales S by ``saturation`` (clipped to [0, 1]) and turns H by ``hue`` degrees.
    Rounded (ties to even) and clipped back to uint8."""
    _check(image, brightness, contrast, saturation, hue)
    pixels = image.astype(np.float32)
    pixels += np.float32(brightness)
    if contrast_first:
        pixels *= np.float32(contrast)
    if saturation is not None or hue is not None:
        hsv = rgb_to_hsv(np.clip(pixels, 0, 255))  # the conversion is defined on [0, 255] only
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(saturation), 0, 1)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + np.float32(hue)) % np.float32(360)
        pixels = hsv_to_rgb(hsv)
    if not contrast_first:
        pixels *= np.float32(contrast)
    return np.rint(np.clip(pixels, 0, 255)).astype(np.uint8)


def photometric_distortion(image: np.ndarray, brightness: float = 0.0, contrast: float = 1.0,
                           contrast_first: bool = True, saturation: float | None = None,
                           hue: float | None = None) -> np.ndarray:
    """As :func:`photometric_distortion_reference`, on the compiled kernel where it is loaded."""
    if not compiled():  # the reference checks its arguments itself
        return photometric_distortion_reference(image, brightness, contrast, contrast_first, saturation, hue)
    _check(image, brightness, contrast, saturation, hue)
    # torch wants arrays it may write to, and Pillow's are read-only: copy those (a few tens of
    # microseconds), rather than silence the warning, which is not thread-safe
    pixels = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else image.copy())
    out = torch.ops.fna_ext.photometric_distortion(
        pixels, float(brightness), float(contrast), bool(contrast_first),
        None if saturation is None else float(saturation), None if hue is None else float(hue))
    return out.numpy()


def compiled() -> bool:
    """Whether the compiled kernel runs. Asking loads the extension (or builds it on first use):
    a transform asks when it is made, so DataLoader workers inherit the answer instead of each
    loading, or building, the extension again."""
    return _extension.has_kernel("photometric_distortion", "cpu")


def _check(image: np.ndarray, brightness: float, contrast: float, saturation: float | None,
           hue: float | None) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"photometric_distortion: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation), ("hue", hue)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"photometric_distortion: {name} must be a finite number, got {value}")


def _register_fake_kernels() -> None:
    def fake(image, brightness, contrast, contrast_first, saturation, hue):
        return torch.empty_like(image)

    torch.library.register_fake("fna_ext::photometric_distortion", fake)


_extension.on_load(_register_fake_kernels)
