"""Synthetic datasets, so that training, search and evaluation run without a download.

``python -m fna_ext.data.synthetic --out DIR`` draws five kinds of shape (circle, square,
triangle, ring, cross) with random colours, textures, sizes and rotations, partly occluding one
another, on textured backgrounds, and writes them in one of three layouts; or draws stick
figures and writes them in a fourth:

* ``--kind detection`` (default): COCO 2017 layout, ``annotations/instances_{train,val}2017.json``
  and JPEG images in ``train2017/`` and ``val2017/``;
* ``--kind classification``: ImageNet folder layout, ``{train,val}/<class name>/*.png`` and
  ``classes.txt``;
* ``--kind segmentation``: Cityscapes layout, ``leftImg8bit/{train,val}/synthetic/*_leftImg8bit.png``
  and ``gtFine/{train,val}/synthetic/*_gtFine_labelIds.png``. The pixels of each shape carry a
  Cityscapes label id (SEGMENTATION_LABEL_IDS: train ids 1-5), the background road's (train id 0),
  and a strip along the bottom the ego vehicle's (ignored), so the real loader and its label
  mapping run on it.
* ``--kind keypoints``: COCO 2017 person-keypoints layout, ``annotations/person_keypoints_{train,val}2017.json``
  and JPEG images in ``train2017/`` and ``val2017/``: 1-3 textured stick figures facing the viewer,
  in random poses, each annotated with the 13 joints of KEYPOINT_NAMES (COCO's names, the head's
  centre as the nose). The category also carries ``sigmas`` (KEYPOINT_SIGMAS, COCO's for the same
  joints), an extension: pycocotools hard-codes COCO's 17.

Each image is drawn from its own generator, ``np.random.default_rng([seed, index])``, so the same
arguments give byte-identical files (with the same Pillow build), whatever the order of drawing.
A dataset is written into a temporary sibling folder and renamed into place, so a folder with
the dataset's name is always complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ...cli import ArgumentParser, check_output_folder

CLASS_NAMES = ("circle", "square", "triangle", "ring", "cross")
KINDS = ("detection", "classification", "segmentation", "keypoints")
DEFAULTS = {"detection": {"images": 1000, "size": 160}, "classification": {"images": 2000, "size": 96},
            "segmentation": {"images": 500, "size": 160}, "keypoints": {"images": 800, "size": 160}}
# Cityscapes label ids the segmentation variant writes: road for the background, then one per
# shape class (sidewalk, building, wall, fence, pole: train ids 1 to 5), and the ego vehicle
# (ignored) for the bottom EGO_ROWS rows.
SEGMENTATION_BACKGROUND_ID, SEGMENTATION_LABEL_IDS, EGO_VEHICLE_ID = 7, (8, 11, 12, 13, 17), 1
EGO_FRACTION = 0.05
DEFAULT_VAL_FRACTION = 0.2
# Part of the cache folder name: bump it whenever the drawing changes, so a cached dataset made
# by an older version is never mistaken for the current one.
FORMAT_VERSION = "v2"
MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 90

# Shape extent (diameter of the circumscribed circle) as a fraction of the image side. The
# smallest detection objects (24 px at the default 160) still overlap SSDLite's smallest anchors
# (0.2 of the side, on a stride-16 grid) at IoU ~0.5; v1's 0.08 (13 px) left many objects no
# anchor to match but the forced best one.
DETECTION_SCALE = (0.15, 0.6)
CLASSIFICATION_SCALE = (0.4, 0.8)
MAX_OBJECTS = 6
PLACEMENT_ATTEMPTS = 20
# An earlier object must keep at least this fraction of its pixels visible when later ones are
# drawn over it: at most 60% occluded, comfortably under the ~70% where a box stops being fair.
MIN_VISIBLE_FRACTION = 0.4
MIN_COLOUR_DISTANCE = 90.0

# The keypoints kind: COCO's names for the joints a stick figure has (its head's centre stands
# for the nose), COCO's per-joint OKS sigmas for them, and the bones, 0-based (written 1-based, as
# COCO's are). A loader pairs left and right joints by name, so keep the left_/right_ prefixes.
KEYPOINT_NAMES = ("nose", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                  "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
                  "right_ankle")
KEYPOINT_SIGMAS = (0.026, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089)
KEYPOINT_SKELETON = ((11, 9), (9, 7), (12, 10), (10, 8), (7, 8), (1, 7), (2, 8), (1, 2), (1, 3), (2, 4),
                     (3, 5), (4, 6), (0, 1), (0, 2))
MAX_PERSONS = 3
# Figure height (head top to feet, standing straight) as a fraction of the image side, log-uniform.
PERSON_SCALE = (0.4, 0.95)
# A person keeps at least this fraction of its pixels in the image and uncovered: at most 30%
# hidden, where shapes may lose 60%. Top-down pose crops each person's box, and two stick figures
# of one build that cover each other more than that leave a crop no one could read (people in
# COCO's keypoint annotations are mostly less occluded).
PERSON_MIN_VISIBLE_FRACTION = 0.7
# A figure is drawn only with at least this many joints inside the image (and, as for the shapes,
# PERSON_MIN_VISIBLE_FRACTION of its pixels visible), so none is annotated from a sliver.
MIN_LABELLED_KEYPOINTS = 4

IfExists = Literal["error", "replace", "keep"]


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class Shape:
    """One shape: its class, its outline polygon (K, 2) in pixels (x, y), and the inner
    outline of a ring (drawn as a hole; COCO polygons cannot carry holes, so it is not
    part of the segmentation)."""

    label: int
    outline: np.ndarray
    hole: np.ndarray | None = None


def _regular_polygon(center: np.ndarray, radius: float, sides: int, angle: float) -> np.ndarray:
    theta = angle + np.arange(sides) * (2 * np.pi / sides)
    return center + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _cross_outline(center: np.ndarray, radius: float, angle: float, arm_ratio: float) -> np.ndarray:
    # A plus sign whose farthest corners lie on the circle of the given radius.
    arm = radius / np.hypot(1.0, arm_ratio)
    half = arm * arm_ratio
    points = np.array([(half, half), (arm, half), (arm, -half), (half, -half), (half, -arm),
                       (-half, -arm), (-half, -half), (-arm, -half), (-arm, half), (-half, half),
                       (-half, arm), (half, arm)])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return center + points @ rotation.T


def _make_shape(rng: np.random.Generator, label: int, center: np.ndarray, radius: float) -> Shape:
    # Circles and rings look the same at any rotation, so only the others get one.
    name = CLASS_NAMES[label]
    angle = rng.uniform(0, 2 * np.pi)
    if name == "circle":
        return Shape(label, _regular_polygon(center, radius, 40, 0.0))
    if name == "square":
        return Shape(label, _regular_polygon(center, radius, 4, angle))
    if name == "triangle":
        return Shape(label, _regular_polygon(center, radius, 3, angle))
    if name == "ring":
        inner = radius * rng.uniform(0.45, 0.7)
        return Shape(label, _regular_polygon(center, radius, 40, 0.0),
                     hole=_regular_polygon(center, inner, 40, 0.0))
    return Shape(label, _cross_outline(center, radius, angle, rng.uniform(0.25, 0.4)))


def _random_shape(rng: np.random.Generator, label: int, size: int, scale: tuple[float, float],
                  center_jitter: float | None = None) -> Shape:
    """A shape whose extent is log-uniform in ``scale`` (fraction of the side), so small objects
    are as common as large ones per octave; it lies wholly inside the image."""
    radius = size * np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))) / 2
    if center_jitter is None:
        center = rng.uniform(radius, size - radius, size=2)
    else:
        offset = rng.uniform(-center_jitter, center_jitter, size=2) * size
        center = np.clip(size / 2 + offset, radius, size - radius)
    return _make_shape(rng, label, center, radius)


def _rasterize(shape: Shape, size: int) -> np.ndarray:
    """The shape's pixels as a (size, size) bool mask."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon([tuple(p) for p in shape.outline], fill=255)
    if shape.hole is not None:
        draw.polygon([tuple(p) for p in shape.hole], fill=0)
    return np.asarray(mask) > 0


# ---------------------------------------------------------------------------------------------
# Textures: each returns a float32 (size, size, 3) image in 0..255


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = xs.flags.writeable = False  # shared between calls: keep it intact
    return xs, ys


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _blend(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return a + (b - a) * weight[..., None].astype(np.float32)


def _projection(rng: np.random.Generator, size: int) -> np.ndarray:
    """Each pixel's coordinate along a random direction."""
    xs, ys = _grid(size)
    angle = rng.uniform(0, np.pi)
    return xs * np.cos(angle) + ys * np.sin(angle)


def _stripes(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    period = rng.uniform(4, max(5.0, size / 5))
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * _projection(rng, size) / period + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.5:
        wave = (wave > 0.5).astype(np.float32)  # hard-edged stripes as well as soft ones
    return _blend(a, b, wave)


def _gradient(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = _projection(rng, size)
    return _blend(a, b, (t - t.min()) / max(float(t.max() - t.min()), 1e-6))


def _blotches(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Smooth blobs: a coarse random grid upsampled with bicubic interpolation.
    cells = int(rng.integers(3, 8))
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return _blend(a, b, np.clip(smooth, 0, 1))


def _checker(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    xs, ys = _grid(size)
    cell = rng.uniform(3, max(4.0, size / 8))
    return _blend(a, b, ((xs // cell + ys // cell) % 2).astype(np.float32))


def _noise(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sigma = rng.uniform(8, 30)
    return a + rng.normal(0, sigma, size=(size, size, 3)).astype(np.float32)


def _solid(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.broadcast_to(a, (size, size, 3))


Texture = Callable[[np.random.Generator, int, np.ndarray, np.ndarray], np.ndarray]
BACKGROUNDS: tuple[Texture, ...] = (_noise, _gradient, _stripes, _blotches)
FILLS: tuple[Texture, ...] = (_solid, _noise, _stripes, _gradient, _checker)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    texture = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return texture(rng, size, _random_colour(rng), _random_colour(rng))


def _fill(rng: np.random.Generator, size: int, avoid: np.ndarray) -> np.ndarray:
    """An object's texture, its main colour kept away from ``avoid`` (the background's mean) so
    that the shape stays visible."""
    colour = _random_colour(rng)
    for _ in range(10):
        if np.linalg.norm(colour - avoid) >= MIN_COLOUR_DISTANCE:
            break
        colour = _random_colour(rng)
    # The second colour is a shade of the first, so a textured object still reads as one thing.
    shade = np.clip(colour * rng.uniform(0.4, 1.6) + rng.normal(0, 20, size=3), 0, 255).astype(np.float32)
    texture = FILLS[int(rng.integers(len(FILLS)))]
    return texture(rng, size, colour, shade)


def _finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A little sensor-like noise over everything, so no region is perfectly flat.
    canvas = canvas + rng.normal(0, 3, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class DrawnObject:
    """One annotated object: class index, box [x, y, w, h] of its drawn pixels, their area,
    and its outline polygon as COCO's flat [x0, y0, x1, y1, ...]."""

    label: int
    bbox: tuple[float, float, float, float]
    area: float
    polygon: list[float]


def _describe(shape: Shape, mask: np.ndarray) -> DrawnObject:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    polygon = [round(float(v), 2) for v in shape.outline.reshape(-1)]
    return DrawnObject(shape.label, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                       float(mask.sum()), polygon)


def _place(rng: np.random.Generator, size: int, count: int) -> list[tuple[Shape, np.ndarray]]:
    """Up to ``count`` shapes in drawing order, each placed so that every earlier shape keeps at
    least MIN_VISIBLE_FRACTION of its pixels visible; a shape that finds no such place is dropped."""
    owner = np.full((size, size), -1, dtype=np.int16)  # which object each pixel shows
    full_area: list[int] = []
    visible = np.zeros(count, dtype=np.int64)
    placed: list[tuple[Shape, np.ndarray]] = []
    for _ in range(count):
        label = int(rng.integers(len(CLASS_NAMES)))
        for _ in range(PLACEMENT_ATTEMPTS):
            shape = _random_shape(rng, label, size, DETECTION_SCALE)
            mask = _rasterize(shape, size)
            covered = owner[mask]
            lost = np.bincount(covered[covered >= 0], minlength=count)
            keeps = visible[:len(placed)] - lost[:len(placed)] >= MIN_VISIBLE_FRACTION * np.array(full_area)
            if mask.any() and keeps.all():
                break
        else:
            continue
        index = len(placed)
        visible[:index] -= lost[:index]
        full_area.append(int(mask.sum()))
        visible[index] = full_area[-1]
        owner[mask] = index
        placed.append((shape, mask))
    return placed


def _draw_shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[Shape, np.ndarray]]]:
    """A background with 1-6 filled shapes (not yet finished), and the shapes with their masks."""
    canvas = _background(rng, size)
    avoid = canvas.mean(axis=(0, 1))
    canvas = canvas.copy()
    placed = _place(rng, size, int(rng.integers(1, MAX_OBJECTS + 1)))
    for shape, mask in placed:
        canvas[mask] = _fill(rng, size, avoid)[mask]
    return canvas, placed


def draw_detection_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[DrawnObject]]:
    """A (size, size, 3) uint8 image of 1-6 shapes, and their annotations in drawing order."""
    canvas, placed = _draw_shapes(rng, size)
    return _finish(canvas, rng), [_describe(shape, mask) for shape, mask in placed]


def draw_classification_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """A (size, size, 3) uint8 image of one large, roughly centred shape of class ``label``."""
    canvas = _background(rng, size).copy()
    shape = _random_shape(rng, label, size, CLASSIFICATION_SCALE, center_jitter=0.15)
    mask = _rasterize(shape, size)
    canvas[mask] = _fill(rng, size, canvas.mean(axis=(0, 1)))[mask]
    return _finish(canvas, rng)


def draw_segmentation_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A detection image (:func:`draw_detection_image`'s drawing) and its (size, size) uint8 map
    of Cityscapes label ids: each visible pixel of a shape its class's, the rest the background's,
    and the bottom rows the ego vehicle's."""
    canvas, placed = _draw_shapes(rng, size)
    label = np.full((size, size), SEGMENTATION_BACKGROUND_ID, dtype=np.uint8)
    for shape, mask in placed:  # in drawing order: a later shape covers an earlier one
        label[mask] = SEGMENTATION_LABEL_IDS[shape.label]
    label[size - max(1, round(size * EGO_FRACTION)):] = EGO_VEHICLE_ID
    return _finish(canvas, rng), label


# ---------------------------------------------------------------------------------------------
# Persons: stick figures for the keypoints kind

# Body proportions as fractions of the figure's height, roughly an adult's (a head 1/7.5 of the
# height, legs about half of it). Limbs are 6.5-8% of the height thick, so that a figure covers a
# fair part of its box, as a person does, rather than being a wire frame.
_BODY = {"head_radius": 0.065, "head_above_shoulders": 0.09, "torso": 0.30, "shoulder_half_width": 0.11,
         "hip_half_width": 0.075, "upper_arm": 0.17, "forearm": 0.15, "thigh": 0.24, "shin": 0.23,
         "arm_thickness": 0.065, "leg_thickness": 0.08, "torso_margin": 0.03}
# Joint angles in degrees, from straight down, positive turning away from the body: upper arms
# from hanging (a little across the body) to raised overhead, elbows bent either way, thighs from
# straight to spread, knees bent a little out or well in; the torso tilts either way.
_ANGLES = {"shoulder": (-15, 170), "elbow": (-100, 100), "hip": (-10, 45), "knee": (-45, 20), "tilt": (-30, 30)}
# A limb pointing towards or away from the viewer looks shorter: each is scaled by up to this.
_FORESHORTENING = 0.75
# Fills of a figure's parts: torso, then head and arms, then legs (indices into _figure_fills).
_TORSO, _ARMS, _LEGS = 0, 1, 2
_FILL_ATTEMPTS = 5


@dataclass(frozen=True)
class Figure:
    """One stick figure: its joints (13, 2) in pixels (x, y), in KEYPOINT_NAMES order, and its
    parts in drawing order as (fill, polygon (K, 2)) pairs, fill one of _TORSO, _ARMS, _LEGS."""

    joints: np.ndarray
    parts: tuple[tuple[int, np.ndarray], ...]


@dataclass(frozen=True)
class DrawnPerson:
    """One annotated person: COCO's flat keypoints [x1, y1, v1, ...] in KEYPOINT_NAMES order, how
    many are labelled (v > 0), the box [x, y, w, h] of its visible pixels, their count, and its
    parts' polygons (clipped to the image) as COCO's flat [x0, y0, x1, y1, ...]."""

    keypoints: list[float]
    num_keypoints: int
    bbox: tuple[float, float, float, float]
    area: float
    polygons: list[list[float]]


def _limb(a: np.ndarray, b: np.ndarray, thickness: float) -> np.ndarray:
    """A limb from joint ``a`` to ``b``: a quadrilateral ``thickness`` wide that reaches half of
    that past both joints, so that consecutive limbs meet without a notch and an end joint (wrist,
    ankle) lies inside it."""
    along = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
    across = np.array([-along[1], along[0]]) * thickness / 2
    a, b = a - along * thickness / 2, b + along * thickness / 2
    return np.stack([a + across, b + across, b - across, a - across])


def _direction(up: np.ndarray, outward: np.ndarray, angle: float) -> np.ndarray:
    """The unit vector ``angle`` radians from the figure's down, turned towards ``outward``."""
    return -np.cos(angle) * up + np.sin(angle) * outward


def _random_figure(rng: np.random.Generator, height: float) -> Figure:
    """A figure ``height`` pixels tall in a random pose, its hips' midpoint at the origin. It faces
    the viewer, so its left side is on the image's right, as for people in COCO; it is never
    mirrored, which keeps left and right learnable (a flipped image with the labels swapped is
    another valid sample)."""
    b = {name: value * height for name, value in _BODY.items()}
    tilt = np.radians(rng.uniform(*_ANGLES["tilt"]))
    up = np.array([np.sin(tilt), -np.cos(tilt)])  # image y points down
    left = np.array([np.cos(tilt), np.sin(tilt)])  # the figure's left: the image's right when upright
    neck = up * b["torso"]
    joints = {"nose": neck + up * b["head_above_shoulders"]}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        outward = sign * left
        shoulder = np.radians(rng.uniform(*_ANGLES["shoulder"]))
        elbow = shoulder + np.radians(rng.uniform(*_ANGLES["elbow"]))
        hip = np.radians(rng.uniform(*_ANGLES["hip"]))
        knee = hip + np.radians(rng.uniform(*_ANGLES["knee"]))
        lengths = b["upper_arm"], b["forearm"], b["thigh"], b["shin"]
        upper_arm, forearm, thigh, shin = np.array(lengths) * rng.uniform(_FORESHORTENING, 1.0, size=4)
        joints[f"{side}_shoulder"] = neck + outward * b["shoulder_half_width"]
        joints[f"{side}_elbow"] = joints[f"{side}_shoulder"] + _direction(up, outward, shoulder) * upper_arm
        joints[f"{side}_wrist"] = joints[f"{side}_elbow"] + _direction(up, outward, elbow) * forearm
        joints[f"{side}_hip"] = outward * b["hip_half_width"]
        joints[f"{side}_knee"] = joints[f"{side}_hip"] + _direction(up, outward, hip) * thigh
        joints[f"{side}_ankle"] = joints[f"{side}_knee"] + _direction(up, outward, knee) * shin
    j, margin = joints, b["torso_margin"]
    # The torso reaches a little past the shoulders and hips, so those joints lie inside it.
    torso = np.stack([j["left_shoulder"] + (left + up) * margin, j["right_shoulder"] + (up - left) * margin,
                      j["right_hip"] - (left + up) * margin, j["left_hip"] + (left - up) * margin])
    parts = [(_TORSO, torso)]
    for side in ("left", "right"):
        parts += [(_LEGS, _limb(j[f"{side}_hip"], j[f"{side}_knee"], b["leg_thickness"])),
                  (_LEGS, _limb(j[f"{side}_knee"], j[f"{side}_ankle"], b["leg_thickness"]))]
    # Head and arms last: an arm in front of the body shows, as it would on a person facing us.
    parts.append((_ARMS, _regular_polygon(j["nose"], b["head_radius"], 24, 0.0)))
    for side in ("left", "right"):
        parts += [(_ARMS, _limb(j[f"{side}_shoulder"], j[f"{side}_elbow"], b["arm_thickness"])),
                  (_ARMS, _limb(j[f"{side}_elbow"], j[f"{side}_wrist"], b["arm_thickness"]))]
    return Figure(np.stack([joints[name] for name in KEYPOINT_NAMES]), tuple(parts))


def _moved(figure: Figure, offset: np.ndarray) -> Figure:
    return Figure(figure.joints + offset, tuple((fill, polygon + offset) for fill, polygon in figure.parts))


def _random_person(rng: np.random.Generator, size: int) -> Figure:
    """A figure whose height is log-uniform in PERSON_SCALE (fraction of the side), placed so that
    up to a quarter of its extent may lie beyond any border: people in photos are often cut."""
    height = size * np.exp(rng.uniform(np.log(PERSON_SCALE[0]), np.log(PERSON_SCALE[1])))
    figure = _random_figure(rng, height)
    points = np.concatenate([polygon for _, polygon in figure.parts])
    low, high = points.min(axis=0), points.max(axis=0)
    extent = high - low
    # Where the box's low corner may go, per axis; sorted, should a figure be larger than the image.
    ends = np.sort(np.stack([-0.25 * extent, size - 0.75 * extent]), axis=0)
    return _moved(figure, rng.uniform(ends[0], ends[1]) - low)


def _rasterize_figure(figure: Figure, size: int) -> tuple[np.ndarray, int]:
    """The figure's pixels inside the image as a (size, size) uint8 map of its parts' fill + 1
    (0 where it is absent), and its whole area, pixels beyond the border included."""
    points = np.concatenate([polygon for _, polygon in figure.parts])
    # A canvas holding both the image and the figure; shifted by whole pixels, so that the
    # figure's pixels inside the image are the ones drawing on the image would give.
    low = np.minimum(np.floor(points.min(axis=0)), 0).astype(int)
    high = np.maximum(np.ceil(points.max(axis=0)) + 1, size).astype(int)
    canvas = Image.new("L", (int(high[0] - low[0]), int(high[1] - low[1])), 0)
    draw = ImageDraw.Draw(canvas)
    for fill, polygon in figure.parts:
        draw.polygon([tuple(p) for p in polygon - low], fill=fill + 1)
    parts = np.asarray(canvas)
    return parts[-low[1]:size - low[1], -low[0]:size - low[0]], int(np.count_nonzero(parts))


def _joint_pixels(joints: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which joints are inside the image (pixel centres at whole coordinates, as Pillow draws),
    and the (x, y) pixel each falls on (meaningful only for those inside)."""
    inside = ((joints >= 0) & (joints <= size - 1)).all(axis=1)
    return inside, np.clip(np.rint(joints), 0, size - 1).astype(int)


def _place_persons(rng: np.random.Generator, size: int, count: int) -> list[tuple[Figure, np.ndarray]]:
    """Up to ``count`` figures in drawing order, each with its parts map (:func:`_rasterize_figure`).
    Each keeps PERSON_MIN_VISIBLE_FRACTION of its pixels inside the image and uncovered by later ones, and
    MIN_LABELLED_KEYPOINTS joints inside the image; a figure that finds no such place is dropped."""
    owner = np.full((size, size), -1, dtype=np.int16)  # which figure each pixel shows
    full_area: list[int] = []
    visible = np.zeros(count, dtype=np.int64)
    placed: list[tuple[Figure, np.ndarray]] = []
    for _ in range(count):
        for _ in range(PLACEMENT_ATTEMPTS):
            figure = _random_person(rng, size)
            parts, area = _rasterize_figure(figure, size)
            mask = parts > 0
            covered = owner[mask]
            lost = np.bincount(covered[covered >= 0], minlength=count)
            keeps = visible[:len(placed)] - lost[:len(placed)] >= PERSON_MIN_VISIBLE_FRACTION * np.array(full_area)
            shown = np.count_nonzero(mask) >= PERSON_MIN_VISIBLE_FRACTION * area
            labelled = np.count_nonzero(_joint_pixels(figure.joints, size)[0]) >= MIN_LABELLED_KEYPOINTS
            if shown and labelled and keeps.all():
                break
        else:
            continue
        index = len(placed)
        visible[:index] -= lost[:index]
        full_area.append(area)
        visible[index] = np.count_nonzero(mask)
        owner[mask] = index
        placed.append((figure, parts))
    return placed


def _figure_fills(rng: np.random.Generator, size: int, avoid: np.ndarray) -> list[np.ndarray]:
    """Textures for a figure's torso, its head and arms, and its legs: each kept away from
    ``avoid`` (the background's mean) and, as far as a few draws allow, from the ones before, so
    that an arm across the torso or a leg still shows."""
    fills: list[np.ndarray] = []
    for _ in (_TORSO, _ARMS, _LEGS):
        for _ in range(_FILL_ATTEMPTS):
            fill = _fill(rng, size, avoid)
            mean = fill.mean(axis=(0, 1))
            if all(np.linalg.norm(mean - other.mean(axis=(0, 1))) >= MIN_COLOUR_DISTANCE / 2 for other in fills):
                break
        fills.append(fill)
    return fills


def _clip_polygon(polygon: np.ndarray, size: int) -> np.ndarray:
    """The part of a convex polygon inside [0, size] x [0, size] (Sutherland-Hodgman), so that
    the segmentation, like COCO's, stays inside the image; (0, 2) when none is."""
    for axis in (0, 1):
        for bound, sign in ((0.0, 1.0), (float(size), -1.0)):
            if len(polygon) == 0:
                return polygon
            # Keep the vertices on the inner side of this edge, and where each side crosses it.
            distance = sign * (polygon[:, axis] - bound)
            kept = []
            for i in range(len(polygon)):
                j = (i + 1) % len(polygon)
                if distance[i] >= 0:
                    kept.append(polygon[i])
                if (distance[i] >= 0) != (distance[j] >= 0):
                    t = distance[i] / (distance[i] - distance[j])
                    kept.append(polygon[i] + t * (polygon[j] - polygon[i]))
            polygon = np.array(kept).reshape(-1, 2)
    return polygon


def _describe_person(figure: Figure, index: int, owner: np.ndarray) -> DrawnPerson:
    """The annotation of the ``index``-th figure drawn, given which figure each pixel shows:
    a joint is visible (2) when no later figure covers its pixel, labelled but hidden (1) when
    one does, and unlabelled (0, at 0, 0) outside the image."""
    size = owner.shape[0]
    inside, pixels = _joint_pixels(figure.joints, size)
    keypoints: list[float] = []
    for (x, y), is_inside, (px, py) in zip(figure.joints, inside, pixels):
        if not is_inside:
            keypoints += [0.0, 0.0, 0]
            continue
        # COCO's keypoints are pixel indices (a joint on pixel i is at i), as Pillow draws
        keypoints += [round(float(x), 2), round(float(y), 2), 1 if owner[py, px] > index else 2]
    mask = owner == index
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    clipped = [_clip_polygon(polygon, size) for _, polygon in figure.parts]
    polygons = [[round(float(v), 2) for v in polygon.reshape(-1)] for polygon in clipped if len(polygon) >= 3]
    return DrawnPerson(keypoints, int(np.count_nonzero(inside)),
                       (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), float(np.count_nonzero(mask)), polygons)


def draw_keypoints_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[DrawnPerson]]:
    """A (size, size, 3) uint8 image of 1-3 stick figures, and their annotations in drawing order."""
    canvas = _background(rng, size)
    avoid = canvas.mean(axis=(0, 1))
    canvas = canvas.copy()
    placed = _place_persons(rng, size, int(rng.integers(1, MAX_PERSONS + 1)))
    owner = np.full((size, size), -1, dtype=np.int16)
    for index, (_, parts) in enumerate(placed):
        for fill_index, fill in enumerate(_figure_fills(rng, size, avoid)):
            part = parts == fill_index + 1
            canvas[part] = fill[part]
        owner[parts > 0] = index
    people = [_describe_person(figure, index, owner) for index, (figure, _) in enumerate(placed)]
    return _finish(canvas, rng), people


# ---------------------------------------------------------------------------------------------
# Writing datasets


def _check_arguments(images: int, size: int, seed: int, val_fraction: float) -> None:
    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"--size must be at least {MIN_IMAGE_SIZE} pixels, got {size}")
    if seed < 0:
        raise ValueError(f"--seed must be non-negative, got {seed}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def split_sizes(images: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) image counts: at least one val image whenever ``val_fraction`` > 0."""
    val = max(1, round(images * val_fraction)) if val_fraction > 0 else 0
    return images - val, val


def _progress(total: int, description: str) -> tqdm:
    # A progress bar only for a person watching: logs and pipes stay clean.
    return tqdm(total=total, desc=description, unit="img", disable=not sys.stderr.isatty())


def _coco_json(split_images: list[dict], annotations: list[dict], description: str,
               categories: list[dict] | None = None) -> str:
    """A COCO annotation file; the shapes' categories unless given others."""
    if categories is None:
        categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)]
    document = {
        "info": {"description": description, "version": FORMAT_VERSION, "year": 2017,
                 "contributor": "fna_ext.data.synthetic", "url": "", "date_created": ""},
        "licenses": [],
        "images": split_images,
        "annotations": annotations,
        "categories": categories,
    }
    return json.dumps(document, separators=(",", ":"))


def _write_coco(root: Path, images: int, size: int, seed: int, val_fraction: float, *, kind: str, what: str,
                file_prefix: str, draw: Callable, annotate: Callable, categories: list[dict] | None = None) -> None:
    """A COCO-layout dataset: ``draw(rng, size)`` gives each image and its objects,
    ``annotate(obj)`` each object's annotation fields beside its ids."""
    train, _ = split_sizes(images, val_fraction)
    (root / "annotations").mkdir()
    description = f"fna_ext synthetic {what}: images={images} size={size} seed={seed}"
    splits = {"train2017": range(0, train), "val2017": range(train, images)}
    next_annotation_id = 1
    with _progress(images, f"synthetic {kind}") as bar:
        for split, indices in splits.items():
            (root / split).mkdir()
            entries, annotations = [], []
            for index in indices:
                image, objects = draw(np.random.default_rng([seed, index]), size)
                image_id, file_name = index + 1, f"{index + 1:012d}.jpg"
                Image.fromarray(image).save(root / split / file_name, "JPEG", quality=JPEG_QUALITY)
                entries.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
                for obj in objects:
                    annotations.append({"id": next_annotation_id, "image_id": image_id, **annotate(obj)})
                    next_annotation_id += 1
                bar.update()
            # Plain writes are safe here: the whole folder is renamed into place at the end.
            path = root / "annotations" / f"{file_prefix}_{split}.json"
            path.write_text(_coco_json(entries, annotations, description, categories), encoding="utf-8")


def _write_detection(root: Path, images: int, size: int, seed: int, val_fraction: float) -> None:
    _write_coco(root, images, size, seed, val_fraction, kind="detection", what="shapes", file_prefix="instances",
                draw=draw_detection_image,
                annotate=lambda obj: {"category_id": obj.label + 1, "bbox": list(obj.bbox), "area": obj.area,
                                      "iscrowd": 0, "segmentation": [obj.polygon]})


def _keypoints_category() -> dict:
    # ``sigmas`` is ours: pycocotools hard-codes COCO's 17, so a loader reads these from here.
    return {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [[a + 1, b + 1] for a, b in KEYPOINT_SKELETON], "sigmas": list(KEYPOINT_SIGMAS)}


def _write_keypoints(root: Path, images: int, size: int, seed: int, val_fraction: float) -> None:
    _write_coco(root, images, size, seed, val_fraction, kind="keypoints", what="persons", file_prefix="person_keypoints",
                draw=draw_keypoints_image, categories=[_keypoints_category()],
                annotate=lambda person: {"category_id": 1, "bbox": list(person.bbox), "area": person.area,
                                         "iscrowd": 0, "segmentation": person.polygons,
                                         "keypoints": person.keypoints, "num_keypoints": person.num_keypoints})


def _write_classification(root: Path, images: int, size: int, seed: int, val_fraction: float) -> None:
    train, val = split_sizes(images, val_fraction)
    for split, count in (("train", train), ("val", val)):
        if 0 < count < len(CLASS_NAMES):
            raise ValueError(f"the {split} split would hold {count} images, fewer than the "
                             f"{len(CLASS_NAMES)} classes; raise --images or change --val-fraction")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES), encoding="utf-8")
    splits = {"train": range(0, train), "val": range(train, images)}
    with _progress(images, "synthetic classification") as bar:
        for split, indices in splits.items():
            if not indices:
                continue
            for name in CLASS_NAMES:
                (root / split / name).mkdir(parents=True)
            for position, index in enumerate(indices):
                # Classes in turn within each split, so every split is balanced.
                label = position % len(CLASS_NAMES)
                image = draw_classification_image(np.random.default_rng([seed, index]), size, label)
                Image.fromarray(image).save(root / split / CLASS_NAMES[label] / f"{index:06d}.png", "PNG")
                bar.update()


def _write_segmentation(root: Path, images: int, size: int, seed: int, val_fraction: float) -> None:
    train, _ = split_sizes(images, val_fraction)
    splits = {"train": range(0, train), "val": range(train, images)}
    with _progress(images, "synthetic segmentation") as bar:
        for split, indices in splits.items():
            image_dir, label_dir = root / "leftImg8bit" / split / "synthetic", root / "gtFine" / split / "synthetic"
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            for index in indices:
                image, label = draw_segmentation_image(np.random.default_rng([seed, index]), size)
                stem = f"synthetic_{index:06d}_000019"
                Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png", "PNG")
                Image.fromarray(label).save(label_dir / f"{stem}_gtFine_labelIds.png", "PNG")
                bar.update()


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_target(out: Path, if_exists: IfExists) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if if_exists == "error" and _is_nonempty_dir(out):
        raise ValueError(f"--out {out} exists and is not empty; pass --force to replace it")


def _publish(staging: Path, out: Path, if_exists: IfExists) -> None:
    """Renames the finished ``staging`` folder to ``out``."""
    if if_exists == "replace" and _is_nonempty_dir(out):
        trash = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old")
        os.rename(out, trash)
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(trash, out)  # put the old dataset back rather than lose it
            raise
        shutil.rmtree(trash, ignore_errors=True)
        return
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder is no dataset; Windows cannot rename over it
    try:
        os.rename(staging, out)
    except OSError:
        # Someone else published ``out`` while we were drawing.
        if if_exists == "keep" and _is_nonempty_dir(out):
            shutil.rmtree(staging, ignore_errors=True)
            return
        raise ValueError(f"--out {out} appeared while the dataset was being written; "
                         "pass --force to replace it") from None


def _generate(write: Callable[[Path], None], out: str | os.PathLike, if_exists: IfExists) -> Path:
    out = Path(out).expanduser().absolute()
    _check_target(out, if_exists)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one file system; mkdir (unlike mkdtemp) honours the
    # umask, so the published folder gets ordinary permissions.
    staging = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    staging.mkdir()
    try:
        write(staging)
        _publish(staging, out, if_exists)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def generate_detection(out: str | os.PathLike, images: int = 1000, size: int = 160, seed: int = 0,
                       val_fraction: float = DEFAULT_VAL_FRACTION, *, force: bool = False) -> Path:
    """Writes a COCO-layout shapes detection dataset to ``out`` and returns its path. Refuses
    (ValueError) a non-empty ``out`` unless ``force``."""
    _check_arguments(images, size, seed, val_fraction)
    return _generate(lambda root: _write_detection(root, images, size, seed, val_fraction),
                     out, "replace" if force else "error")


def generate_classification(out: str | os.PathLike, images: int = 2000, size: int = 96, seed: int = 0,
                            val_fraction: float = DEFAULT_VAL_FRACTION, *, force: bool = False) -> Path:
    """Writes an ImageNet-folder-layout shapes classification dataset to ``out`` and returns its
    path. Refuses (ValueError) a non-empty ``out`` unless ``force``."""
    _check_arguments(images, size, seed, val_fraction)
    return _generate(lambda root: _write_classification(root, images, size, seed, val_fraction),
                     out, "replace" if force else "error")


def generate_segmentation(out: str | os.PathLike, images: int = 500, size: int = 160, seed: int = 0,
                          val_fraction: float = DEFAULT_VAL_FRACTION, *, force: bool = False) -> Path:
    """Writes a Cityscapes-layout shapes segmentation dataset to ``out`` and returns its path.
    Refuses (ValueError) a non-empty ``out`` unless ``force``."""
    _check_arguments(images, size, seed, val_fraction)
    return _generate(lambda root: _write_segmentation(root, images, size, seed, val_fraction),
                     out, "replace" if force else "error")


def generate_keypoints(out: str | os.PathLike, images: int = 800, size: int = 160, seed: int = 0,
                       val_fraction: float = DEFAULT_VAL_FRACTION, *, force: bool = False) -> Path:
    """Writes a COCO-person-keypoints-layout stick-figure dataset to ``out`` and returns its path.
    Refuses (ValueError) a non-empty ``out`` unless ``force``."""
    _check_arguments(images, size, seed, val_fraction)
    return _generate(lambda root: _write_keypoints(root, images, size, seed, val_fraction),
                     out, "replace" if force else "error")


def cache_dir() -> Path:
    """``$FNA_EXT_CACHE``, else ``~/.cache/fna_ext``."""
    return Path(os.environ.get("FNA_EXT_CACHE") or Path.home() / ".cache" / "fna_ext").expanduser()


def default_dataset(kind: str = "detection", *, images: int | None = None, size: int | None = None,
                    seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION) -> Path:
    """The synthetic dataset the project's commands use when given none: generated on first use
    into ``cache_dir()/synthetic/{kind}-{images}-{size}-{seed}-{FORMAT_VERSION}`` and reused afterwards.
    Concurrent first uses are safe: each writes its own copy, one wins the rename, and the
    others use the winner's."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    images = DEFAULTS[kind]["images"] if images is None else images
    size = DEFAULTS[kind]["size"] if size is None else size
    _check_arguments(images, size, seed, val_fraction)
    name = f"{kind}-{images}-{size}-{seed}-{FORMAT_VERSION}"
    if val_fraction != DEFAULT_VAL_FRACTION:
        name += f"-val{val_fraction:g}"
    out = cache_dir() / "synthetic" / name
    if out.is_dir():  # published by an atomic rename, so present means complete
        return out
    write = {"detection": _write_detection, "classification": _write_classification,
             "segmentation": _write_segmentation, "keypoints": _write_keypoints}[kind]
    return _generate(lambda root: write(root, images, size, seed, val_fraction), out, "keep")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.data.synthetic", description=(
        "Write a synthetic shapes dataset (circle, square, triangle, ring, cross): COCO layout "
        "for detection, ImageNet folder layout for classification, Cityscapes layout for segmentation; "
        "or a stick-figure dataset in the COCO person-keypoints layout for keypoints. "
        "The same arguments give identical files."))
    parser.add_argument("--out", required=True, help="output folder (must be absent or empty, or --force)")
    parser.add_argument("--kind", default="detection", choices=KINDS,
                        help="what to draw, and so the layout (default: detection)")
    parser.add_argument("--images", type=int, default=None,
                        help="number of images, train and val together (default: 1000 for "
                             "detection, 2000 for classification, 500 for segmentation, 800 for keypoints)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels (default: 160 for detection, segmentation and keypoints, "
                             "96 for classification)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="fraction of the images in the val split (default: 0.2)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    check_output_folder(args.out)
    images = DEFAULTS[args.kind]["images"] if args.images is None else args.images
    size = DEFAULTS[args.kind]["size"] if args.size is None else args.size
    generate = {"detection": generate_detection, "classification": generate_classification,
                "segmentation": generate_segmentation, "keypoints": generate_keypoints}[args.kind]
    path = generate(args.out, images, size, args.seed, args.val_fraction, force=args.force)
    train, val = split_sizes(images, args.val_fraction)
    print(f"wrote {images} {args.kind} images ({train} train, {val} val), {size}x{size}, to {path}")
    return 0

