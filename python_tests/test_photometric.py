"""SSD's photometric distortion: the compiled kernel against the numpy reference (bit for bit on
random images and parameters) and both against a per-pixel definition built on Python's colorsys;
the draws of PhotometricDistortion; the kernel's registration and its argument checks."""

import colorsys

import numpy as np
import pytest
import torch

from fna_ext import _extension
from fna_ext.data import PhotometricDistortion
from fna_ext.ops.photometric import photometric_distortion, photometric_distortion_reference

needs_kernel = pytest.mark.skipif(not _extension.has_kernel("photometric_distortion", "cpu"),
                                  reason="the compiled extension is not loaded")

# (brightness, contrast, contrast_first, saturation, hue): every step alone, all together, and
# values that clip, wrap the hue both ways or leave the HSV step out (factors like 0.5 put many
# values exactly on .5, where float32 and double round apart)
PARAMETERS = [(0.0, 1.0, True, None, None), (31.5, 1.0, True, None, None), (-20.0, 0.55, True, None, None),
              (0.0, 1.45, False, None, None), (0.0, 1.0, True, 1.37, None), (0.0, 1.0, False, 0.61, None),
              (0.0, 1.0, True, None, 17.9), (0.0, 1.0, True, None, -18.0), (25.0, 1.3, True, 1.2, -7.5),
              (-32.0, 0.7, False, 0.8, 12.0), (30.0, 1.5, False, 1.5, 18.0), (0.0, 1.0, True, 1.0, 0.0)]


def image(seed=0, height=37, width=29):
    """Random colours plus the cases the conversions branch on: greys, pure and saturated
    colours, black and white, and ties between the largest channels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    special = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                        [200, 200, 10], [10, 200, 200], [200, 10, 200], [1, 0, 0], [254, 255, 255]], dtype=np.uint8)
    flat = pixels.reshape(-1, 3)
    n = min(len(flat), len(special))
    flat[:n] = special[:n]
    return pixels


def colorsys_definition(pixels, brightness, contrast, contrast_first, saturation, hue):
    """SSD's steps pixel by pixel in Python floats (double), with colorsys for the colour space."""
    out = np.empty_like(pixels)
    for index in np.ndindex(pixels.shape[:2]):
        rgb = [float(v) + brightness for v in pixels[index]]
        if contrast_first:
            rgb = [v * contrast for v in rgb]
        if saturation is not None or hue is not None:
            h, s, v = colorsys.rgb_to_hsv(*[min(max(c, 0.0), 255.0) for c in rgb])
            if saturation is not None:
                s = min(max(s * saturation, 0.0), 1.0)
            if hue is not None:
                h = ((h * 360 + hue) % 360) / 360
            rgb = list(colorsys.hsv_to_rgb(h, s, v))
        if not contrast_first:
            rgb = [v * contrast for v in rgb]
        out[index] = [round(min(max(c, 0.0), 255.0)) for c in rgb]
    return out


@pytest.mark.parametrize("params", PARAMETERS)
def test_reference_matches_the_colorsys_definition(params):
    pixels = image()
    difference = photometric_distortion_reference(pixels, *params).astype(int) - colorsys_definition(pixels, *params)
    # float32 against double: a value near .5 may round either way, nothing more
    assert np.abs(difference).max() <= 1
    assert (difference != 0).mean() < 0.02


@needs_kernel
@pytest.mark.parametrize("params", PARAMETERS)
@pytest.mark.parametrize("size", [(37, 29), (1, 1), (3, 86), (64, 64)])  # chunk tails, one chunk, several
def test_kernel_matches_the_reference(params, size):
    pixels = image(seed=size[0], height=size[0], width=size[1])
    np.testing.assert_array_equal(photometric_distortion(pixels, *params),
                                  photometric_distortion_reference(pixels, *params))


@needs_kernel
def test_kernel_on_random_parameters_and_a_large_image():
    rng = np.random.default_rng(1)
    pixels = image(seed=1, height=240, width=320)
    for _ in range(20):
        params = (rng.uniform(-32, 32), rng.uniform(0.5, 1.5), bool(rng.integers(2)),
                  rng.uniform(0.5, 1.5) if rng.integers(2) else None, rng.uniform(-18, 18) if rng.integers(2) else None)
        np.testing.assert_array_equal(photometric_distortion(pixels, *params),
                                      photometric_distortion_reference(pixels, *params))


@needs_kernel
def test_kernel_reads_views_and_read_only_arrays():
    pixels = image(height=40, width=50)
    view = pixels[::2, 5:45]  # not contiguous
    np.testing.assert_array_equal(photometric_distortion(view, 10.0, 1.2, True, 1.1, 5.0),
                                  photometric_distortion_reference(view, 10.0, 1.2, True, 1.1, 5.0))
    frozen = pixels.copy()
    frozen.flags.writeable = False  # as Pillow's arrays are
    out = photometric_distortion(frozen, 10.0, 1.2, True, 1.1, 5.0)
    np.testing.assert_array_equal(out, photometric_distortion_reference(pixels, 10.0, 1.2, True, 1.1, 5.0))
    np.testing.assert_array_equal(frozen, pixels)


@needs_kernel
@pytest.mark.parametrize("hue", [359.9, -359.9, 370.0, -725.0, 1e6, -3.3e7])
def test_hue_past_a_whole_turn(hue):
    """Past +-360 the kernel takes numpy's float32 modulo lane by lane: still the same bytes."""
    pixels = image()
    for saturation in (None, 1.2):
        np.testing.assert_array_equal(photometric_distortion(pixels, 0.0, 1.0, True, saturation, hue),
                                      photometric_distortion_reference(pixels, 0.0, 1.0, True, saturation, hue))


@pytest.mark.parametrize("name, args", [("brightness", (float("nan"), 1.0)), ("contrast", (0.0, float("inf"))),
                                        ("saturation", (0.0, 1.0, True, float("nan"))),
                                        ("hue", (0.0, 1.0, True, None, float("-inf")))])
def test_non_finite_parameters_are_refused(name, args):
    for fn in (photometric_distortion, photometric_distortion_reference):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            fn(image(), *args)


@needs_kernel
def test_the_kernel_itself_refuses_non_finite_parameters():
    with pytest.raises(RuntimeError, match="hue must be finite"):
        torch.ops.fna_ext.photometric_distortion(torch.from_numpy(image()), 0.0, 1.0, True, None, float("nan"))


@needs_kernel
def test_opcheck():
    pixels = torch.from_numpy(image(height=9, width=7))
    torch.library.opcheck(torch.ops.fna_ext.photometric_distortion.default, (pixels, 5.0, 1.1, False, 1.2, -3.0))
    torch.library.opcheck(torch.ops.fna_ext.photometric_distortion.default, (pixels, 0.0, 1.0, True, None, None))


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8)])
def test_bad_images_are_refused(bad):
    for fn in (photometric_distortion, photometric_distortion_reference):
        with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
            fn(bad, 1.0)


def _ssd_draws(p=0.5):
    """The parameters PhotometricDistortion drew before it had a kernel (its code as of the
    numpy version), from torch's global generator: brightness, the contrast coin, contrast when
    first, saturation, hue, contrast when last."""
    def coin(q):
        return torch.rand(()).item() < q

    def uniform(low, high):
        return low + (high - low) * torch.rand(()).item()
    brightness = uniform(-32, 32) if coin(p) else 0.0
    contrast_first = coin(0.5)
    contrast = (uniform(0.5, 1.5) if coin(p) else 1.0) if contrast_first else 1.0
    saturation = uniform(0.5, 1.5) if coin(p) else None
    hue = uniform(-18, 18) if coin(p) else None
    if not contrast_first:
        contrast = uniform(0.5, 1.5) if coin(p) else 1.0
    return brightness, contrast, contrast_first, saturation, hue


def test_the_transform_draws_as_ssd_does():
    """Over many seeds, covering both contrast orders and every step on and off, the transform
    gives the distortion with the parameters SSD's order draws, and leaves the generator where
    that order does (an extra or a missing draw would move the next number)."""
    pixels = image(height=12, width=10)
    seen = set()
    for seed in range(64):
        torch.manual_seed(seed)
        out, _ = PhotometricDistortion(p=0.5)(pixels, {})
        after = torch.rand(()).item()
        torch.manual_seed(seed)
        params = _ssd_draws()
        assert torch.rand(()).item() == after, seed
        np.testing.assert_array_equal(out, photometric_distortion_reference(pixels, *params))
        brightness, contrast, contrast_first, saturation, hue = params
        seen |= {("first", contrast_first), ("brightness", brightness != 0), ("contrast", contrast != 1),
                 ("saturation", saturation is not None), ("hue", hue is not None)}
    assert len(seen) == 10  # each of the five choices came out both ways
